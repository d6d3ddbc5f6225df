//! The API server as Pods see it: `https://10.96.0.1:443` (the `kubernetes` Service's cluster IP), what
//! `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` say in every container, served from the node's
//! network namespace. On a real API server each connection is passed on as it is (TLS end to end: the API
//! server's certificate names 10.96.0.1, and Pods trust it through the `kube-root-ca.crt` ConfigMap that
//! kube-controller-manager publishes). On fake-apiserver (plain HTTP) TLS ends here, with a certificate of a
//! CA the simulator makes when it starts (the Pods' `ca.crt`), and each request keeps its bearer token, so
//! fake-apiserver authenticates and authorizes it as the Pod's ServiceAccount.

use crate::network::{Network, SERVICE_NETWORK, reset};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

/// The port Pods reach the API server on.
pub const PORT: u16 = 443;

/// The `kubernetes` Service's cluster IP: the first of the service network.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(SERVICE_NETWORK[0], SERVICE_NETWORK[1], 0, 1);

/// Where Pods reach the API server, and the CA that signed its certificate when the simulator made it.
#[derive(Clone)]
pub struct ApiEndpoint {
    pub address: SocketAddrV4,
    /// PEM, as a Pod's `ca.crt` (fake-apiserver only: on a real one the Pod's projected volume has it).
    pub ca_pem: Option<String>,
}

/// Serves the API to Pods at [`ADDRESS`]:443 in the node's namespace, passing each connection on to the API
/// server at `url` (https: as it is; http: after ending TLS), for as long as the simulator runs.
pub async fn start(network: Arc<Network>, url: &http::Uri) -> anyhow::Result<ApiEndpoint> {
    let port = url.port_u16().unwrap_or(if url.scheme_str() == Some("https") { 443 } else { 80 });
    let host = url.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let upstream: SocketAddr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("the API server's address {url} does not resolve"))?;
    let at = SocketAddrV4::new(ADDRESS, PORT);
    let listener = network.listen_in_node(SocketAddr::V4(at)).await?;
    let (acceptor, ca_pem) = match url.scheme_str() {
        Some("https") => (None, None),
        _ => {
            let (ca_pem, config) = certificates(ADDRESS)?;
            (Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))), Some(ca_pem))
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let server = match tokio::net::TcpStream::connect(upstream).await {
                    Ok(server) => server,
                    Err(e) => {
                        tracing::warn!(error = %e, "the API server does not answer");
                        reset(&client);
                        return;
                    }
                };
                let mut server = server;
                match acceptor {
                    None => {
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                    Some(acceptor) => {
                        let Ok(mut tls) = acceptor.accept(client).await else { return };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                    }
                }
            });
        }
    });
    Ok(ApiEndpoint { address: at, ca_pem })
}

/// A CA (its PEM) and a server configuration with a certificate it signed for `address`.
fn certificates(address: Ipv4Addr) -> anyhow::Result<(String, rustls::ServerConfig)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "workload-sim CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut server = rcgen::CertificateParams::new(vec!["kubernetes.default.svc".to_string()])?;
    server.subject_alt_names.push(rcgen::SanType::IpAddress(address.into()));
    server.distinguished_name.push(rcgen::DnType::CommonName, "kube-apiserver (workload-sim)");
    let cert = server.signed_by(&key, &issuer)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    Ok((ca_cert.pem(), config))
}
