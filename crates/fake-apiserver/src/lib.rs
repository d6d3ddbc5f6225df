//! fake-apiserver: an in-memory Kubernetes API server for tests and local trials. It is a test double:
//! it stores objects and serves the API (discovery, CRUD, watch, patch, server-side apply, CRD schemas with
//! CEL, garbage collection, Tables) but runs no controllers, schedules no pods and has no network.
//!
//! Data flow: `http` parses a request and takes the single lock on [`objects::Inner`], whose write
//! functions admit (`builtins`, `schema`), merge (`patch`, `apply`) and commit to the `store`; the store
//! broadcasts each change to watches; `gc` sweeps after deletions. `admin` and [`FakeApiServer`] expose
//! fault injection and request counters to tests.

pub mod admin;
pub mod apply;
pub mod builtins;
pub mod discovery;
pub mod errors;
pub mod events;
pub mod gc;
pub mod http;
pub mod objects;
pub mod patch;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod schema;
pub mod selectors;
pub mod shape;
pub mod store;
pub mod table;
pub mod tools;

use errors::ApiError;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// Injected faults, consumed by incoming API requests.
#[derive(Default)]
pub struct Faults {
    inner: Mutex<FaultState>,
}

#[derive(Default)]
struct FaultState {
    fail_remaining: u32,
    /// Every request fails until then.
    fail_until: Option<tokio::time::Instant>,
    fail_code: u16,
    retry_after: Option<u32>,
    /// Only requests in this scope fail (all when `None`).
    scope: Option<FaultScope>,
    latency: Duration,
}

/// Which requests an injected failure hits: those with this bearer token and/or on this resource (plural).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultScope {
    pub token: Option<String>,
    pub resource: Option<String>,
}

impl FaultScope {
    fn matches(&self, token: Option<&str>, resource: &str) -> bool {
        self.token.as_deref().is_none_or(|t| Some(t) == token) && self.resource.as_deref().is_none_or(|r| r == resource)
    }
}

impl Faults {
    /// Waits the injected latency, then returns the injected failure if one is due for a request with this
    /// bearer token on this resource.
    async fn take_failure(&self, token: Option<&str>, resource: &str) -> Option<ApiError> {
        let (latency, failure) = {
            let mut f = self.inner.lock().expect("lock");
            let until = f.fail_until.is_some_and(|u| tokio::time::Instant::now() < u);
            let in_scope = f.scope.as_ref().is_none_or(|s| s.matches(token, resource));
            let failure = ((f.fail_remaining > 0 || until) && in_scope).then(|| {
                f.fail_remaining = f.fail_remaining.saturating_sub(1);
                let mut e = match f.fail_code {
                    429 => ApiError::new(429, "TooManyRequests", "the server has received too many requests and has asked us to try again later (injected fault)"),
                    409 => ApiError::new(409, "Conflict", "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again (injected fault)"),
                    code => ApiError::new(code, "InternalError", "an error on the server (\"injected fault\") has prevented the request from succeeding"),
                };
                e.retry_after = f.retry_after;
                e
            });
            (f.latency, failure)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        failure
    }
}

/// State shared by every connection.
pub struct State {
    pub inner: Mutex<objects::Inner>,
    pub faults: Faults,
    counters: Mutex<BTreeMap<String, u64>>,
    /// Bumped to end every open watch.
    pub watch_epoch: watch::Sender<u64>,
    /// Wakes the garbage collector.
    pub gc: Arc<Notify>,
    /// Completed garbage collection passes: a test that expects nothing to be collected waits for a pass
    /// that started after its change (two more completed passes) instead of sleeping.
    gc_passes: std::sync::atomic::AtomicU64,
    /// Bearer tokens, RBAC enforcement and the record of what each user did.
    pub rbac: rbac::Rbac,
}

impl State {
    fn count(&self, verb: &str, resource: &str) {
        *self.counters.lock().expect("lock").entry(format!("{verb} {resource}")).or_default() += 1;
    }

    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.counters.lock().expect("lock").clone()
    }

    /// How many garbage collection passes have completed.
    pub fn gc_passes(&self) -> u64 {
        self.gc_passes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Completes once a whole garbage collection pass has run after this call.
    pub async fn gc_pass_completed(&self) {
        let target = self.gc_passes() + 2;
        while self.gc_passes() < target {
            self.gc.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn reset_counters(&self) {
        self.counters.lock().expect("lock").clear();
    }

    pub fn fail_next(&self, count: u32, code: u16, retry_after: Option<u32>) {
        let mut f = self.faults.inner.lock().expect("lock");
        f.scope = None;
        f.fail_remaining = count;
        f.fail_code = code;
        f.retry_after = retry_after;
    }

    /// Fails every API request for `duration` (an API server that is briefly unavailable or throttling).
    pub fn fail_for(&self, duration: Duration, code: u16, retry_after: Option<u32>) {
        self.fail_for_scoped(duration, code, retry_after, None);
    }

    /// Fails the requests in `scope` for `duration` (for example one client's Lease requests: a leader
    /// cut off from its Lease but not from the rest of the API).
    pub fn fail_for_scoped(&self, duration: Duration, code: u16, retry_after: Option<u32>, scope: Option<FaultScope>) {
        let mut f = self.faults.inner.lock().expect("lock");
        f.scope = scope;
        f.fail_until = Some(tokio::time::Instant::now() + duration);
        f.fail_code = code;
        f.retry_after = retry_after;
    }

    pub fn set_latency(&self, latency: Duration) {
        self.faults.inner.lock().expect("lock").latency = latency;
    }

    pub fn drop_watches(&self) {
        self.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Forgets the change history (like an etcd compaction) and ends all watches: clients that resume
    /// from an old resourceVersion get 410 Gone and must list again.
    pub fn expire_watches(&self) {
        self.inner.lock().expect("lock").store.compact();
        self.drop_watches();
    }
}

/// A running fake API server on a loopback port.
pub struct FakeApiServer {
    state: Arc<State>,
    addr: SocketAddr,
    /// Bumped to drop every connection (restart).
    connections: watch::Sender<u64>,
    accept_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FakeApiServer {
    /// Starts on a random free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("static address")).await
    }

    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (watch_epoch, _) = watch::channel(0);
        let state = Arc::new(State {
            inner: Mutex::new(objects::Inner::default()),
            faults: Faults::default(),
            counters: Mutex::new(BTreeMap::new()),
            watch_epoch,
            gc: Arc::new(Notify::new()),
            gc_passes: Default::default(),
            rbac: rbac::Rbac::default(),
        });
        tokio::spawn(run_gc(Arc::downgrade(&state)));
        let (connections, _) = watch::channel(0);
        let server = FakeApiServer { state, addr, connections, accept_task: Mutex::new(None) };
        server.spawn_accept(listener);
        Ok(server)
    }

    fn spawn_accept(&self, listener: TcpListener) {
        let state = self.state.clone();
        let mut stop = self.connections.subscribe();
        let conns = self.connections.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = state.clone();
                        let mut drop_signal = conns.subscribe();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                                let state = state.clone();
                                async move { Ok::<_, std::convert::Infallible>(serve(state, req).await) }
                            });
                            let conn = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = drop_signal.changed() => {}
                            }
                        });
                    }
                    _ = stop.changed() => return,
                }
            }
        });
        *self.accept_task.lock().expect("lock") = Some(task);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// A kubeconfig that points kubectl or kube-rs at this server.
    pub fn kubeconfig(&self) -> String {
        kubeconfig_for(&self.url())
    }

    /// A kubeconfig that authenticates with a bearer token (registered with `state().rbac.add_token`).
    pub fn kubeconfig_with_token(&self, token: &str) -> String {
        kubeconfig_with_token(&self.url(), token)
    }

    /// A kube-rs client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("valid url"));
        kube::Client::try_from(config).expect("client for a plain http url")
    }

    /// Simulates an API server restart: every connection and watch is dropped, the port refuses
    /// connections for a moment, then serves the same data again.
    pub async fn restart(&self) -> std::io::Result<()> {
        self.connections.send_modify(|e| *e += 1);
        self.state.drop_watches();
        let accept_task = self.accept_task.lock().expect("lock").take();
        if let Some(t) = accept_task {
            let _ = t.await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listener = TcpListener::bind(self.addr).await?;
        self.spawn_accept(listener);
        Ok(())
    }

    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.state.counters()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.connections.send_modify(|e| *e += 1);
        self.state.drop_watches();
    }
}

async fn serve(state: Arc<State>, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<axum::body::Body> {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return axum::response::IntoResponse::into_response(ApiError::bad_request(format!("reading body: {e}")));
        }
    };
    http::handle(state, parts.method, parts.uri, parts.headers, bytes).await
}

async fn run_gc(state: std::sync::Weak<State>) {
    loop {
        let Some(notify) = state.upgrade().map(|s| s.gc.clone()) else { return };
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Some(s) = state.upgrade() else { return };
        for _ in 0..100 {
            let mut inner = s.inner.lock().expect("lock");
            if !inner.store.take_collectable() {
                break;
            }
            gc::sweep(&mut inner);
        }
        s.gc_passes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A kubeconfig for the server at `url`, as the cluster admin (no token).
pub fn kubeconfig_for(url: &str) -> String {
    kubeconfig_with_user(url, "{}")
}

/// A kubeconfig for the server at `url` that authenticates with a bearer token (see [`rbac::Rbac::add_token`]).
pub fn kubeconfig_with_token(url: &str, token: &str) -> String {
    kubeconfig_with_user(url, &format!("{{token: {token:?}}}"))
}

fn kubeconfig_with_user(url: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {user}\n"
    )
}
