//! `cargo bench -p canary-controller --bench http`: HTTP through our proxy (HAProxy in HTTP mode on the
//! config a Kanary with `protocol: http` gets: a draw per request from the weights map, the request log to
//! the agent) against a minimal HAProxy HTTP config to the same backends (`mode http`, round robin) and
//! against the backends directly, in one run on loopback, for HTTP/1.1 (keep-alive) and HTTP/2 (h2c); and
//! the CPU the agent's request-log reader spends per 1,000 requests logged (its own thread's CPU time,
//! from `/proc/thread-self/schedstat`). Backends: workload-sim's built-in server. Prints figures as ratios
//! against the baselines measured in the same run; asserts only that every request was answered and logged.
//! `BENCH_HTTP_WITHOUT=log,http-response` leaves out of our config the lines that contain any of those
//! fragments (to see what a part costs; the request-log figures are then skipped).

use canary_controller::agent::requests::{RequestMetrics, serve};
use canary_controller::dataplane::Server;
use canary_controller::dataplane::haproxy::{
    Protocol, ProxySettings, REQUEST_LOG_PORT, RouteBackend, render, weights_map, weights_path,
};
use e2e_support::http::{Client, Requests, Version};
use e2e_support::traffic::{Haproxy, free_port};
use std::net::SocketAddr;
use std::time::Duration;

const REQUESTS: usize = 20_000;
const WARM_UP: usize = 1_000;

/// The backends: two built-in servers on loopback.
async fn backends() -> Vec<SocketAddr> {
    let mut out = vec![];
    for (i, ip) in ["127.0.0.71", "127.0.0.72"].iter().enumerate() {
        let address: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().unwrap();
        let behaviour = workload_sim::server::Behaviour::default();
        tokio::spawn(workload_sim::server::serve(vec![address], format!("b-{i}"), format!("echo:v{i}"), behaviour));
        out.push(address);
    }
    for address in &out {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    out
}

/// A minimal HAProxy HTTP config: one frontend, one backend with both servers, round robin.
fn minimal_config(backends: &[SocketAddr], listen: SocketAddr, stats: SocketAddr) -> String {
    let mut c = format!(
        "global\n    maxconn 4096\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 1m\n    timeout server 1m\n\
         frontend stats\n    bind {stats}\n    stats enable\n    stats uri /stats\n\
         frontend in\n    bind {listen}\n    default_backend app\nbackend app\n    balance roundrobin\n"
    );
    for (i, b) in backends.iter().enumerate() {
        c.push_str(&format!("    server s{i} {b} check\n"));
    }
    c
}

/// Our config for two routes of 50 % each, one backend each, in HTTP mode.
fn our_files(backends: &[SocketAddr], listen: SocketAddr, stats: SocketAddr) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let routes: Vec<RouteBackend> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| RouteBackend {
            service: format!("route-{i}"),
            weight: 50,
            servers: vec![Server { name: format!("b-{i}"), address: b.ip(), port: b.port() }],
            h2c: false,
            header_value: None,
        })
        .collect();
    let settings = ProxySettings {
        port: listen.port(),
        stats_port: stats.port(),
        files_dir: dir.path().to_str().unwrap().into(),
        protocol: Protocol::Http,
        ..ProxySettings::default()
    };
    let config = render("bench/http", &routes, &settings);
    let without = without();
    let config: String =
        config.lines().filter(|l| !without.iter().any(|w| l.contains(w.as_str()))).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join("haproxy.cfg"), config).unwrap();
    std::fs::write(weights_path(&settings), weights_map(routes.iter().map(|r| &r.weight))).unwrap();
    dir
}

/// The fragments whose lines `BENCH_HTTP_WITHOUT` leaves out of our config.
fn without() -> Vec<String> {
    let list = std::env::var("BENCH_HTTP_WITHOUT").unwrap_or_default();
    list.split(',').map(str::trim).filter(|w| !w.is_empty()).map(str::to_string).collect()
}

/// Requests through `target`: HTTP/1.1 on 8 keep-alive connections, or HTTP/2 with 16 streams on one.
async fn load(target: SocketAddr, version: Version) -> Requests {
    let (connections, per_connection) = match version {
        Version::Http1 => (8, 1),
        Version::Http2 => (1, 16),
    };
    let client = Client::connect(target, version, connections).await;
    client.load(per_connection, WARM_UP, &[]).await;
    client.load(per_connection, REQUESTS, &[]).await
}

struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn figures(what: &str, r: &Requests) -> Figures {
    assert_eq!(r.tally.failures, 0, "{what}: {:?}", r.tally);
    let mut latencies = r.latencies.clone();
    let (p50, p99) = e2e_support::traffic::p50_p99(&mut latencies).expect("latencies");
    Figures {
        per_second: r.tally.total() as f64 / r.tally.elapsed.as_secs_f64(),
        p50_ms: p50.as_secs_f64() * 1000.0,
        p99_ms: p99.as_secs_f64() * 1000.0,
    }
}

/// The log reader on its own thread and runtime, so that its CPU time is its own: returns a handle that
/// reports the thread's CPU time (ns) when asked.
fn log_reader(metrics: std::sync::Arc<RequestMetrics>) -> std::sync::mpsc::Sender<std::sync::mpsc::Sender<u64>> {
    let (ask, asked) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<u64>>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", REQUEST_LOG_PORT)).await.expect("the log port");
            serve(listener, metrics);
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                while let Ok(reply) = asked.try_recv() {
                    let _ = reply.send(thread_cpu_ns());
                }
            }
        });
    });
    ask
}

/// This thread's CPU time so far, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    text.split_whitespace().next().and_then(|ns| ns.parse().ok()).unwrap_or(0)
}

fn cpu_of(reader: &std::sync::mpsc::Sender<std::sync::mpsc::Sender<u64>>) -> u64 {
    let (reply, answer) = std::sync::mpsc::channel();
    reader.send(reply).unwrap();
    answer.recv_timeout(Duration::from_secs(5)).expect("the log reader's CPU time")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !e2e_support::tools::available("haproxy") {
        eprintln!("bench http: needs haproxy (make setup)");
        std::process::exit(1);
    }
    let backends = backends().await;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = RequestMetrics::new(&mut registry);
    let reader = log_reader(metrics.clone());

    let listen = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let minimal_listen = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let minimal_stats = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let mut minimal = Haproxy::start(&minimal_config(&backends, minimal_listen, minimal_stats), minimal_stats)
        .await
        .expect("haproxy");
    minimal.wait_servers_up(2).await;
    let ours_listen = listen(free_port("127.0.0.1"));
    let ours_stats = listen(free_port("127.0.0.1"));
    let mut ours = Haproxy::start_in(our_files(&backends, ours_listen, ours_stats), ours_stats).await.expect("haproxy");
    ours.wait_servers_up(2).await;

    println!("HTTP through the proxy, {REQUESTS} requests after {WARM_UP} of warm-up, on loopback (2 cores)");
    if !without().is_empty() {
        println!("our config without the lines that contain {:?}", without());
    }
    for version in [Version::Http1, Version::Http2] {
        let direct = figures("direct", &load(backends[0], version).await);
        let base = figures("minimal HAProxy", &load(minimal_listen, version).await);
        let logged_before: u64 = metrics.report().routes.values().map(|r| r.requests).sum();
        let cpu_before = cpu_of(&reader);
        let ours_run = load(ours_listen, version).await;
        let ours_figures = figures("ours", &ours_run);
        // every request of the run logged (the ring hands lines over shortly after the answers)
        let expected = logged_before + (REQUESTS + WARM_UP) as u64;
        let mut logged = 0;
        for _ in 0..100 {
            logged = metrics.report().routes.values().map(|r| r.requests).sum::<u64>();
            if logged >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cpu = cpu_of(&reader) - cpu_before;
        let logging = without().is_empty();
        if logging {
            assert_eq!(logged, expected, "requests logged to the agent");
        }
        let name = match version {
            Version::Http1 => "HTTP/1.1, 8 keep-alive connections",
            Version::Http2 => "HTTP/2, 16 streams on 1 connection",
        };
        println!("\n{name}:");
        for (what, f) in [("direct", &direct), ("minimal HAProxy", &base), ("our proxy", &ours_figures)] {
            println!(
                "  {what:<16} {:>8.0} req/s ({:.2} of minimal)  p50 {:>6.2} ms  p99 {:>6.2} ms  p99 added over direct {:>6.2} ms",
                f.per_second,
                f.per_second / base.per_second,
                f.p50_ms,
                f.p99_ms,
                f.p99_ms - direct.p99_ms
            );
        }
        println!(
            "  our p99 added / minimal's: {:.2}",
            (ours_figures.p99_ms - direct.p99_ms) / (base.p99_ms - direct.p99_ms).max(0.001)
        );
        if logging {
            println!(
                "  agent's request-log reader: {:.2} ms CPU per 1,000 requests logged ({} lines)",
                cpu as f64 / 1e6 / ((REQUESTS + WARM_UP) as f64 / 1000.0),
                REQUESTS + WARM_UP
            );
        }
    }
    minimal.stop().await;
    ours.stop().await;
}
