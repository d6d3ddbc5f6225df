//! `control-plane --kubeconfig-out PATH` (what `make run` starts): the control plane answers with the admin's
//! kubeconfig once it is written, and SIGTERM stops every component.

use std::time::Duration;

#[tokio::test]
async fn the_control_plane_binary_serves_until_sigterm_and_then_stops_its_components() {
    if e2e_support::control_plane::binaries().is_none() {
        e2e_support::tools::skip("Kubernetes' control plane is not built (make setup)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut plane = tokio::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let written = e2e_support::within(60, || async { kubeconfig.exists() }).await;
    assert!(written, "no kubeconfig within 60 s");
    let cache = dir.path().join("kubectl-cache");
    if let Some(out) = e2e_support::kubectl(&kubeconfig, &cache, &["get", "namespace", "kube-system"], None).await {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let pid = plane.id().unwrap();
    let components = children(pid);
    assert_eq!(components.len(), 4, "etcd, kube-apiserver, kube-controller-manager and kube-scheduler");
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), plane.wait()).await.expect("stopped on SIGTERM");
    assert!(status.unwrap().success());
    let alive = || components.iter().filter(|c| running(**c)).count();
    let gone = e2e_support::within(10, || async { alive() == 0 }).await;
    assert!(gone, "{} components outlived the control plane", alive());
}

/// The processes whose parent is `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let entries = std::fs::read_dir("/proc").unwrap().flatten();
    let pids = entries.filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    pids.filter(|p| parent(*p) == Some(pid)).collect()
}

/// The parent of `pid`, from /proc/<pid>/stat.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(") ").next()?.split(' ').nth(1)?.parse().ok()
}

/// Whether `pid` runs (a zombie, or a pid gone, does not).
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').next()).is_some_and(|state| state != "Z")
}
