//! The built-in workload: what a container of any image the simulator does not run for real (not HAProxy)
//! runs. It listens on the container's ports and answers with one line naming its pod and image:
//! - to HTTP (HTTP/1.1 with keep-alive, and HTTP/2 without TLS, "h2c", served by hyper): one response per
//!   request, the line as its body and in the `sim-answer` header; a gRPC request (`content-type:
//!   application/grpc`) is served by a real gRPC service, tonic's `grpc.health.v1.Health` (SERVING), the
//!   line in the answer's `sim-answer` header;
//!   `GET /metrics` answers Prometheus text (requests, failures, latency);
//! - to a raw TCP client: the line after a second of its silence; a client that sends lines gets the line
//!   once per line it sends, until it closes (a long-lived connection).
//!
//! Its behaviour comes from the container's environment, so a pod template sets it:
//! - `SIM_FAIL_RATIO` (0 to 1): the share of answers that fail (HTTP 500, `grpc-status` 14 "unavailable", or
//!   a reset for raw TCP);
//! - `SIM_LATENCY_MS`: a delay before each answer;
//! - `SIM_REFUSE=true`: listen on nothing (connections are refused, readiness probes fail);
//! - `SIM_FAILING_IMAGES` (`image=ratio,...`): a fail ratio for the listed images only, so that one pod
//!   template describes a release whose new image is bad (a canary copies its target's environment);
//! - `SIM_SLOW_IMAGES` (`image=ms,...`): a latency for the listed images only (a release whose new image is
//!   slower).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
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
            for (listed, r) in image_list("SIM_FAILING_IMAGES", &v, "ratio")? {
                if listed == image {
                    behaviour.fail_ratio = ratio("SIM_FAILING_IMAGES", r)?;
                }
            }
        }
        if let Some(v) = get("SIM_LATENCY_MS") {
            let ms: u64 = v.parse().map_err(|_| anyhow::anyhow!("SIM_LATENCY_MS={v:?}: expected milliseconds"))?;
            behaviour.latency = Duration::from_millis(ms);
        }
        if let Some(v) = get("SIM_SLOW_IMAGES") {
            for (listed, ms) in image_list("SIM_SLOW_IMAGES", &v, "milliseconds")? {
                let Ok(ms) = ms.parse::<u64>() else {
                    anyhow::bail!("SIM_SLOW_IMAGES={v:?}: expected image=milliseconds, comma separated");
                };
                if listed == image {
                    behaviour.latency = Duration::from_millis(ms);
                }
            }
        }
        if let Some(v) = get("SIM_REFUSE") {
            behaviour.refuse = v.parse().map_err(|_| anyhow::anyhow!("SIM_REFUSE={v:?}: expected true or false"))?;
        }
        Ok(behaviour)
    }
}

/// The `image=value` entries of variable `name` (`value`: its text; `what`: the kind of value, for the
/// error), comma separated.
fn image_list<'a>(name: &str, value: &'a str, what: &str) -> anyhow::Result<Vec<(&'a str, &'a str)>> {
    value
        .split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|entry| {
            entry
                .trim()
                .rsplit_once('=')
                .ok_or_else(|| anyhow::anyhow!("{name}={value:?}: expected image={what}, comma separated"))
        })
        .collect()
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
            "Answers (one per HTTP or gRPC request, per raw TCP connection, or per line a long-lived connection sends), by outcome (ok or error)",
            requests.clone(),
        );
        registry.register("sim_request_duration_seconds", "Time to answer", latency.clone());
        Metrics { registry, requests, latency }
    }
}

/// What every connection of a server shares.
struct Shared {
    line: String,
    behaviour: Behaviour,
    metrics: Metrics,
    /// The gRPC service (grpc.health.v1.Health, every service SERVING).
    grpc: tower::util::BoxCloneSyncService<Request<Incoming>, Response<tonic::body::Body>, std::convert::Infallible>,
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
    // the reporter's default: the server (service "") is SERVING
    let (_reporter, grpc) = tonic_health::server::health_reporter();
    let grpc = tower::util::BoxCloneSyncService::new(grpc);
    let shared = Arc::new(Shared { line: answer(&pod, &image), behaviour, metrics: Metrics::new(), grpc });
    let mut tasks = vec![];
    for address in listen {
        let listener = crate::network::listen(address)?;
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream, shared.clone()));
            }
        }));
    }
    futures::future::join_all(tasks).await;
    Ok(())
}

/// How long a connection may stay silent before it is taken for a raw TCP client that sends nothing: long
/// enough for a client on a loaded machine (a request that came 120 ms after the connection, through HAProxy
/// on 2 busy cores, was once taken for a raw client's silence).
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);

/// How a connection opens: an HTTP/1 request line or the HTTP/2 preface.
fn looks_like_http(first: &[u8]) -> bool {
    const OPENINGS: [&[u8]; 9] =
        [b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"PRI * HTTP/2", b"CONNECT "];
    OPENINGS.iter().any(|o| first.starts_with(o) || (first.len() < o.len() && o.starts_with(first)))
}

/// Whether the first bytes a client sent are enough to tell HTTP from raw TCP.
fn decided(first: &[u8]) -> bool {
    first.len() >= 8 || first.contains(&b'\n') || !looks_like_http(first)
}

async fn handle(stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    // an HTTP client speaks first; a raw TCP client (nc) may send nothing, or lines. Peek (nothing is
    // consumed) until the first bytes tell which
    let mut first = [0u8; 16];
    let deadline = tokio::time::Instant::now() + FIRST_BYTES_WAIT;
    let mut seen = 0;
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {
                seen = n;
                if decided(&first[..n]) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            _ => break,
        }
    }
    if seen > 0 && looks_like_http(&first[..seen]) {
        return serve_http(stream, shared).await;
    }
    raw(stream, &shared).await
}

/// HTTP/1.1 (keep-alive) or HTTP/2 without TLS on one connection, a response per request.
async fn serve_http(stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(answer_http(request, &shared).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await.map_err(std::io::Error::other)
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// A body of `bytes`.
fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// The header every HTTP answer names the request's HTTP version in (`HTTP/1.1`, `HTTP/2.0`).
pub const SIM_PROTOCOL_HEADER: &str = "sim-protocol";

async fn answer_http(request: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let version = http::HeaderValue::from_str(&format!("{:?}", request.version())).expect("a header value");
    let mut response = answer_request(request, shared).await;
    response.headers_mut().insert(SIM_PROTOCOL_HEADER, version);
    response
}

async fn answer_request(request: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let started = Instant::now();
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if request.uri().path() == "/metrics" && !grpc {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &shared.metrics.registry);
        return response(StatusCode::OK, "text/plain; version=0.0.4", &shared.line, full(text));
    }
    if grpc {
        let fail = answer_fails(&shared.behaviour, &shared.metrics, started).await;
        return grpc_answer(request, shared, fail).await;
    }
    // the request's body is read (a bounded amount) before the answer, as a real server would
    let _ = http_body_util::Limited::new(request.into_body(), 64 * 1024).collect().await;
    let fail = answer_fails(&shared.behaviour, &shared.metrics, started).await;
    match fail {
        false => response(StatusCode::OK, "text/plain", &shared.line, full(shared.line.clone())),
        true => {
            let body = full(Bytes::from_static(b"failed (SIM_FAIL_RATIO)\n"));
            response(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", &shared.line, body)
        }
    }
}

fn response(status: StatusCode, content_type: &str, line: &str, body: Body) -> Response<Body> {
    let mut builder = Response::builder().status(status).header(http::header::CONTENT_TYPE, content_type);
    if let Ok(answer) = http::HeaderValue::from_str(line.trim_end()) {
        builder = builder.header(SIM_ANSWER_HEADER, answer);
    }
    builder.body(body).expect("a valid response")
}

/// The header every HTTP answer names its pod and image in (for gRPC clients, which read no body text).
pub const SIM_ANSWER_HEADER: &str = "sim-answer";

/// A gRPC answer: tonic's health service answers the call; failing, a "trailers-only" answer
/// (`grpc-status: 14`, unavailable, in the headers and no body), as gRPC servers fail a call before any
/// message.
async fn grpc_answer(request: Request<Incoming>, shared: &Shared, fail: bool) -> Response<Body> {
    if fail {
        let mut response = response(StatusCode::OK, "application/grpc", &shared.line, full(Bytes::new()));
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("14"));
        response.headers_mut().insert("grpc-message", http::HeaderValue::from_static("failed (SIM_FAIL_RATIO)"));
        return response;
    }
    let mut service = shared.grpc.clone();
    let answered = tower::Service::call(&mut service, request).await;
    let Ok(answered) = answered;
    let mut answered =
        answered.map(|body| body.map_err(|status| std::io::Error::other(status.to_string())).boxed_unsync());
    if let Ok(line) = http::HeaderValue::from_str(shared.line.trim_end()) {
        answered.headers_mut().insert(SIM_ANSWER_HEADER, line);
    }
    answered
}

/// A raw TCP client: the line once it has said nothing for a while, or a line per line it sends.
async fn raw(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let started = Instant::now();
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(FIRST_BYTES_WAIT, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
        if request.contains(&b'\n') || request.len() > 16 * 1024 {
            break;
        }
    }
    let (line, behaviour, metrics) = (&shared.line, &shared.behaviour, &shared.metrics);
    if request.contains(&b'\n') {
        return converse(stream, request, line, behaviour, metrics).await;
    }
    if answer_fails(behaviour, metrics, started).await {
        // a reset, as a crashing server gives
        crate::network::reset(&stream);
        return Ok(());
    }
    stream.write_all(line.as_bytes()).await?;
    stream.shutdown().await
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
        let slow = Behaviour::from_env("app:v2", env(&[("SIM_SLOW_IMAGES", "app:v2=30")])).unwrap();
        assert_eq!(slow.latency, Duration::from_millis(30));
        assert!(Behaviour::from_env("app:v2", env(&[("SIM_SLOW_IMAGES", "app:v2")])).is_err());
        let failing = || env(&[("SIM_FAILING_IMAGES", "app:v3=0.2, other:v1=1")]);
        assert_eq!(Behaviour::from_env("app:v3", failing()).unwrap().fail_ratio, 0.2);
        assert_eq!(Behaviour::from_env("app:v1", failing()).unwrap().fail_ratio, 0.0);
        let bad = Behaviour::from_env("app:v1", env(&[("SIM_FAILING_IMAGES", "app:v3")])).unwrap_err();
        assert!(bad.to_string().contains("image=ratio"), "{bad}");
    }

    #[tokio::test]
    async fn answers_raw_tcp_http1_http2_and_grpc_with_its_pod_and_image_and_counts_them() {
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
        // HTTP/1.1: two requests on one connection (keep-alive)
        let io = hyper_util::rt::TokioIo::new(TcpStream::connect(address).await.unwrap());
        let (mut h1, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        for _ in 0..2 {
            let request = Request::get("/").header("host", "x").body(Full::new(Bytes::new())).unwrap();
            let response = h1.send_request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[SIM_ANSWER_HEADER], "pod=p-1 image=img:1");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "pod=p-1 image=img:1\n");
        }
        // HTTP/2 without TLS: a real gRPC client's call, answered by the health service
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap();
        let mut grpc = tonic_health::pb::health_client::HealthClient::new(channel.connect().await.unwrap());
        let answer = grpc.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
        assert_eq!(answer.metadata().get(SIM_ANSWER_HEADER).unwrap(), "pod=p-1 image=img:1");
        assert_eq!(answer.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
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
        metrics.write_all(b"GET /metrics HTTP/1.1\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut text = String::new();
        metrics.read_to_string(&mut text).await.unwrap();
        assert!(text.contains("sim_requests_total{outcome=\"ok\"} 7"), "{text}");
    }
}
