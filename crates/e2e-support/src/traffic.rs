//! Real traffic on loopback for the Kanary traffic test and the benchmarks: backends that answer an HTTP/1.0
//! request (one per connection) with their identity, a real HAProxy running a given config, a client that
//! opens many short connections and counts who answered, and long-lived connections that count whether they
//! were cut. Everything binds 127.0.0.x addresses only.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts one backend per address, all on the same (free) port, each answering an HTTP/1.0 request with 200
/// and `identity` as the body, then closing; a client that sends lines of its own instead (a long-lived
/// connection, [`long_lived`]) gets `identity` for each line, for as long as it keeps the connection.
pub async fn start_backends(addresses: &[&str], identity: &str) -> u16 {
    let mut port = 0;
    for addr in addresses {
        let ip: IpAddr = addr.parse().unwrap();
        let listener = TcpListener::bind(SocketAddr::new(ip, port))
            .await
            .unwrap_or_else(|e| panic!("cannot bind {addr}:{port}: {e}"));
        port = listener.local_addr().unwrap().port();
        let identity = identity.to_string();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(answer(stream, identity.clone()));
            }
        });
    }
    port
}

/// One backend connection: an HTTP/1.0 answer, or an answer a line.
async fn answer(mut stream: TcpStream, identity: String) {
    // read the whole request first: closing with unread data would reset the connection
    let mut request = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
            _ => return,
        }
        if request.starts_with(b"GET ") && request.windows(4).any(|w| w == b"\r\n\r\n") {
            let reply = format!("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n{identity}\n");
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
        if !request.starts_with(b"GET ") && request.ends_with(b"\n") {
            request.clear();
            if stream.write_all(format!("{identity}\n").as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// One `GET / HTTP/1.0` to `target`: the first line of the body of a 200 answer, or None when the
/// connection fails, times out (5 s) or the answer is not a 200.
pub async fn ask(target: SocketAddr) -> Option<String> {
    ask_why(target).await.ok()
}

/// [`ask`], saying why a connection failed (what failed, and how long after it started).
pub async fn ask_why(target: SocketAddr) -> Result<String, String> {
    within_5s(async {
        let mut s = TcpStream::connect(target).await.map_err(|e| format!("connect: {}", e.kind()))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.map_err(|e| format!("write: {}", e.kind()))?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.map_err(|e| format!("read: {}", e.kind()))?;
        let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(|| format!("answer {answer:?}"))?;
        let status = head.lines().next().unwrap_or_default();
        if !(status.starts_with("HTTP/1.") && status.split(' ').nth(1) == Some("200")) {
            return Err(format!("status {status:?}"));
        }
        let id = body.lines().next().unwrap_or_default().trim().to_string();
        if id.is_empty() { Err("an empty answer".to_string()) } else { Ok(id) }
    })
    .await
}

/// What `exchange` answered, or why it failed (it failed also when it took more than 5 s), with how long
/// after it started.
async fn within_5s(exchange: impl std::future::Future<Output = Result<String, String>>) -> Result<String, String> {
    let started = std::time::Instant::now();
    let outcome =
        tokio::time::timeout(Duration::from_secs(5), exchange).await.unwrap_or(Err("no answer in 5 s".into()));
    outcome.map_err(|why| format!("{why} after {} ms", started.elapsed().as_millis()))
}

/// One raw TCP exchange with `target`: sends a line, reads the one-line answer, closes (a TCP client such as
/// a database's: the built-in server fails it with a reset, which the proxy counts as an error).
pub async fn ask_line_why(target: SocketAddr) -> Result<String, String> {
    within_5s(async {
        let mut s = TcpStream::connect(target).await.map_err(|e| format!("connect: {}", e.kind()))?;
        s.write_all(b"ping\n").await.map_err(|e| format!("write: {}", e.kind()))?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\n") {
            match s.read(&mut byte).await.map_err(|e| format!("read: {}", e.kind()))? {
                0 => return Err(format!("closed after {:?}", String::from_utf8_lossy(&answer))),
                _ => answer.push(byte[0]),
            }
        }
        let id = String::from_utf8_lossy(&answer).trim().to_string();
        if id.is_empty() { Err("an empty answer".to_string()) } else { Ok(id) }
    })
    .await
}

/// How a load's clients talk to the target.
#[derive(Debug, Clone, Copy)]
pub enum Exchange {
    /// [`ask_why`]: `GET /` over HTTP/1.0.
    Http,
    /// [`ask_line_why`]: a line over raw TCP.
    Line,
}

impl Exchange {
    pub async fn run(self, target: SocketAddr) -> Result<String, String> {
        match self {
            Exchange::Http => ask_why(target).await,
            Exchange::Line => ask_line_why(target).await,
        }
    }
}

/// Clients that go on until their tasks are aborted: each makes an `exchange` with `target` every `period`
/// and gives `record` when it started and what came back.
pub fn endless_clients(
    exchange: Exchange,
    target: SocketAddr,
    clients: usize,
    period: Duration,
    record: impl Fn(Instant, Result<String, String>) + Clone + Send + 'static,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let record = record.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let started = Instant::now();
                    let answer = exchange.run(target).await;
                    record(started, answer);
                }
            })
        })
        .collect()
}

/// The median and the 99th percentile (nearest rank) of `samples`, sorted in place; `None` without any.
pub fn p50_p99(samples: &mut [Duration]) -> Option<(Duration, Duration)> {
    samples.sort();
    let at = |q: f64| samples.get(((samples.len().checked_sub(1)?) as f64 * q).round() as usize).copied();
    Some((at(0.5)?, at(0.99)?))
}

/// A free port on an address (`::` for a port free on every IPv4 and IPv6 address).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// Fails with a clear message when something already listens on `port` (of any address), which a
/// config that binds every address (`bind :::PORT v4v6`) needs free.
pub fn require_free_port(port: u16) {
    if let Err(e) = std::net::TcpListener::bind(("::", port)) {
        panic!("port {port} is needed free on every address for this test (the proxy binds :::{port} v4v6): {e}");
    }
}

pub struct Haproxy {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
    pub stats: SocketAddr,
}

impl Haproxy {
    /// Runs `haproxy -db -f config`; None when haproxy is missing outside CI (the test skips).
    pub async fn start(config: &str, stats: SocketAddr) -> Option<Haproxy> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("haproxy.cfg"), config).unwrap();
        Haproxy::start_in(dir, stats).await
    }

    /// Runs `haproxy -db -f DIR/haproxy.cfg` on the files `dir` holds (a config and the files it names);
    /// None when haproxy is missing outside CI (the test skips).
    pub async fn start_in(dir: tempfile::TempDir, stats: SocketAddr) -> Option<Haproxy> {
        if !crate::tools::available("haproxy") {
            return None;
        }
        let path = dir.path().join("haproxy.cfg");
        let child = tokio::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Some(Haproxy { child, _dir: dir, stats })
    }

    /// HAProxy's stats as CSV (none when it does not answer). Read by an HTTP client: HAProxy sends them
    /// chunked, and a chunk's size line can fall inside a row.
    async fn stats_csv(&self) -> Option<String> {
        Some(crate::http::text(self.stats, "/stats;csv").await).filter(|csv| !csv.is_empty())
    }

    /// Stops HAProxy and waits until it has exited (and released its ports).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits until `servers` servers report UP (or have no check) in the stats.
    pub async fn wait_servers_up(&mut self, servers: usize) {
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("haproxy exited: {status}");
            }
            if let Some(csv) = self.stats_csv().await {
                let up = csv
                    .lines()
                    .filter(|l| !l.contains(",FRONTEND,") && !l.contains(",BACKEND,") && !l.starts_with('#'))
                    .filter(|l| matches!(l.split(',').nth(17), Some("UP" | "no check")))
                    .count();
                if up >= servers {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("haproxy servers did not come up:\n{:?}", self.stats_csv().await);
    }
}

/// Who answered how many connections, how many failed, and how long it took.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub answers: BTreeMap<String, usize>,
    pub failures: usize,
    pub elapsed: Duration,
    /// Why the first failures failed (at most 10), where the load said.
    pub why: Vec<String>,
}

impl Tally {
    pub fn total(&self) -> usize {
        self.answers.values().sum::<usize>() + self.failures
    }

    /// The share of connections (in percent) answered by `identity`.
    pub fn percent(&self, identity: &str) -> f64 {
        100.0 * *self.answers.get(identity).unwrap_or(&0) as f64 / self.total().max(1) as f64
    }

    /// Counts one request: who answered, or a failure.
    pub fn record(&mut self, answer: Option<String>) {
        match answer {
            Some(id) => *self.answers.entry(id).or_default() += 1,
            None => self.failures += 1,
        }
    }

    /// Adds `other`'s answers and failures to these.
    pub fn add(&mut self, other: Tally) {
        for (answer, n) in other.answers {
            *self.answers.entry(answer).or_default() += n;
        }
        self.failures += other.failures;
        self.why.extend(other.why);
    }

    /// Counts one request, keeping why the first failures failed.
    pub fn record_why(&mut self, answer: Result<String, String>) {
        if let Err(why) = &answer
            && self.why.len() < 10
        {
            self.why.push(why.clone());
        }
        self.record(answer.ok());
    }

    /// The same connections with each answer replaced by `key(answer)` (a pod's answer by its workload, say).
    pub fn regroup(self, key: impl Fn(&str) -> String) -> Tally {
        let mut answers = BTreeMap::new();
        for (answer, n) in self.answers {
            *answers.entry(key(&answer)).or_default() += n;
        }
        Tally { answers, ..self }
    }
}

/// Makes `connections` requests to `target` ([`ask`], a connection each), `concurrency` at a time.
pub async fn drive(target: SocketAddr, connections: usize, concurrency: usize) -> Tally {
    let start = Instant::now();
    let per_worker = connections / concurrency;
    let extra = connections % concurrency;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let n = per_worker + usize::from(w < extra);
            tokio::spawn(async move {
                let mut tally = Tally::default();
                for _ in 0..n {
                    tally.record(ask(target).await);
                }
                tally
            })
        })
        .collect();
    gather(start, workers).await
}

/// Steady load: `clients` clients each make a request to `target` ([`ask`], one connection each) every
/// `period` (or as soon as the previous one ends, if later), until `stop` is set; who answered and how many
/// failed. A fixed rate, so that fast failures do not inflate the count.
pub async fn steady_load(
    target: SocketAddr,
    clients: usize,
    period: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Tally {
    steady_load_of(Exchange::Http, target, clients, period, stop).await
}

/// [`steady_load`] with the clients' `exchange`.
pub async fn steady_load_of(
    exchange: Exchange,
    target: SocketAddr,
    clients: usize,
    period: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Tally {
    use std::sync::atomic::Ordering;
    let start = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    tally.record_why(exchange.run(target).await);
                }
                tally
            })
        })
        .collect();
    gather(start, workers).await
}

/// The clients' tallies added up, with the time since `start`.
async fn gather(start: Instant, workers: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::default();
    for w in workers {
        total.add(w.await.unwrap());
    }
    total.elapsed = start.elapsed();
    total
}

/// A long-lived connection that was opened: who answered its first line, and whether it was cut before the
/// end (closed, reset, or an answer missing for 5 s).
#[derive(Debug, Clone)]
pub struct LongLived {
    pub backend: String,
    pub cut: bool,
}

/// `count` long-lived connections to `target` (workload-sim's built-in server answers every line a raw TCP
/// client sends), each sending a line every `period` and reading the answer until `stop` is set; the ones
/// that opened.
pub async fn long_lived(
    target: SocketAddr,
    count: usize,
    period: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<LongLived> {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncBufReadExt;
    let workers: Vec<_> = (0..count)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let stream = TcpStream::connect(target).await.ok()?;
                let (reader, mut writer) = stream.into_split();
                let mut reader = tokio::io::BufReader::new(reader);
                let mut backend = None;
                while !stop.load(Ordering::Relaxed) {
                    let mut answer = String::new();
                    let exchange = async {
                        writer.write_all(b"ping\n").await?;
                        reader.read_line(&mut answer).await
                    };
                    let answered =
                        matches!(tokio::time::timeout(Duration::from_secs(5), exchange).await, Ok(Ok(n)) if n > 0);
                    if !answered {
                        return backend.map(|backend| LongLived { backend, cut: true });
                    }
                    backend.get_or_insert_with(|| answer.trim().to_string());
                    tokio::time::sleep(period).await;
                }
                backend.map(|backend| LongLived { backend, cut: false })
            })
        })
        .collect();
    let mut opened = vec![];
    for worker in workers {
        opened.extend(worker.await.unwrap());
    }
    opened
}

/// Our proxy's config (rendered for `backends`, listening on `listen`'s port, stats on `stats`'s) and weights
/// map, in a directory of their own, as the proxy agent writes them.
pub fn our_proxy_files(
    owner: &str,
    backends: &[canary_controller::dataplane::haproxy::RouteBackend],
    listen: SocketAddr,
    stats: SocketAddr,
) -> tempfile::TempDir {
    use canary_controller::dataplane::haproxy::{ProxySettings, render, weights_map, weights_path};
    let dir = tempfile::tempdir().unwrap();
    // our config binds every address on its ports (`bind :::PORT v4v6`); the harness connects on loopback
    let settings = ProxySettings {
        port: listen.port(),
        stats_port: stats.port(),
        files_dir: dir.path().to_str().unwrap().into(),
        ..ProxySettings::default()
    };
    std::fs::write(dir.path().join("haproxy.cfg"), render(owner, backends, &settings)).unwrap();
    std::fs::write(weights_path(&settings), weights_map(backends.iter().map(|b| &b.weight))).unwrap();
    dir
}

/// A directory holding only `config` (a config that names no other file).
pub fn config_only(config: String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("haproxy.cfg"), config).unwrap();
    dir
}

/// `connections` connections, `concurrency` at a time, through HAProxy running the files of `dir` (its stats
/// on `stats`), once `up` servers are up.
pub async fn drive_through(
    dir: tempfile::TempDir,
    listen: SocketAddr,
    stats: SocketAddr,
    up: usize,
    connections: usize,
    concurrency: usize,
) -> Tally {
    let mut proxy = Haproxy::start_in(dir, stats).await.expect("haproxy is required: scripts/setup.sh installs it");
    proxy.wait_servers_up(up).await;
    let tally = drive(listen, connections, concurrency).await;
    proxy.stop().await;
    tally
}

/// Answers counted by the backend that gave them (`image=echo:<backend>`, the simulator's built-in server).
pub fn by_backend(tally: Tally) -> Tally {
    tally.regroup(|answer| answer.rsplit_once("image=echo:").map_or(answer, |(_, b)| b).to_string())
}

/// A route's share of `n` connections is its weight, within five standard deviations of a binomial draw (a
/// fixed bound of 2 points over 4,000 connections was 3.2 of them: about one run in 700 failed by chance).
pub fn assert_share(tally: &Tally, route: &str, percent: f64, n: u32) {
    let p = percent / 100.0;
    let bound = (5.0 * 100.0 * (p * (1.0 - p) / n as f64).sqrt()).max(0.5);
    let off = (tally.percent(route) - percent).abs();
    assert!(
        off <= bound,
        "{route}: {:.2} % for {percent} % (bound {bound:.2} points): {tally:?}",
        tally.percent(route)
    );
}
