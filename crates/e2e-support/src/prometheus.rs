//! A real Prometheus (Debian's package, installed by `make setup`) for the tests of analysis by PromQL: it
//! runs with the scrape configuration a test gives, on a free loopback port (of the simulator's node when
//! given one, where it scrapes Pods at their addresses and the controller reaches it), and stops with the
//! guard.

use std::path::Path;
use std::time::Duration;

pub struct Prometheus {
    _child: tokio::process::Child,
    /// Its base URL (`http://127.0.0.1:PORT`) where it runs (the node's, or the host's).
    pub address: String,
    /// Its base URL for the test itself, on the host.
    pub from_host: String,
    pub log: std::path::PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `dir` (its config, data and log) scraping every second with `scrape_configs`
    /// (YAML, the list); `None` when it is not installed (the test is skipped, or fails in CI).
    pub async fn start(dir: &Path, scrape_configs: &str, on_node: Option<&str>) -> Option<Prometheus> {
        if !crate::tools::available("prometheus") {
            return None;
        }
        let port = crate::traffic::free_port("127.0.0.1");
        let mut command = match on_node {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(crate::tools::command("prometheus"));
                c
            }
            None => tokio::process::Command::new(crate::tools::command("prometheus")),
        };
        let config =
            format!("global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs: {scrape_configs}\n");
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = dir.join("prometheus.log");
        let child = command
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let address = format!("http://127.0.0.1:{port}");
        let at = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let ready = match on_node {
            Some(ns) => crate::node::expose_on_host(ns, at),
            None => at,
        };
        let from_host = format!("http://{ready}");
        let up = crate::within(30, || async {
            let Ok(mut stream) = tokio::net::TcpStream::connect(&ready).await else { return false };
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").await;
            let mut answer = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut answer)).await;
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
        })
        .await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(up, "Prometheus did not get ready on {address}:\n{text}");
        Some(Prometheus { _child: child, address, from_host, log })
    }
}
