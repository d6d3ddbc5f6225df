//! The built-in workload: what a container of any image the simulator does not run for real (not HAProxy)
//! runs. It listens on the container's ports and answers each connection with one line naming its pod and
//! image, as plain text to a raw TCP client (after a second of its silence) and as an HTTP 200 response to
//! an HTTP request; a raw TCP client that sends lines gets that line once per line it sends, until it closes
//! (a long-lived connection);
//! `GET /metrics` answers Prometheus text (requests, failures, latency). Its behaviour comes from the container's
//! environment, so a pod template sets it:
//! - `SIM_FAIL_RATIO` (0 to 1): the share of connections that fail (HTTP 500, or a reset for raw TCP);
//! - `SIM_LATENCY_MS`: a delay before each answer;
//! - `SIM_REFUSE=true`: listen on nothing (connections are refused, readiness probes fail);
//! - `SIM_FAILING_IMAGES` (`image=ratio,...`): a fail ratio for the listed images only, so that one pod
//!   template describes a release whose new image is bad (a canary copies its target's environment).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a built-in server answers and how it misbehaves.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Behaviour {
    pub fail_ratio: f64,
    pub latency: Duration,
    pub refuse: bool,
}

impl Behaviour {
    /// The behaviour of a container of `image` that the variables `SIM_FAIL_RATIO`, `SIM_FAILING_IMAGES`,
    /// `SIM_LATENCY_MS` and `SIM_REFUSE` describe; an unreadable value is an error naming the variable.
    pub fn from_env(image: &str, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Behaviour> {
        let mut behaviour = Behaviour::default();
        let ratio = |name: &str, v: &str| {
            v.parse()
                .ok()
                .filter(|r: &f64| (0.0..=1.0).contains(r))
                .ok_or_else(|| anyhow::anyhow!("{name}={v:?}: expected a number from 0 to 1"))
        };
        if let Some(v) = get("SIM_FAIL_RATIO") {
            behaviour.fail_ratio = ratio("SIM_FAIL_RATIO", &v)?;
        }
        if let Some(v) = get("SIM_FAILING_IMAGES") {
            for entry in v.split(',').filter(|e| !e.trim().is_empty()) {
                let Some((listed, r)) = entry.trim().rsplit_once('=') else {
                    anyhow::bail!("SIM_FAILING_IMAGES={v:?}: expected image=ratio, comma separated");
                };
                if listed == image {
                    behaviour.fail_ratio = ratio("SIM_FAILING_IMAGES", r)?;
                }
            }
        }
        if let Some(v) = get("SIM_LATENCY_MS") {
            let ms: u64 = v.parse().map_err(|_| anyhow::anyhow!("SIM_LATENCY_MS={v:?}: expected milliseconds"))?;
            behaviour.latency = Duration::from_millis(ms);
        }
        if let Some(v) = get("SIM_REFUSE") {
            behaviour.refuse = v.parse().map_err(|_| anyhow::anyhow!("SIM_REFUSE={v:?}: expected true or false"))?;
        }
        Ok(behaviour)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

struct Metrics {
    registry: Registry,
    requests: Family<Outcome, Counter>,
    latency: Histogram,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<Outcome, Counter>::default();
        let latency = Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]);
        registry.register(
            "sim_requests",
            "Answers (one per connection, or per line a long-lived connection sends), by outcome (ok or error)",
            requests.clone(),
        );
        registry.register("sim_request_duration_seconds", "Time to answer", latency.clone());
        Metrics { registry, requests, latency }
    }
}

/// The line every answer carries.
pub fn answer(pod: &str, image: &str) -> String {
    format!("pod={pod} image={image}\n")
}

/// Serves on every address of `listen` until the process is stopped.
pub async fn serve(listen: Vec<SocketAddr>, pod: String, image: String, behaviour: Behaviour) -> anyhow::Result<()> {
    if behaviour.refuse || listen.is_empty() {
        tracing::info!("listening on nothing");
        std::future::pending::<()>().await;
    }
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new((answer(&pod, &image), behaviour));
    let mut tasks = vec![];
    for address in listen {
        let listener = crate::network::listen(address)?;
        let (shared, metrics) = (shared.clone(), metrics.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (shared, metrics) = (shared.clone(), metrics.clone());
                tokio::spawn(async move {
                    let _ = handle(stream, &shared.0, &shared.1, &metrics).await;
                });
            }
        }));
    }
    futures::future::join_all(tasks).await;
    Ok(())
}

/// How long a connection may stay silent before it is taken for a raw TCP client that sends nothing.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);

async fn handle(mut stream: TcpStream, line: &str, behaviour: &Behaviour, metrics: &Metrics) -> std::io::Result<()> {
    let started = Instant::now();
    // an HTTP client speaks first; a raw TCP client (nc) may send nothing, or lines. How long to wait for the
    // first bytes: long enough for a client on a loaded machine (a request that came 120 ms after the
    // connection, through HAProxy on 2 busy cores, was once taken for a raw client's silence)
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    let is_http = |r: &[u8]| r.starts_with(b"GET ") || r.starts_with(b"POST ") || r.starts_with(b"HEAD ");
    while let Ok(Ok(n)) = tokio::time::timeout(FIRST_BYTES_WAIT, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
        let complete =
            if is_http(&request) { request.windows(4).any(|w| w == b"\r\n\r\n") } else { request.contains(&b'\n') };
        if complete || request.len() > 16 * 1024 {
            break;
        }
    }
    let http = is_http(&request);
    if http && request.starts_with(b"GET /metrics ") {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).map_err(std::io::Error::other)?;
        return respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &text).await;
    }
    if !http && request.contains(&b'\n') {
        return converse(stream, request, line, behaviour, metrics).await;
    }
    let fail = answer_fails(behaviour, metrics, started).await;
    match (http, fail) {
        (true, false) => respond(&mut stream, "200 OK", "text/plain", line).await,
        (true, true) => {
            respond(&mut stream, "500 Internal Server Error", "text/plain", "failed (SIM_FAIL_RATIO)\n").await
        }
        (false, false) => {
            stream.write_all(line.as_bytes()).await?;
            stream.shutdown().await
        }
        // a reset, as a crashing server gives
        (false, true) => {
            crate::network::reset(&stream);
            Ok(())
        }
    }
}

/// A raw TCP client that sends lines gets one answer per line for as long as it keeps the connection open
/// (a long-lived connection, as a database client's); a failing answer resets the connection.
async fn converse(
    mut stream: TcpStream,
    mut pending: Vec<u8>,
    line: &str,
    behaviour: &Behaviour,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    loop {
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            pending.drain(..=end);
            if answer_fails(behaviour, metrics, Instant::now()).await {
                crate::network::reset(&stream);
                return Ok(());
            }
            stream.write_all(line.as_bytes()).await?;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return stream.shutdown().await;
        }
        pending.extend_from_slice(&buf[..n]);
        if pending.len() > 16 * 1024 {
            pending.clear();
        }
    }
}

/// Waits the behaviour's latency, draws whether this answer fails, and counts it.
async fn answer_fails(behaviour: &Behaviour, metrics: &Metrics, started: Instant) -> bool {
    tokio::time::sleep(behaviour.latency).await;
    let fail = behaviour.fail_ratio > 0.0 && fastrand::f64() < behaviour.fail_ratio;
    metrics.requests.get_or_create(&Outcome { outcome: if fail { "error" } else { "ok" } }).inc();
    metrics.latency.observe(started.elapsed().as_secs_f64());
    fail
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_is_read_from_the_environment_and_bad_values_name_the_variable() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let b = Behaviour::from_env("app:v1", env(&[("SIM_FAIL_RATIO", "0.25"), ("SIM_LATENCY_MS", "30")])).unwrap();
        assert_eq!(b, Behaviour { fail_ratio: 0.25, latency: Duration::from_millis(30), refuse: false });
        let e = Behaviour::from_env("app:v1", env(&[("SIM_FAIL_RATIO", "2")])).unwrap_err().to_string();
        assert!(e.contains("SIM_FAIL_RATIO"), "{e}");
        assert!(Behaviour::from_env("app:v1", env(&[])).unwrap() == Behaviour::default());
        let failing = || env(&[("SIM_FAILING_IMAGES", "app:v3=0.2, other:v1=1")]);
        assert_eq!(Behaviour::from_env("app:v3", failing()).unwrap().fail_ratio, 0.2);
        assert_eq!(Behaviour::from_env("app:v1", failing()).unwrap().fail_ratio, 0.0);
        let bad = Behaviour::from_env("app:v1", env(&[("SIM_FAILING_IMAGES", "app:v3")])).unwrap_err();
        assert!(bad.to_string().contains("image=ratio"), "{bad}");
    }

    #[tokio::test]
    async fn answers_raw_tcp_and_http_with_its_pod_and_image_and_counts_them() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        tokio::spawn(serve(vec![address], "p-1".into(), "img:1".into(), Behaviour::default()));
        let mut raw = None;
        for _ in 0..100 {
            if let Ok(s) = TcpStream::connect(address).await {
                raw = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut text = String::new();
        raw.expect("the server listens").read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "pod=p-1 image=img:1\n");
        let mut http = TcpStream::connect(address).await.unwrap();
        http.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut text = String::new();
        http.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK") && text.ends_with("pod=p-1 image=img:1\n"), "{text}");
        // a long-lived connection: an answer per line, and it stays open between them
        let long = TcpStream::connect(address).await.unwrap();
        let (reader, mut writer) = long.into_split();
        let mut reader = tokio::io::BufReader::new(reader);
        for _ in 0..3 {
            writer.write_all(b"ping\n").await.unwrap();
            let mut answer = String::new();
            tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut answer).await.unwrap();
            assert_eq!(answer, "pod=p-1 image=img:1\n");
        }
        drop(writer);
        let mut rest = String::new();
        reader.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "", "the server closes once the client has");
        let mut metrics = TcpStream::connect(address).await.unwrap();
        metrics.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut text = String::new();
        metrics.read_to_string(&mut text).await.unwrap();
        assert!(text.contains("sim_requests_total{outcome=\"ok\"} 5"), "{text}");
    }
}
