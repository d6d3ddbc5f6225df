//! A fault-injecting proxy between one client (a controller replica) and a real API server: faults the real
//! server cannot be asked for (500s and 429s for a while, on every resource or one; watches dropped or expired
//! with 410 Gone; added latency) without a fake server. The client speaks plain HTTP to a loopback port with
//! its own bearer token, which the proxy passes on over TLS (kube's client, without credentials of its own).

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

type Error = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, Error>;

/// What a watch in progress is told: ended (as a server's timeout ends it), or expired (410 Gone, then ended).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cut {
    Drop,
    Expire,
}

#[derive(Default)]
struct Failing {
    until: Option<Instant>,
    code: u16,
    retry_after: Option<u64>,
    /// Only requests of this resource (`leases`), or all.
    resource: Option<String>,
}

struct State {
    failing: Mutex<Failing>,
    latency: Mutex<Duration>,
    /// Each send is one cut of every watch open at that moment.
    cuts: watch::Sender<(u64, Cut)>,
    upstream: kube::Client,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The 410 Gone a real API server sends on a watch whose resource version was compacted away.
const EXPIRED: &str = "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\
\"status\":\"Failure\",\"message\":\"too old resource version\",\"reason\":\"Expired\",\"code\":410}}\n";

impl FaultProxy {
    /// Starts a proxy, serving on `listener` (a loopback one), to the API server at `upstream` (its serving
    /// certificate is not verified: the tests' own control plane on loopback).
    pub async fn start(upstream: &str, listener: tokio::net::TcpListener) -> FaultProxy {
        let mut config = kube::Config::new(upstream.parse().expect("the API server's URL"));
        config.accept_invalid_certs = true;
        config.read_timeout = None;
        let upstream = kube::Client::try_from(config).expect("a client of the API server");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            failing: Mutex::default(),
            latency: Mutex::default(),
            cuts: watch::channel((0, Cut::Drop)).0,
            upstream,
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| forward(state.clone(), request));
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        FaultProxy { url, state, task }
    }

    /// A kubeconfig for this proxy with `token` (the client's own credentials, passed on).
    pub fn kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: {}\n\
             users:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: proxy\n  context:\n    cluster: proxy\n    user: user\n\
             current-context: proxy\n",
            self.url
        )
    }

    /// For `duration`, every request (of `resource` only, when given) is answered `code` (with Retry-After:
    /// `retry_after` seconds, when given) instead of being passed on; a zero duration ends the faults.
    pub fn fail_for(&self, duration: Duration, code: u16, retry_after: Option<u64>, resource: Option<&str>) {
        *self.state.failing.lock().unwrap() = Failing {
            until: Some(Instant::now() + duration),
            code,
            retry_after,
            resource: resource.map(str::to_string),
        };
    }

    /// Ends every watch open now, as a server's watch timeout does; the client watches again.
    pub fn drop_watches(&self) {
        self.cut(Cut::Drop);
    }

    /// Ends every watch open now with 410 Gone (its resource version compacted away); the client lists again.
    pub fn expire_watches(&self) {
        self.cut(Cut::Expire);
    }

    /// Every request waits this long before it is passed on.
    pub fn set_latency(&self, latency: Duration) {
        *self.state.latency.lock().unwrap() = latency;
    }

    fn cut(&self, cut: Cut) {
        self.state.cuts.send_modify(|(generation, kind)| {
            *generation += 1;
            *kind = cut;
        });
    }
}

/// The resource a request path names: `/api/v1/namespaces/ns/pods/x` -> `pods`, `/apis/g/v/leases` -> `leases`.
fn resource_of(path: &str) -> Option<&str> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = match *segments.first()? {
        "api" => segments.get(2..)?,
        "apis" => segments.get(3..)?,
        _ => return None,
    };
    match rest {
        ["namespaces", _, resource, ..] => Some(resource),
        [resource, ..] => Some(resource),
        [] => None,
    }
}

fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

async fn forward(state: Arc<State>, request: Request<Incoming>) -> Result<Response<ProxyBody>, Error> {
    let latency = *state.latency.lock().unwrap();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = {
        let failing = state.failing.lock().unwrap();
        let active = failing.until.is_some_and(|until| Instant::now() < until);
        let matches = failing.resource.as_deref().is_none_or(|r| resource_of(request.uri().path()) == Some(r));
        (active && matches).then(|| (failing.code, failing.retry_after))
    };
    if let Some((code, retry_after)) = fault {
        let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "injected by the tests' fault proxy", "code": code});
        let mut answer = Response::builder().status(code).header("content-type", "application/json");
        if let Some(seconds) = retry_after {
            answer = answer.header("retry-after", seconds.to_string());
        }
        return Ok(answer.body(full(status.to_string()))?);
    }
    let watch = request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut upstream = Request::from_parts(parts, kube::client::Body::from(body.to_vec()));
    // the path and query only: kube's client puts the API server's address in front
    let path = upstream.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    *upstream.uri_mut() = path.parse()?;
    upstream.headers_mut().remove(http::header::HOST);
    let answer = state.upstream.send(upstream).await?;
    let (parts, body) = answer.into_parts();
    let frames = body.into_data_stream().map(|chunk| chunk.map(Frame::data).map_err(Error::from));
    if !watch {
        return Ok(Response::from_parts(parts, BodyExt::boxed_unsync(StreamBody::new(frames))));
    }
    let cuts = state.cuts.subscribe();
    let frames = futures::stream::unfold((frames.boxed(), cuts, false), |(mut frames, mut cuts, ended)| async move {
        if ended {
            return None;
        }
        tokio::select! {
            frame = frames.next() => frame.map(|frame| (frame, (frames, cuts, false))),
            Ok(()) = cuts.changed() => {
                let cut = cuts.borrow_and_update().1;
                match cut {
                    Cut::Drop => None,
                    Cut::Expire => {
                        let gone = Frame::data(Bytes::from_static(EXPIRED.as_bytes()));
                        Some((Ok(gone), (frames, cuts, true)))
                    }
                }
            }
        }
    });
    Ok(Response::from_parts(parts, BodyExt::boxed_unsync(StreamBody::new(frames))))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_resource_of_a_path() {
        use super::resource_of;
        assert_eq!(resource_of("/apis/coordination.k8s.io/v1/namespaces/ns/leases/x"), Some("leases"));
        assert_eq!(resource_of("/api/v1/namespaces/ns/pods"), Some("pods"));
        assert_eq!(resource_of("/api/v1/namespaces/ns"), Some("namespaces"));
        assert_eq!(resource_of("/apis/apps/v1/deployments"), Some("deployments"));
        assert_eq!(resource_of("/version"), None);
    }
}
