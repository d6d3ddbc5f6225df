//! The API server as Pods see it: `https://10.96.0.1:443` (the `kubernetes` Service's cluster IP), what
//! `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` say in every container, served from the node's
//! network namespace. Each connection is passed on to the API server as it is (TLS end to end: the API
//! server's certificate names 10.96.0.1, and Pods trust it through the `kube-root-ca.crt` ConfigMap that
//! kube-controller-manager publishes and their projected ServiceAccount volume holds).

use crate::network::{Network, SERVICE_NETWORK, reset};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

/// The port Pods reach the API server on.
pub const PORT: u16 = 443;

/// The `kubernetes` Service's cluster IP: the first of the service network.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(SERVICE_NETWORK[0], SERVICE_NETWORK[1], 0, 1);

/// Where Pods reach the API server.
#[derive(Clone)]
pub struct ApiEndpoint {
    pub address: SocketAddrV4,
}

/// Serves the API to Pods at [`ADDRESS`]:443 in the node's namespace, passing each connection on to the API
/// server at `url`, for as long as the simulator runs.
pub async fn start(network: Arc<Network>, url: &http::Uri) -> anyhow::Result<ApiEndpoint> {
    let port = url.port_u16().unwrap_or(if url.scheme_str() == Some("https") { 443 } else { 80 });
    let host = url.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let upstream: SocketAddr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("the API server's address {url} does not resolve"))?;
    let at = SocketAddrV4::new(ADDRESS, PORT);
    let listener = network.listen_in_node(SocketAddr::V4(at)).await?;
    if url.scheme_str() != Some("https") {
        anyhow::bail!("the API server at {url} is not served over https: Pods could not trust it");
    }
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                match tokio::net::TcpStream::connect(upstream).await {
                    Ok(mut server) => {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the API server does not answer");
                        reset(&client);
                    }
                }
            });
        }
    });
    Ok(ApiEndpoint { address: at })
}
