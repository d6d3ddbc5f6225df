//! A Pod's containers as local processes: native sidecars first, in order, each once the one before passed
//! its startup probe, then the main containers; each restarted when it exits (with a growing delay); stopped
//! with their `preStop` hooks, SIGTERM, then SIGKILL.

use super::*;

/// A Pod's containers as the simulator runs them: its native sidecars (init containers with `restartPolicy:
/// Always`), then its main containers, each saying whether it is a sidecar. Other init containers are not
/// simulated.
pub(super) fn pod_containers(spec: &k8s_openapi::api::core::v1::PodSpec) -> anyhow::Result<Vec<(Container, bool)>> {
    let mut containers = vec![];
    for init in spec.init_containers.iter().flatten() {
        if init.restart_policy.as_deref() != Some("Always") {
            anyhow::bail!(
                "init container {}: workload-sim runs only native sidecars (restartPolicy: Always)",
                init.name
            );
        }
        containers.push((init.clone(), true));
    }
    containers.extend(spec.containers.iter().map(|c| (c.clone(), false)));
    Ok(containers)
}

/// Starts a Pod's containers as a kubelet does: each sidecar in turn, the next one once its startup probe
/// passed (at once without one), then every main container.
pub(super) async fn start_in_order(
    kubelet: Arc<Kubelet>,
    running: Arc<RunningPod>,
    containers: Vec<(Container, bool)>,
    launches: Vec<Launch>,
    pod_dir: PathBuf,
) {
    for (index, ((container, sidecar), launch)) in containers.iter().zip(launches).enumerate() {
        let scratch = pod_dir.join("containers").join(index.to_string());
        let task = tokio::spawn(supervise(running.clone(), index, launch, scratch));
        running.tasks.lock().unwrap().push(task);
        let Some(probe) = container.startup_probe.as_ref().filter(|_| *sidecar) else { continue };
        let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).clamp(1, 10) as u64);
        loop {
            if running.stopping.load(Ordering::SeqCst) {
                return;
            }
            if running.containers[index].pid.lock().unwrap().is_some()
                && probe_once(&kubelet.network, running.address, container, probe).await
            {
                break;
            }
            tokio::time::sleep(period).await;
        }
        tracing::debug!(pod = %running.name, container = %container.name, "sidecar started");
    }
}

/// Runs container `index` of a Pod, restarting it when it exits (10 s at most between tries) until the Pod
/// stops.
pub(super) async fn supervise(running: Arc<RunningPod>, index: usize, launch: Launch, scratch: PathBuf) {
    let container = &running.containers[index];
    let netns = running.netns.as_str();
    let mut delay = Duration::from_millis(500);
    while !running.stopping.load(Ordering::SeqCst) {
        let mut command = images::command(&launch, netns, &scratch);
        command.kill_on_drop(true);
        match command.spawn() {
            Ok(mut child) => {
                let pid = match child.id() {
                    Some(launcher) => images::container_pid(launcher).await,
                    None => None,
                };
                *container.pid.lock().unwrap() = pid;
                let status = child.wait().await;
                *container.pid.lock().unwrap() = None;
                if running.stopping.load(Ordering::SeqCst) {
                    return;
                }
                tracing::warn!(pod = %running.name, container = %container.name, status = ?status, "container exited; restarting");
            }
            Err(e) => tracing::warn!(pod = %running.name, error = %e, "cannot start a container"),
        }
        container.restarts.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Stops some of a Pod's containers (with their pids): their `preStop` hooks, then SIGTERM, and waits for
/// them until `deadline`.
pub(super) async fn stop_containers<'a>(
    running: &RunningPod,
    containers: impl Iterator<Item = (&'a Container, Option<u32>)>,
    sidecars: bool,
    deadline: tokio::time::Instant,
) {
    let mut waits = vec![];
    for (container, pid) in containers {
        let command = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.exec.as_ref())
            .and_then(|e| e.command.clone());
        if let (Some(command), Some(pid)) = (command, pid) {
            let child = tokio::process::Command::new("nsenter")
                .args(["--target", &pid.to_string(), "--pid", "--net", "--mount", "--"])
                .args(&command)
                .kill_on_drop(true)
                .spawn();
            if let Ok(mut child) = child {
                waits.push(async move {
                    let _ = tokio::time::timeout_at(deadline, child.wait()).await;
                });
            }
        }
    }
    futures::future::join_all(waits).await;
    running.signal_some(sidecars, nix::sys::signal::Signal::SIGTERM);
    while tokio::time::Instant::now() < deadline && running.any_alive_of(sidecars) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
