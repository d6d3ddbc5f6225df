//! Outgoing calls of releases over TLS: a Prometheus query and a webhook call to `https://` servers on
//! loopback whose certificate a test CA signed. Trusted through `SSL_CERT_FILE` (as an operator adds a private
//! CA), the query reads its value with the bearer token; a server whose CA is not trusted is refused with the
//! reason. The server here is the test's own (it answers a fixed Prometheus answer): what is tested is the
//! transport, Prometheus itself is tested in tests/prometheus.rs.

use canary_controller::canary::evidence::http;
use canary_controller::canary::evidence::prometheus::{Outcome, Query, run};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A CA named `ca_name` (its PEM) and a server configuration for 127.0.0.1 with a certificate that CA signed.
fn certificates(ca_name: &str) -> (String, rustls::ServerConfig) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut server = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = server.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    (ca_cert.pem(), config)
}

/// Serves HTTPS on loopback: 200 with a Prometheus answer of one sample (0.25) for a request carrying
/// `Authorization: Bearer s3cret`, 401 otherwise.
async fn serve(config: rustls::ServerConfig) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(client).await else { return };
                let answer = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                    let authorized =
                        request.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer s3cret");
                    let (status, body) = match authorized {
                        true => (
                            200,
                            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.25"]}]}}"#,
                        ),
                        false => (401, "unauthorized"),
                    };
                    let response = hyper::Response::builder().status(status).body(Full::new(Bytes::from(body)));
                    Ok::<_, std::convert::Infallible>(response.unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), answer).await;
            });
        }
    });
    address
}

#[tokio::test]
async fn https_calls_are_verified_against_the_trusted_cas_and_carry_the_token() {
    // the test's servers are on loopback, which the egress policy refuses by default
    canary_controller::canary::evidence::egress::set(canary_controller::canary::evidence::egress::Policy {
        allow_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, trusted_config) = certificates("trusted test CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    // read once, when the process's client is built: set before the first call (this test is alone in its
    // binary, so no other thread reads the environment meanwhile)
    unsafe { std::env::set_var("SSL_CERT_FILE", &ca_file) };
    let trusted = format!("https://{}", serve(trusted_config).await);
    let (_, unknown_config) = certificates("unknown test CA");
    let untrusted = format!("https://{}", serve(unknown_config).await);
    let timeout = Duration::from_secs(10);

    let query = |address, token| Query { address, promql: "sum(up)", token, timeout };
    assert_eq!(run(&query(&trusted, Some("s3cret"))).await, Ok(Outcome::Value(0.25)));
    let without_token = run(&query(&trusted, None)).await;
    assert!(format!("{without_token:?}").contains("401"), "{without_token:?}");

    let refused = run(&query(&untrusted, Some("s3cret"))).await;
    let why = format!("{refused:?}");
    assert!(why.contains("certificate") && why.contains("UnknownIssuer"), "the reason is given: {why}");

    let hook = format!("{trusted}/hook");
    let called = http::post(&hook, "application/json", b"{}".to_vec(), Some("s3cret"), timeout, 1 << 16).await;
    assert_eq!(called.map(|(status, _)| status.as_u16()), Ok(200), "a webhook step over https");
}
