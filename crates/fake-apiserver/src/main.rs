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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = FakeApiServer::start_on(args.listen).await?;
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
