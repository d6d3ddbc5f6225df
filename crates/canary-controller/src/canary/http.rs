//! The one outgoing HTTP call of releases beyond the cluster's API (Prometheus queries, webhook steps):
//! a POST to an `http://` or `https://` URL within a timeout, with a bearer token when one is given.
//! `https://` servers are verified against the system's CA certificates (`SSL_CERT_FILE` and `SSL_CERT_DIR`
//! add others, as with OpenSSL); one client for the process, so connections are reused.

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
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

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
    let connector = builder.https_or_http().enable_http1().build();
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

/// POSTs `body` (of `content_type`) to `url`, with `Authorization: Bearer <token>` when a `token` is given;
/// the answer's status and body.
pub async fn post(
    url: &str,
    content_type: &str,
    body: Vec<u8>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(http::StatusCode, Bytes), CallError> {
    let unreachable = |e: String| CallError::Unreachable(url.to_string(), e);
    let mut request = http::Request::post(url).header(http::header::CONTENT_TYPE, content_type);
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {}", token.trim()));
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(|e| unreachable(describe(&e)))?;
    let exchange = async {
        let response = CLIENT.request(request).await.map_err(|e| unreachable(describe(&e)))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| unreachable(describe(&e)))?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| CallError::Timeout(url.to_string(), timeout))?
}
