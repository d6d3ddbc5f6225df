//! HTTP clients of the end-to-end tests: requests on a few long-lived connections (HTTP/1.1 keep-alive, one
//! request at a time per connection; HTTP/2, many streams on one connection), each answer counted by who
//! gave it (the built-in server's `sim-answer` header) and timed at the client.

use crate::traffic::Tally;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The header the workload simulator's built-in server names its pod and image in.
pub const ANSWER_HEADER: &str = "sim-answer";

/// How a client speaks HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.1 with keep-alive: one request at a time on each connection.
    Http1,
    /// HTTP/2 without TLS (prior knowledge): concurrent streams on each connection.
    Http2,
}

/// What a load of requests got: who answered (failures with why), and each answer's latency at the client.
#[derive(Debug, Default)]
pub struct Requests {
    pub tally: Tally,
    pub latencies: Vec<Duration>,
    /// Connections the client had to open again because the proxy closed one (0: every request went on the
    /// connection it started on).
    pub reconnects: usize,
    /// The latencies of the answers of each answerer.
    pub by_answer: std::collections::BTreeMap<String, Vec<Duration>>,
    /// Failed answers, by why and who gave them (gRPC calls).
    pub failures_by: std::collections::BTreeMap<String, usize>,
}

impl Requests {
    /// `part`'s requests added (another client's, or another round's).
    pub fn add(&mut self, part: Requests) {
        self.tally.add(part.tally);
        self.latencies.extend(part.latencies);
        self.reconnects += part.reconnects;
        for (who, latencies) in part.by_answer {
            self.by_answer.entry(who).or_default().extend(latencies);
        }
        for (why, n) in part.failures_by {
            *self.failures_by.entry(why).or_default() += n;
        }
    }

    /// The `q` quantile (0 to 1) of the latencies of answers whose answerer contains `who`, in milliseconds.
    pub fn percentile_ms(&self, who: &str, q: f64) -> Option<f64> {
        let mut all: Vec<Duration> =
            self.by_answer.iter().filter(|(a, _)| a.contains(who)).flat_map(|(_, l)| l.iter().copied()).collect();
        all.sort();
        let rank = ((q * all.len() as f64).ceil() as usize).max(1);
        all.get(rank - 1).map(|d| d.as_secs_f64() * 1000.0)
    }
}

/// A client connection that sends requests to `target`.
#[derive(Clone)]
enum Sender {
    Http1(std::sync::Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn connect(target: SocketAddr, version: Version) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(target).await.map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    match version {
        Version::Http1 => {
            let (send, connection) =
                hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(connection);
            Ok(Sender::Http1(std::sync::Arc::new(tokio::sync::Mutex::new(send))))
        }
        Version::Http2 => {
            let (send, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(connection);
            Ok(Sender::Http2(send))
        }
    }
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(s) => s.try_lock().is_ok_and(|s| s.is_closed()),
            Sender::Http2(s) => s.is_closed(),
        }
    }

    /// One GET of `path` (with `headers`): who answered, or why it failed.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<(String, http::HeaderMap), String> {
        let mut request = http::Request::get(path).header("host", "e2e");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::new()).expect("a valid request");
        let response = match self {
            Sender::Http1(s) => {
                let mut s = s.lock().await;
                s.ready().await.map_err(|e| format!("connection: {e}"))?;
                s.send_request(request).await
            }
            Sender::Http2(s) => {
                let mut s = s.clone();
                s.ready().await.map_err(|e| format!("connection: {e}"))?;
                s.send_request(request).await
            }
        }
        .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let answer = response.headers().get(ANSWER_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let headers = response.headers().clone();
        response.into_body().collect().await.map_err(|e| format!("body: {e}"))?;
        match answer {
            Some(answer) if status.is_success() => Ok((answer, headers)),
            _ => Err(format!("status {status} from {answer:?}")),
        }
    }
}

/// One GET of `/` to `target` on a connection of its own: who answered and the answer's headers.
pub async fn get(
    target: SocketAddr,
    version: Version,
    headers: &[(&str, &str)],
) -> Result<(String, http::HeaderMap), String> {
    connect(target, version).await?.get("/", headers).await
}

/// A client holding `connections` connections to `target`, used again by each load, so that a test can
/// tell whether a change of the proxy cut them.
pub struct Client {
    target: SocketAddr,
    version: Version,
    connections: Vec<std::sync::Arc<tokio::sync::Mutex<Option<Sender>>>>,
}

impl Client {
    pub async fn connect(target: SocketAddr, version: Version, connections: usize) -> Client {
        let mut held = vec![];
        for _ in 0..connections {
            let sender = connect(target, version).await.ok();
            held.push(std::sync::Arc::new(tokio::sync::Mutex::new(sender)));
        }
        Client { target, version, connections: held }
    }

    /// `requests` GETs of `/` (with `headers`) on the held connections, `per_connection` in flight on each (1
    /// for HTTP/1.1). A connection that was closed is opened again (counted in `reconnects`).
    pub async fn load(&self, per_connection: usize, requests: usize, headers: &[(&str, &str)]) -> Requests {
        let started = Instant::now();
        let workers = self.connections.len() * per_connection;
        let mut tasks = vec![];
        for (c, sender) in self.connections.iter().enumerate() {
            for w in 0..per_connection {
                let n = requests / workers + usize::from(c * per_connection + w < requests % workers);
                let (sender, target, version) = (sender.clone(), self.target, self.version);
                let headers: Vec<(String, String)> =
                    headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
                tasks.push(tokio::spawn(async move {
                    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                    let mut out = Requests::default();
                    for _ in 0..n {
                        let current = {
                            let mut slot = sender.lock().await;
                            if slot.as_ref().is_none_or(Sender::is_closed) {
                                out.reconnects += 1;
                                *slot = connect(target, version).await.ok();
                            }
                            slot.clone()
                        };
                        let begun = Instant::now();
                        let answer = match current {
                            Some(s) => tokio::time::timeout(Duration::from_secs(5), s.get("/", &headers))
                                .await
                                .unwrap_or(Err("no answer in 5 s".into())),
                            None => Err("cannot connect".into()),
                        };
                        let took = begun.elapsed();
                        out.latencies.push(took);
                        if let Ok((who, _)) = &answer {
                            out.by_answer.entry(who.clone()).or_default().push(took);
                        }
                        out.tally.record_why(answer.map(|(a, _)| a));
                    }
                    out
                }));
            }
        }
        let mut all = Requests::default();
        for task in tasks {
            all.add(task.await.expect("a client task"));
        }
        all.tally.elapsed = started.elapsed();
        all
    }
}

/// What the proxy pods of a Kanary report of their HTTP requests, summed over the pods: the agents' request
/// metrics (`/requests`), and HAProxy's own count of answers per backend (its stats' `hrsp_*`), by route.
#[derive(Debug, Default)]
pub struct ProxyRequests {
    pub agents: std::collections::BTreeMap<String, canary_controller::dataplane::requests::RouteRequests>,
    pub haproxy: std::collections::BTreeMap<String, u64>,
}

/// The body of `GET path` from `target` over HTTP/1.1 (empty when it fails).
pub(crate) async fn text(target: SocketAddr, path: &str) -> String {
    let answer = async {
        let stream = tokio::net::TcpStream::connect(target).await.ok()?;
        let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(connection);
        let request = http::Request::get(path).header("host", "e2e").body(Empty::<Bytes>::new()).ok()?;
        let body = send.send_request(request).await.ok()?.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), answer).await.ok().flatten().unwrap_or_default()
}

impl ProxyRequests {
    /// `route`'s requests since `before` (an earlier reading of the same pods).
    pub fn since(&self, before: &ProxyRequests, route: &str) -> canary_controller::dataplane::requests::RouteRequests {
        let now = self.agents.get(route).cloned().unwrap_or_default();
        now.since(before.agents.get(route).unwrap_or(&Default::default()))
    }
}

/// [`ProxyRequests`] once the agents' counts have settled (the same in two readings 300 ms apart, within
/// 10 s): HAProxy logs a request when its stream ends, which can be after the client has its answer.
pub async fn proxy_requests(pods: &[std::net::IpAddr]) -> ProxyRequests {
    let total = |r: &ProxyRequests| r.agents.values().map(|r| r.requests).sum::<u64>();
    let mut last = read_proxy_requests(pods).await;
    for _ in 0..33 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = read_proxy_requests(pods).await;
        if total(&now) == total(&last) {
            return now;
        }
        last = now;
    }
    last
}

/// Reads [`ProxyRequests`] from the pods at `pods` (addresses the test reaches).
async fn read_proxy_requests(pods: &[std::net::IpAddr]) -> ProxyRequests {
    use canary_controller::dataplane::haproxy::{BACKEND_PREFIX, STATS_PORT};
    use canary_controller::dataplane::requests::RequestsReport;
    let agent_port = canary_controller::kanary::build::AGENT_PORT;
    let mut out = ProxyRequests::default();
    for pod in pods {
        // the same client for both (HAProxy's stats come chunked: a bare HTTP/1.0 read would keep the chunk sizes)
        let answer = text(SocketAddr::new(*pod, agent_port), "/requests").await;
        let report: RequestsReport =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{pod}'s /requests: {e}: {answer:?}"));
        for (route, requests) in report.routes {
            out.agents.entry(route).or_default().add(&requests);
        }
        let csv = text(SocketAddr::new(*pod, STATS_PORT), "/stats;csv").await;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
        let answered: Vec<usize> =
            header.iter().enumerate().filter(|(_, h)| h.starts_with("hrsp_")).map(|(i, _)| i).collect();
        for line in lines {
            let fields: Vec<&str> = line.split(',').collect();
            let (Some(name), Some("BACKEND")) = (fields.first(), fields.get(1).copied()) else { continue };
            let Some(route) = name.strip_prefix(BACKEND_PREFIX) else { continue };
            let total: u64 = answered.iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
            *out.haproxy.entry(route.to_string()).or_default() += total;
        }
    }
    out
}

/// HTTP/1.1 keep-alive load through `target` on `connections` connections, as fast as they answer, while
/// `work` runs: every request's answer and latency.
pub async fn under_http_load<T, F: std::future::Future<Output = T>>(
    target: SocketAddr,
    connections: usize,
    work: F,
) -> (Requests, T) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = Client::connect(target, Version::Http1, connections).await;
    let flag = stop.clone();
    let load = tokio::spawn(async move {
        let mut all = Requests::default();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            all.add(client.load(1, connections * 20, &[]).await);
        }
        all
    });
    let out = work.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (load.await.expect("the load task"), out)
}

/// `calls` gRPC calls (`grpc.health.v1.Health/Check`, a real gRPC client: tonic) to `target` on one HTTP/2
/// connection, `concurrency` at a time: who answered each (the `sim-answer` metadata), failures with their
/// gRPC status and who gave them.
pub async fn grpc_load(target: SocketAddr, calls: usize, concurrency: usize) -> Requests {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let started = Instant::now();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("a gRPC connection");
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let mut client = HealthClient::new(channel.clone());
            let n = calls / concurrency + usize::from(w < calls % concurrency);
            tokio::spawn(async move {
                let mut out = Requests::default();
                for _ in 0..n {
                    let begun = Instant::now();
                    let call = client.check(HealthCheckRequest { service: String::new() });
                    let answer = match tokio::time::timeout(Duration::from_secs(5), call).await {
                        Ok(Ok(answer)) => answered(answer.metadata()).ok_or_else(|| "no sim-answer".to_string()),
                        Ok(Err(status)) => {
                            let who = answered(status.metadata()).unwrap_or_default();
                            Err(format!("{:?} from {who}", status.code()))
                        }
                        Err(_) => Err("no answer in 5 s".into()),
                    };
                    out.latencies.push(begun.elapsed());
                    if let Err(why) = &answer {
                        *out.failures_by.entry(why.clone()).or_default() += 1;
                    }
                    out.tally.record_why(answer);
                }
                out
            })
        })
        .collect();
    let mut all = Requests::default();
    for task in tasks {
        all.add(task.await.expect("a gRPC client task"));
    }
    all.tally.elapsed = started.elapsed();
    all
}

fn answered(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata.get(ANSWER_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `requests` HTTP/1.1 GETs of `/` on one keep-alive connection to `target`, made from network namespace
/// `namespace` (none: the test's) by a thread of their own with blocking reads, so that the client's own
/// delays (an async runtime's scheduling) stay out of the latencies: who answered each and how long it took.
/// Panics on a failed request.
pub fn timed_requests(namespace: Option<String>, target: SocketAddr, requests: usize) -> Requests {
    use std::io::{BufRead, BufReader, Read, Write};
    std::thread::spawn(move || {
        let stream = match &namespace {
            Some(ns) => {
                let socket = crate::node::socket_in(ns, target).expect("a socket in the namespace");
                socket.set_nonblocking(false).unwrap();
                socket.connect(&target.into()).expect("a connection");
                std::net::TcpStream::from(socket)
            }
            None => std::net::TcpStream::connect(target).expect("a connection"),
        };
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut out = Requests::default();
        let started = Instant::now();
        for _ in 0..requests {
            let begun = Instant::now();
            writer.write_all(b"GET / HTTP/1.1\r\nhost: e2e\r\n\r\n").unwrap();
            let (mut length, mut answer, mut line) = (0usize, String::new(), String::new());
            loop {
                line.clear();
                assert!(reader.read_line(&mut line).unwrap() > 0, "the connection closed");
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                let lower = header.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                } else if lower.starts_with(&format!("{ANSWER_HEADER}:")) {
                    answer = header[ANSWER_HEADER.len() + 1..].trim().to_string();
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let took = begun.elapsed();
            out.latencies.push(took);
            out.by_answer.entry(answer.clone()).or_default().push(took);
            out.tally.record(Some(answer));
        }
        out.tally.elapsed = started.elapsed();
        out
    })
    .join()
    .expect("the timing client")
}
