//! The API server as Pods see it: `https://<node address>:443`, what `KUBERNETES_SERVICE_HOST` and
//! `KUBERNETES_SERVICE_PORT` say in every container, served from the node's network namespace. TLS ends here
//! with a certificate of a CA the simulator makes when it starts (the Pods' `ca.crt`); each connection is
//! passed on to fake-apiserver's plain HTTP address, so requests keep their bearer token and fake-apiserver
//! authenticates and authorizes them as the Pod's ServiceAccount.

use crate::network::{Network, reset};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

/// The port Pods reach the API server on.
pub const PORT: u16 = 443;

/// Where Pods reach the API server, and the CA that signed its certificate.
#[derive(Clone)]
pub struct ApiEndpoint {
    pub address: SocketAddrV4,
    /// PEM, as a Pod's `ca.crt`.
    pub ca_pem: String,
}

/// Serves the API to Pods at `address`:443 in the node's namespace, passing each connection on to
/// `upstream` (fake-apiserver, plain HTTP), for as long as the simulator runs.
pub async fn start(network: Arc<Network>, address: Ipv4Addr, upstream: SocketAddr) -> anyhow::Result<ApiEndpoint> {
    let (ca_pem, config) = certificates(address)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let at = SocketAddrV4::new(address, PORT);
    let listener = network.listen_in_node(SocketAddr::V4(at)).await?;
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else { return };
                match tokio::net::TcpStream::connect(upstream).await {
                    Ok(mut server) => {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the API server does not answer");
                        reset(tls.get_ref().0);
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
