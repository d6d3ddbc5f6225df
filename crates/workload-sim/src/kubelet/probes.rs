//! Readiness: each container's probe (`httpGet`, `tcpSocket`) at the Pod's address, and the Pod's status
//! written whenever readiness or restarts change.

use super::*;

/// Probes the Pod's readiness (every container's probe; a container without one is ready once started) and
/// writes the status at the start and whenever readiness or restarts change, retrying a write that failed.
pub(super) async fn probe_loop(kubelet: Arc<Kubelet>, running: Arc<RunningPod>, pod: Arc<Pod>, started: Timestamp) {
    let spec = pod.spec.clone().unwrap_or_default();
    let containers: Vec<Container> = pod_containers(&spec).unwrap_or_default().into_iter().map(|(c, _)| c).collect();
    let period =
        containers.iter().filter_map(|c| c.readiness_probe.as_ref()?.period_seconds).min().unwrap_or(1).clamp(1, 10)
            as u64;
    let threshold_fail =
        containers.iter().filter_map(|c| c.readiness_probe.as_ref()?.failure_threshold).max().unwrap_or(3);
    let threshold_ok =
        containers.iter().filter_map(|c| c.readiness_probe.as_ref()?.success_threshold).max().unwrap_or(1);
    let mut failures = 0;
    let mut successes = 0;
    let mut restarts_seen = 0;
    let mut unwritten = true;
    loop {
        let mut all_ok = running.all_alive();
        for container in &containers {
            if let Some(probe) = &container.readiness_probe {
                all_ok = all_ok && probe_once(&kubelet.network, running.address, container, probe).await;
            }
        }
        (failures, successes) = if all_ok { (0, successes + 1) } else { (failures + 1, 0) };
        let was = running.ready.load(Ordering::SeqCst);
        let now = if was { failures < threshold_fail } else { successes >= threshold_ok };
        let restarts: i32 = running.containers.iter().map(|c| c.restarts.load(Ordering::SeqCst)).sum();
        if now != was || restarts != restarts_seen {
            tracing::debug!(pod = %running.name, ready = now, restarts, "readiness changed");
            running.ready.store(now, Ordering::SeqCst);
            restarts_seen = restarts;
            unwritten = true;
        }
        if unwritten && !running.stopping.load(Ordering::SeqCst) {
            let latest =
                Api::<Pod>::namespaced(kubelet.client.clone(), &running.namespace).get_opt(&running.name).await;
            let current = latest.ok().flatten().map(Arc::new).unwrap_or(pod.clone());
            match kubelet.write_status(&running, &current, started).await {
                Ok(()) => unwritten = false,
                Err(e) => tracing::debug!(error = %e, "pod status not written; retrying"),
            }
        }
        let settled = all_ok == now && !unwritten;
        let wait = if settled { Duration::from_secs(period) } else { Duration::from_millis(200) };
        tokio::time::sleep(wait).await;
    }
}

/// One readiness check of `container` at the Pod's address.
pub(super) async fn probe_once(network: &Network, address: Ipv4Addr, container: &Container, probe: &Probe) -> bool {
    let port = |p: &IntOrString| -> Option<u16> {
        match p {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok()),
        }
    };
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let check = async {
        if let Some(http) = &probe.http_get {
            let Some(port) = port(&http.port) else { return false };
            let Ok(mut stream) = network.connect(SocketAddr::from((address, port))).await else { return false };
            let path = http.path.as_deref().unwrap_or("/");
            let request = format!("GET {path} HTTP/1.1\r\nhost: {address}:{port}\r\nconnection: close\r\n\r\n");
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if stream.write_all(request.as_bytes()).await.is_err() {
                return false;
            }
            let mut head = [0u8; 12];
            if stream.read_exact(&mut head).await.is_err() {
                return false;
            }
            let code: u16 = String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0);
            (200..400).contains(&code)
        } else if let Some(tcp) = &probe.tcp_socket {
            let Some(port) = port(&tcp.port) else { return false };
            network.connect(SocketAddr::from((address, port))).await.is_ok()
        } else {
            // exec probes are not simulated: taken as passing
            true
        }
    };
    tokio::time::timeout(timeout, check).await.unwrap_or(false)
}
