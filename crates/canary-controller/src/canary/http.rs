//! The one outgoing HTTP call of releases beyond the cluster's API (Prometheus queries, webhook steps):
//! a POST to an `http://` URL within a timeout.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CallError {
    #[error("{0} cannot be reached: {1}")]
    Unreachable(String, String),
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
}

/// POSTs `body` (of `content_type`) to `url`; the answer's status and body.
pub async fn post(
    url: &str,
    content_type: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(http::StatusCode, Bytes), CallError> {
    let unreachable = |e: String| CallError::Unreachable(url.to_string(), e);
    let request = http::Request::post(url).header(http::header::CONTENT_TYPE, content_type);
    let request = request.body(Full::new(Bytes::from(body))).map_err(|e| unreachable(e.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let exchange = async {
        let response = client.request(request).await.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| CallError::Timeout(url.to_string(), timeout))?
}
