//! The one outgoing HTTP call of releases beyond the cluster's API (Prometheus queries, webhook steps):
//! a POST to an `http://` or `https://` URL within one deadline for the whole exchange (connection, answer
//! and body), with a bearer token when one is given, its answer read up to a size cap (more is an error, never
//! memory growth), and only to what the egress policy allows ([`super::egress`]: checked on the URL and on
//! every address a name resolves to). `https://` servers are verified against the system's CA certificates
//! (`SSL_CERT_FILE` and `SSL_CERT_DIR` add others, as with OpenSSL); one client for the process, so
//! connections are reused.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CallError {
    #[error("{0} cannot be reached: {1}")]
    Unreachable(String, String),
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}: {1}")]
    Refused(String, String),
    #[error("{0} answered more than {1} bytes: the answer was not read")]
    TooLarge(String, usize),
}

type HttpsClient = Client<HttpsConnector<HttpConnector<super::egress::Resolver>>, Full<Bytes>>;

static CLIENT: LazyLock<HttpsClient> = LazyLock::new(|| {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_provider_and_native_roots(provider.clone()) {
        Ok(builder) => builder,
        Err(e) => {
            tracing::warn!(error = %e, "no CA certificates found: https:// calls will not be trusted");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let mut http = HttpConnector::new_with_resolver(super::egress::Resolver);
    http.enforce_http(false);
    let connector = builder.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
});

/// An error and its causes, for people (`client error (Connect): invalid peer certificate: UnknownIssuer`).
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text = format!("{text}: {e}");
        cause = e.source();
    }
    text
}

/// The longest any outgoing call may take, whatever its spec says (the schema's maximum too).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// POSTs `body` (of `content_type`) to `url`, with `Authorization: Bearer <token>` when a `token` is given
/// (only where the egress policy lets a token go); the answer's status and body, at most `max_bytes` of it,
/// all within `timeout` (at most [`MAX_TIMEOUT`]).
pub async fn post(
    url: &str,
    content_type: &str,
    body: Vec<u8>,
    token: Option<&str>,
    timeout: Duration,
    max_bytes: usize,
) -> Result<(http::StatusCode, Bytes), CallError> {
    let unreachable = |e: String| CallError::Unreachable(url.to_string(), e);
    let refused = |e: String| CallError::Refused(url.to_string(), e);
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| refused(e.to_string()))?;
    let policy = super::egress::policy();
    policy.check_url(&uri).map_err(refused)?;
    let mut request = http::Request::post(uri.clone()).header(http::header::CONTENT_TYPE, content_type);
    if let Some(token) = token {
        policy.check_token(&uri).map_err(refused)?;
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {}", token.trim()));
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(|e| unreachable(describe(&e)))?;
    let timeout = timeout.min(MAX_TIMEOUT);
    let exchange = async {
        let response = CLIENT.request(request).await.map_err(|e| match permission_denied(&e) {
            Some(why) => refused(why),
            None => unreachable(describe(&e)),
        })?;
        let status = response.status();
        let body = read_capped(response.into_body(), max_bytes)
            .await
            .map_err(|e| e.map_or(CallError::TooLarge(url.to_string(), max_bytes), unreachable))?;
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| CallError::Timeout(url.to_string(), timeout))?
}

/// The egress policy's refusal inside a connection error, if that is what it is.
fn permission_denied(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            return Some(io.to_string());
        }
        cause = e.source();
    }
    None
}

/// Reads a body of at most `max_bytes`: `Err(None)` when it is longer (reading stops there), `Err(Some(why))`
/// when it fails.
pub async fn read_capped<B>(body: B, max_bytes: usize) -> Result<Bytes, Option<String>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match http_body_util::Limited::new(body, max_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(None),
        Err(e) => Err(Some(describe(e.as_ref()))),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Lets the unit tests call servers on loopback (the default policy refuses loopback).
    pub fn allow_loopback() {
        super::super::egress::set(super::super::egress::Policy {
            allow_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            ..Default::default()
        });
    }

    /// A server on loopback answering every request with 200 and a body that never ends.
    pub(crate) async fn endless_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    let _ = stream.read(&mut buffer).await;
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = format!("{:x}\r\n{}\r\n", 16384, "x".repeat(16384));
                    while stream.write_all(chunk.as_bytes()).await.is_ok() {}
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_cap_and_reported() {
        allow_loopback();
        let address = endless_server().await;
        let url = format!("http://{address}/hook");
        let answer = post(&url, "application/json", b"{}".to_vec(), None, Duration::from_secs(20), 64 * 1024).await;
        assert_eq!(answer, Err(CallError::TooLarge(url.clone(), 64 * 1024)));
        assert!(answer.unwrap_err().to_string().contains("more than 65536 bytes"));
    }

    #[tokio::test]
    async fn a_slow_endless_answer_ends_at_the_one_deadline() {
        allow_loopback();
        // a server that sends its headers, then one byte a second forever: the deadline covers the body too
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    let _ = stream.read(&mut buffer).await;
                    let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                    let _ = stream.write_all(head.as_bytes()).await;
                    while stream.write_all(b"1\r\nx\r\n").await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
            }
        });
        let url = format!("http://{address}/");
        let answer = post(&url, "application/json", vec![], None, Duration::from_secs(1), 1 << 20).await;
        assert_eq!(answer, Err(CallError::Timeout(url, Duration::from_secs(1))));
    }

    #[tokio::test]
    async fn a_refused_address_is_not_called_and_names_the_flag() {
        // link-local (cloud metadata) stays refused with loopback allowed: the call fails before any
        // connection (one would wait for the deadline: nothing listens there), saying which flag allows it
        allow_loopback();
        let url = "http://169.254.169.254/latest/meta-data";
        let refused = post(url, "application/json", vec![], Some("t"), Duration::from_secs(30), 1024).await;
        let Err(CallError::Refused(_, why)) = refused else { panic!("called: {refused:?}") };
        assert!(why.contains("--egress-allow 169.254.169.254/32"), "{why}");
    }
}
