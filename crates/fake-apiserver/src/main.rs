//! `fake-apiserver` binary: serves the in-memory API on a loopback address and writes a kubeconfig for it.
//! SIGHUP simulates an API server restart (connections and watches dropped, data kept).

use clap::Parser;
use fake_apiserver::FakeApiServer;
use std::net::SocketAddr;
use std::path::PathBuf;

/// An in-memory Kubernetes API server for tests and local trials (a test double: no controllers,
/// scheduler, kubelet or network).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (plain HTTP; keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Write a kubeconfig pointing at this server to this path.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// The /16 Services get their cluster IPs from, as kube-apiserver's flag of that name (`127.96.0.0/16`
    /// puts them on loopback, where workload-sim's service proxy listens).
    #[arg(long, default_value = "10.96.0.0/16", value_parser = parse_network)]
    service_cluster_ip_range: [u8; 2],
}

/// The first two bytes of an IPv4 /16 (`A.B.0.0/16`).
fn parse_network(text: &str) -> Result<[u8; 2], String> {
    let expected = || format!("{text:?}: expected an IPv4 /16 such as 127.96.0.0/16");
    let (address, bits) = text.split_once('/').ok_or_else(expected)?;
    let address: std::net::Ipv4Addr = address.parse().map_err(|_| expected())?;
    if bits != "16" {
        return Err(expected());
    }
    let [a, b, _, _] = address.octets();
    Ok([a, b])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = FakeApiServer::start_on(args.listen).await?;
    server.state().inner.lock().expect("state lock").service_network = args.service_cluster_ip_range;
    if let Some(path) = &args.kubeconfig_out {
        std::fs::write(path, server.kubeconfig())?;
        eprintln!("fake-apiserver: kubeconfig written to {}", path.display());
    }
    eprintln!("fake-apiserver: serving on {}", server.url());
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                server.restart().await?;
                eprintln!("fake-apiserver: restarted (connections and watches dropped, data kept)");
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}
