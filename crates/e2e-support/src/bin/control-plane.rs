//! `control-plane --kubeconfig-out PATH`: starts Kubernetes' control plane built by `make setup` (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler; see `e2e_support::control_plane`) in a throwaway
//! directory, writes the admin's kubeconfig to PATH once the API server is ready, and runs until SIGTERM or
//! Ctrl-C, when it stops them all. `make run` uses it.

use std::path::PathBuf;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.as_slice() {
        [flag, path] if flag == "--kubeconfig-out" => PathBuf::from(path),
        _ => {
            eprintln!("usage: control-plane --kubeconfig-out PATH");
            return std::process::ExitCode::from(2);
        }
    };
    let Some(plane) = e2e_support::control_plane::ControlPlane::start().await else {
        eprintln!("control-plane: not built: run `make setup` (scripts/build-control-plane.sh)");
        return std::process::ExitCode::FAILURE;
    };
    if let Err(e) = std::fs::copy(&plane.kubeconfig, &out) {
        eprintln!("control-plane: cannot write {}: {e}", out.display());
        return std::process::ExitCode::FAILURE;
    }
    eprintln!(
        "control-plane: Kubernetes {} at {} ready in {:.1?} (logs in {})",
        e2e_support::control_plane::version(),
        plane.url,
        plane.started_in,
        plane.dir.path().display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(plane);
    std::process::ExitCode::SUCCESS
}
