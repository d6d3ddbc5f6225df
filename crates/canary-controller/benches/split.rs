//! `cargo bench -p canary-controller --bench split`: the traffic split of our HAProxy config against the
//! original kanary's config (one backend, per-pod weights `route_weight / pod_count` printed as floats,
//! no health checks), measured in one run on the same loopback backends with real HAProxy. Prints figures;
//! asserts nothing.

use canary_controller::dataplane::Server;
use canary_controller::dataplane::haproxy::RouteBackend;
use e2e_support::traffic::{
    Haproxy, Tally, config_only, drive, drive_through, free_port, our_proxy_files, start_backends,
};
use std::fmt::Write;
use std::net::SocketAddr;

const CONNECTIONS: usize = 10_000;
const CONCURRENCY: usize = 32;

struct Route {
    name: &'static str,
    weight: i64,
    servers: Vec<Server>,
}

/// The original's config: one backend, one server per pod, float weights, no checks (plus a stats frontend,
/// only so the harness can wait for HAProxy to start).
fn original_config(routes: &[Route], listen: SocketAddr, stats: SocketAddr) -> String {
    let mut c = format!(
        "global\n    maxconn 4096\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1m\n    timeout server 1m\n\
         frontend stats\n    mode http\n    bind {stats}\n    stats enable\n    stats uri /stats\n\
         frontend in\n    bind {listen}\n    default_backend kanary\nbackend kanary\n"
    );
    for r in routes {
        let per_pod = r.weight as f32 / r.servers.len().max(1) as f32;
        for s in &r.servers {
            let _ = writeln!(c, "    server {} {} weight {per_pod}", s.name, s.endpoint());
        }
    }
    c
}

/// Our config and weights map for `routes`, in a directory of their own.
fn our_files(routes: &[Route], listen: SocketAddr, stats: SocketAddr) -> tempfile::TempDir {
    let backends: Vec<RouteBackend> = routes
        .iter()
        .map(|r| RouteBackend {
            service: r.name.into(),
            weight: r.weight,
            servers: r.servers.clone(),
            h2c: false,
            header_value: None,
        })
        .collect();
    our_proxy_files("bench/split", &backends, listen, stats)
}

/// Drives the bench's connections through HAProxy on the files of `dir`, once `up` servers are up.
async fn run(dir: tempfile::TempDir, listen: SocketAddr, stats: SocketAddr, up: usize) -> Tally {
    drive_through(dir, listen, stats, up, CONNECTIONS, CONCURRENCY).await
}

fn servers(prefix: &str, ips: &[&str], port: u16) -> Vec<Server> {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| Server { name: format!("{prefix}-{i}"), address: ip.parse().unwrap(), port })
        .collect()
}

/// Largest distance, in percentage points, between a route's share and its weight.
fn split_error(routes: &[Route], t: &Tally) -> f64 {
    routes.iter().map(|r| (t.percent(r.name) - r.weight as f64).abs()).fold(0.0, f64::max)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    let (listen, stats) = (addr(free_port("::")), addr(free_port("::")));
    let pa = start_backends(&["127.0.0.51"], "a").await;
    let pb = start_backends(&["127.0.0.61", "127.0.0.62", "127.0.0.63"], "b").await;
    let pz = start_backends(&["127.0.0.71"], "zero").await;
    let dead_port = free_port("127.0.0.81"); // nothing listens there: a pod that died before its endpoint went

    println!("split benchmark: {CONNECTIONS} connections per run, {CONCURRENCY} at a time, real HAProxy on loopback");
    println!("route a: 1 pod, route b: 3 pods; error = largest |share - weight| in percentage points\n");
    println!(
        "{:<8} {:>14} {:>14} {:>16} {:>16}",
        "weights", "ours: error", "orig: error", "ours: a/b (%)", "orig: a/b (%)"
    );
    for (wa, wb) in [(80, 20), (95, 5), (99, 1)] {
        let routes = [
            Route { name: "a", weight: wa, servers: servers("a", &["127.0.0.51"], pa) },
            Route { name: "b", weight: wb, servers: servers("b", &["127.0.0.61", "127.0.0.62", "127.0.0.63"], pb) },
        ];
        let ours = run(our_files(&routes, listen, stats), listen, stats, 4).await;
        let orig = run(config_only(original_config(&routes, listen, stats)), listen, stats, 4).await;
        println!(
            "{:<8} {:>14.2} {:>14.2} {:>16} {:>16}",
            format!("{wa}/{wb}"),
            split_error(&routes, &ours),
            split_error(&routes, &orig),
            format!("{:.2}/{:.2}", ours.percent("a"), ours.percent("b")),
            format!("{:.2}/{:.2}", orig.percent("a"), orig.percent("b")),
        );
        assert_eq!(ours.failures + orig.failures, 0, "ours: {ours:?}, original: {orig:?}");
    }

    // a weight-0 route with a live pod, and a route whose only pod is dead but still listed
    let routes = [
        Route { name: "a", weight: 70, servers: servers("a", &["127.0.0.51"], pa) },
        Route { name: "b", weight: 20, servers: servers("b", &["127.0.0.61", "127.0.0.62", "127.0.0.63"], pb) },
        Route { name: "dead", weight: 10, servers: servers("dead", &["127.0.0.81"], dead_port) },
        Route { name: "zero", weight: 0, servers: servers("zero", &["127.0.0.71"], pz) },
    ];
    let ours = {
        let mut proxy = Haproxy::start_in(our_files(&routes, listen, stats), stats).await.expect("haproxy");
        proxy.wait_servers_up(5).await; // the dead one is marked DOWN by its health check
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let tally = drive(listen, CONNECTIONS, CONCURRENCY).await;
        proxy.stop().await;
        tally
    };
    let orig = run(config_only(original_config(&routes, listen, stats)), listen, stats, 6).await;
    println!("\nweight-0 route with a live pod, and a 10% route whose only pod is dead:");
    println!("{:<10} {:>18} {:>18}", "", "to weight-0 route", "failed connections");
    println!("{:<10} {:>18} {:>18}", "ours", ours.answers.get("zero").unwrap_or(&0), ours.failures);
    println!("{:<10} {:>18} {:>18}", "original", orig.answers.get("zero").unwrap_or(&0), orig.failures);

    // throughput: straight to one backend, and through our proxy to the same backend
    let one = [Route { name: "a", weight: 100, servers: servers("a", &["127.0.0.51"], pa) }];
    let direct = drive(format!("127.0.0.51:{pa}").parse().unwrap(), CONNECTIONS, CONCURRENCY).await;
    let proxied = run(our_files(&one, listen, stats), listen, stats, 1).await;
    let rate = |t: &Tally| t.total() as f64 / t.elapsed.as_secs_f64();
    println!(
        "\nthroughput (connections/s): direct {:.0}, through our HAProxy {:.0}, ratio {:.2}",
        rate(&direct),
        rate(&proxied),
        rate(&proxied) / rate(&direct)
    );
}
