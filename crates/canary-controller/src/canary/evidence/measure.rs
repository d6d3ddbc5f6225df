//! Reads what a release is judged by from the proxy itself: each proxy pod's HAProxy serves its statistics
//! as CSV (`/stats;csv` on the metrics port); the counters of the stable and the canary backends are taken
//! per pod (they are cumulative, so a window is the difference of two readings). With HTTP traffic, the pod's
//! proxy agent adds its request counts (`/requests`) and, at a window's end, the latencies of the requests
//! since its start (`/latencies`). No Prometheus needed. Run
//! only when a window starts or ends. A proxy pod's answer is from outside (anyone who can run a ready pod
//! with a proxy's labels can answer it): the pods are read at once, each within one deadline and up to
//! [`MAX_STATS_BYTES`], and at most [`MAX_PROXY_PODS`] of them; every count at most
//! [`crate::api::canary::MAX_COUNT`], at most [`MAX_LATENCIES`] latencies a route.

use crate::api::canary::{Counters, RouteCounters};
use crate::canary::release::WindowLatencies;
use crate::dataplane::haproxy::{STATS_PORT, backend_name};
use crate::dataplane::requests::{MAX_LATENCIES, RecentLatencies, RequestsReport};
use crate::kanary::build::AGENT_PORT;
use http_body_util::Empty;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How long a proxy pod may take to answer, body included.
const TIMEOUT: Duration = Duration::from_secs(3);
/// The most bytes read from one proxy pod in one answer (a proxy of a release has a handful of backends: a
/// few KiB of statistics; at most [`MAX_LATENCIES`] latencies, about 200 KiB).
pub const MAX_STATS_BYTES: usize = 512 * 1024;
/// The most proxy pods read (and kept in a window's counters in the status).
pub const MAX_PROXY_PODS: usize = 32;

#[derive(Debug, thiserror::Error)]
#[error("reading the statistics of proxy pod {pod} ({address}): {reason}")]
pub struct StatsError {
    pub pod: String,
    pub address: SocketAddr,
    pub reason: String,
}

/// The counters of both routes in every proxy pod (`pods`: name and address); with `http`, their request
/// counts too.
pub async fn read_counters(
    pods: &[(String, IpAddr)],
    stable_service: &str,
    canary_service: &str,
    http: bool,
) -> Result<BTreeMap<String, RouteCounters>, StatsError> {
    let reads = pods.iter().take(MAX_PROXY_PODS).map(|(pod, ip)| async move {
        let csv = read(pod, SocketAddr::new(*ip, STATS_PORT), "/stats;csv").await?;
        let backends = parse_stats(&csv);
        let of = |service: &str| backends.get(&backend_name(service)).copied().unwrap_or_default();
        let mut counters = RouteCounters { stable: of(stable_service), canary: of(canary_service) };
        if http {
            let address = SocketAddr::new(*ip, AGENT_PORT);
            let report: RequestsReport = read_json(pod, address, "/requests", "its request counts").await?;
            for (counters, service) in [(&mut counters.stable, stable_service), (&mut counters.canary, canary_service)]
            {
                let requests = report.routes.get(service).cloned().unwrap_or_default();
                (counters.requests, counters.request_errors) = (requests.requests, requests.errors);
            }
        }
        let bounded = RouteCounters { stable: counters.stable.bounded(), canary: counters.canary.bounded() };
        Ok((pod.clone(), bounded))
    });
    futures::future::try_join_all(reads).await.map(BTreeMap::from_iter)
}

/// The latencies (milliseconds) of both routes' requests since a window started (`start`: the pods' counters
/// then), from every proxy pod's agent: at most [`MAX_LATENCIES`] per route and pod.
pub async fn read_latencies(
    pods: &[(String, IpAddr)],
    stable_service: &str,
    canary_service: &str,
    start: &BTreeMap<String, RouteCounters>,
) -> Result<WindowLatencies, StatsError> {
    let reads = pods.iter().take(MAX_PROXY_PODS).map(|(pod, ip)| async move {
        let address = SocketAddr::new(*ip, AGENT_PORT);
        let then = start.get(pod).cloned().unwrap_or_default();
        let mut out = WindowLatencies::default();
        for (into, service, after) in [
            (&mut out.stable, stable_service, then.stable.requests),
            (&mut out.canary, canary_service, then.canary.requests),
        ] {
            let path = format!("/latencies?route={service}&after={after}&limit={MAX_LATENCIES}");
            let recent: RecentLatencies = read_json(pod, address, &path, "its latencies").await?;
            into.extend(recent.latencies_micros.iter().take(MAX_LATENCIES).map(|us| *us as f64 / 1000.0));
        }
        Ok::<_, StatsError>(out)
    });
    let mut all = WindowLatencies::default();
    for pod in futures::future::try_join_all(reads).await? {
        all.stable.extend(pod.stable);
        all.canary.extend(pod.canary);
    }
    Ok(all)
}

/// `path` of a proxy pod's `address`, within [`TIMEOUT`].
async fn read(pod: &str, address: SocketAddr, path: &str) -> Result<String, StatsError> {
    let error = |reason: String| StatsError { pod: pod.to_string(), address, reason };
    tokio::time::timeout(TIMEOUT, get(address, path))
        .await
        .map_err(|_| error(format!("no answer within {TIMEOUT:?}")))?
        .map_err(|e| error(e.to_string()))
}

/// `path` of a proxy agent's `address` as JSON of a `T` (`what`: what it is, for the error).
async fn read_json<T: serde::de::DeserializeOwned>(
    pod: &str,
    address: SocketAddr,
    path: &str,
    what: &str,
) -> Result<T, StatsError> {
    let json = read(pod, address, path).await?;
    serde_json::from_str(&json).map_err(|e| StatsError {
        pod: pod.to_string(),
        address,
        reason: format!("{what}: {e}"),
    })
}

/// GETs `path` of `address`: the body, at most [`MAX_STATS_BYTES`] of it.
async fn get(address: SocketAddr, path: &str) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request =
        http::Request::get(path).header("host", address.to_string()).body(Empty::<hyper::body::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(response.status().is_success(), "HTTP {}", response.status());
    let body = super::http::read_capped(response.into_body(), MAX_STATS_BYTES).await.map_err(|e| match e {
        None => anyhow::anyhow!("more than {MAX_STATS_BYTES} bytes of statistics: not read"),
        Some(why) => anyhow::anyhow!(why),
    })?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The counters of every backend in HAProxy's CSV statistics: sessions (`stot`), errors (`econ` + `eresp`:
/// connections that failed, were reset or closed abnormally by the server) and connect time (`ctime`) from
/// the backend's row, failed health checks (`chkfail`) summed over its servers.
pub fn parse_stats(csv: &str) -> HashMap<String, Counters> {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else { return HashMap::new() };
    let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let column = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(stot), Some(econ), Some(eresp), Some(chkfail), Some(ctime)) = (
        column("pxname"),
        column("svname"),
        column("stot"),
        column("econ"),
        column("eresp"),
        column("chkfail"),
        column("ctime"),
    ) else {
        return HashMap::new();
    };
    let mut backends: HashMap<String, Counters> = HashMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        let Some(name) = fields.get(px) else { continue };
        let counters = backends.entry(name.to_string()).or_default();
        match fields.get(sv).copied() {
            Some("BACKEND") => {
                counters.sessions = number(stot);
                counters.errors = number(econ).saturating_add(number(eresp));
                counters.connect_time_ms = number(ctime);
            }
            Some("FRONTEND") | None => {}
            Some(_) => counters.check_failures = counters.check_failures.saturating_add(number(chkfail)),
        }
    }
    backends
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proxy pod on a loopback address of its own (so that HAProxy's stats port and the agent's port are
    /// free), answering each GET with `answer(path)`; a path with `slow` is answered after 10 s.
    async fn fake_pod(answer: fn(&str) -> String) -> IpAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ip: IpAddr = format!("127.77.{}.{n}", std::process::id() % 250).parse().unwrap();
        for port in [STATS_PORT, AGENT_PORT] {
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, port)).await.unwrap();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut request = vec![0u8; 4096];
                        let n = stream.read(&mut request).await.unwrap_or(0);
                        let head = String::from_utf8_lossy(&request[..n]).into_owned();
                        let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                        if path.contains("slow") {
                            tokio::time::sleep(Duration::from_secs(10)).await;
                        }
                        let body = answer(&path);
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                        let _ = stream.write_all(format!("{head}{body}").as_bytes()).await;
                    });
                }
            });
        }
        ip
    }

    /// HAProxy's CSV with one backend row: the columns `parse_stats` reads, each `value`.
    fn stats_csv(backend: &str, value: &str) -> String {
        let header = "# pxname,svname,stot,econ,eresp,chkfail,ctime";
        format!("{header}\n{backend},BACKEND,{value},{value},{value},,{value}\n")
    }

    /// A proxy pod's answers are from outside: counts past what a status holds are cut to MAX_COUNT (and
    /// their sums over pods too), counts that are no numbers are refused with the pod named, an answer of
    /// more latencies than asked is cut, a pod that does not answer in time is named.
    #[tokio::test]
    async fn a_proxy_pods_huge_unreadable_endless_or_slow_answers_are_bounded() {
        use crate::api::canary::MAX_COUNT;
        let huge = fake_pod(|path| match path {
            "/stats;csv" => stats_csv("be_web-canary", &u64::MAX.to_string()),
            "/requests" => format!(
                r#"{{"routes": {{"web-canary": {{"requests": {max}, "errors": {max}, "latencyMicros": [[{max}, {max}]]}}}}}}"#,
                max = u64::MAX
            ),
            // more latencies than asked for, some of them the largest there are
            _ => {
                let mut many = vec!["3600000000".to_string(); 24_000];
                many.extend(vec![u64::MAX.to_string(); 1_000]);
                format!(r#"{{"requests": 1, "latenciesMicros": [{}]}}"#, many.join(","))
            }
        })
        .await;
        let pods = [("a".to_string(), huge), ("b".to_string(), fake_pod(|_| String::new()).await)];
        let read = read_counters(&pods[..1], "web-stable", "web-canary", true).await.unwrap();
        let canary = read["a"].canary;
        let all = [canary.sessions, canary.errors, canary.connect_time_ms, canary.requests, canary.request_errors];
        assert_eq!(all, [MAX_COUNT; 5], "{canary:?}");
        // two such pods: their sum is no larger either (and nothing overflows)
        let twice: BTreeMap<String, RouteCounters> =
            [("a".into(), read["a"].clone()), ("b".into(), read["a"].clone())].into();
        let summed = crate::canary::release::window_counters(&BTreeMap::new(), &twice, |r| &r.canary);
        assert_eq!((summed.sessions, summed.requests, summed.connect_time_ms), (MAX_COUNT, MAX_COUNT, MAX_COUNT));
        let latencies = read_latencies(&pods[..1], "web-stable", "web-canary", &read).await.unwrap();
        assert_eq!((latencies.canary.len(), latencies.stable.len()), (MAX_LATENCIES, MAX_LATENCIES));
        assert!(latencies.canary.iter().all(|ms| ms.is_finite()));
        // an empty or unreadable answer names the pod and what it should have been
        let refused = read_counters(&pods[1..], "web-stable", "web-canary", true).await.unwrap_err();
        assert!(
            refused.to_string().contains("proxy pod b") && refused.reason.contains("its request counts"),
            "{refused}"
        );
        let garbage = fake_pod(|path| match path {
            "/stats;csv" => stats_csv("be_web-canary", "1"),
            _ => r#"{"routes": {"web-canary": {"requests": -1, "errors": "NaN", "latencyMicros": []}}}"#.into(),
        })
        .await;
        let refused = read_counters(&[("c".into(), garbage)], "web-stable", "web-canary", true).await.unwrap_err();
        assert!(refused.reason.contains("its request counts"), "{refused}");
        // a pod that answers too slowly
        let slow = fake_pod(|_| String::new()).await;
        let start: BTreeMap<String, RouteCounters> = BTreeMap::new();
        let late = read_latencies(&[("d".into(), slow)], "slow-stable", "slow-canary", &start).await.unwrap_err();
        assert!(late.reason.contains("no answer within"), "{late}");
    }

    #[tokio::test]
    async fn endless_statistics_are_cut_at_the_cap() {
        let address = crate::canary::evidence::http::tests::endless_server().await;
        let why = get(address, "/stats;csv").await.unwrap_err().to_string();
        assert!(why.contains(&format!("more than {MAX_STATS_BYTES} bytes")), "{why}");
    }

    /// HAProxy 2.6's CSV, trimmed to the columns up to `ctime` that matter (real header names and order).
    #[test]
    fn backend_rows_give_sessions_errors_and_connect_time_and_servers_give_check_failures() {
        let mut header: Vec<String> = (0..60).map(|i| format!("c{i}")).collect();
        for (i, name) in
            [(0, "pxname"), (1, "svname"), (7, "stot"), (13, "econ"), (14, "eresp"), (21, "chkfail"), (59, "ctime")]
        {
            header[i] = name.into();
        }
        let row = |px: &str, sv: &str, stot: &str, econ: &str, eresp: &str, chkfail: &str, ctime: &str| {
            let mut f = vec![String::new(); 60];
            for (i, v) in [(0, px), (1, sv), (7, stot), (13, econ), (14, eresp), (21, chkfail), (59, ctime)] {
                f[i] = v.into();
            }
            f.join(",")
        };
        let csv = [
            format!("# {}", header.join(",")),
            row("kanary", "FRONTEND", "90", "", "", "", ""),
            row("be_web-canary", "slot0", "30", "1", "4", "2", "3"),
            row("be_web-canary", "slot1", "30", "0", "0", "1", "0"),
            row("be_web-canary", "BACKEND", "60", "2", "4", "", "5"),
        ]
        .join("\n");
        let parsed = parse_stats(&csv);
        assert_eq!(
            parsed["be_web-canary"],
            Counters { sessions: 60, errors: 6, check_failures: 3, connect_time_ms: 5, ..Default::default() }
        );
        assert!(!parsed.contains_key("be_web-stable"));
    }
}
