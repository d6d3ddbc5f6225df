//! workload-sim as the node of a test's cluster: Pods the scheduler binds to it really run (HAProxy, our
//! controller's image, or the built-in server answering `pod=<name> image=<image>`) in network namespaces,
//! on addresses a real API server accepts (10.244.c.d), and the cluster IPs of Services (10.96.c.d) are
//! served by its service proxy. The host reaches them at their mirrors on loopback ([`Cluster::host_address`]):
//! Pod 10.244.c.d at 127.P.c.d, Service 10.96.c.d at 127.P+1.c.d, P a byte each test takes of its own.
//! Needs root (CI runs as root), haproxy and the control plane (`make setup`).

use crate::Cluster;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Child;

/// A running workload-sim; it is told to stop (SIGTERM: every pod stopped, namespaces removed) when dropped.
pub struct Simulator {
    child: Child,
    pub log: PathBuf,
    /// The host reaches Pods at 127.`pod_network`.c.d and Services at 127.`pod_network+1`.c.d.
    pub pod_network: u8,
}

/// The workload-sim binary: `WORKLOAD_SIM_BIN`, else the one cargo builds beside the test's executable
/// (`cargo test --workspace` and `cargo build` build it).
pub fn simulator_binary() -> PathBuf {
    crate::workspace_binary("workload-sim", "WORKLOAD_SIM_BIN")
}

/// Whether this test can run workloads: on the tests' own control plane with workload-sim as its node, as
/// root, with haproxy (and kubectl, which the tests drive). Otherwise the test is skipped, and fails under
/// CI=true (unless the cluster is another one, E2E_KUBECONFIG's: the simulated images do not exist there).
pub fn can_simulate() -> bool {
    use crate::tools;
    if std::env::var_os("E2E_KUBECONFIG").is_some() {
        tools::skip_unsupported("runs workloads with workload-sim as the node (its images are simulated)");
        return false;
    }
    if !tools::available("kubectl") || !tools::available("haproxy") {
        return false;
    }
    if crate::control_plane::binaries().is_none() {
        tools::skip("Kubernetes' control plane is not built (make setup)");
        return false;
    }
    if !std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n")) {
        tools::skip("workload-sim needs root for the pods' network namespaces (CI runs as root)");
        return false;
    }
    true
}

impl Cluster {
    /// A cluster whose Pods run (call [`can_simulate`] first): a control plane of this test's own (a node's
    /// Pods are the whole cluster's, so tests do not share one), with [`Cluster::start_simulator`] as its node.
    pub async fn start_for_pods() -> Cluster {
        Cluster::start_own().await.expect("can_simulate: the tests' own control plane")
    }

    /// Starts workload-sim as this cluster's node: the host reaches its Pods at 127.`pod_network`.c.d and
    /// its Services at 127.`pod_network+1`.c.d ([`Cluster::host_address`]); at most `pod_limit` Pods run.
    /// Each test takes a `pod_network` of its own.
    pub fn start_simulator(&self, pod_network: u8, pod_limit: usize) -> Simulator {
        self.mirror.set(pod_network).expect("one simulator per cluster");
        let log = self.dir.path().join("workload-sim.log");
        let binary = simulator_binary();
        let release = binary.parent().is_some_and(|dir| dir.ends_with("release"));
        assert!(
            binary.exists(),
            "{} is missing: build it with `cargo build {}-p workload-sim` (`cargo test --workspace` builds the debug one)",
            binary.display(),
            if release { "--release " } else { "" }
        );
        let mut command = tokio::process::Command::new(binary);
        command.args(["run", "--host-mirror", &format!("127.{pod_network}.0.0/16"), "--pod-limit"]);
        command.arg(pod_limit.to_string());
        let child = command
            .arg("--state-dir")
            .arg(self.dir.path().join("workload-sim"))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", std::env::var("E2E_SIMULATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .kill_on_drop(false)
            .spawn()
            .expect("workload-sim starts");
        // what runs on the node may start once the node is up: its namespace made, the API server's endpoint
        // for Pods listening (the simulator says so)
        let mut simulator = Simulator { child, log, pod_network };
        let started = std::time::Instant::now();
        while !simulator.log().contains("workload-sim running") {
            if let Ok(Some(status)) = simulator.child.try_wait() {
                panic!("workload-sim exited ({status}) before it ran:\n{}", simulator.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "workload-sim did not start in 60 s:\n{}",
                simulator.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        simulator
    }

    /// Where the host reaches a Pod's or a Service's address (its mirror on loopback); other addresses as
    /// they are.
    pub fn host_address(&self, address: std::net::SocketAddr) -> std::net::SocketAddr {
        let ip = match (self.mirror.get(), address.ip()) {
            (Some(&p), std::net::IpAddr::V4(v4)) => match v4.octets() {
                [10, 244, c, d] => std::net::Ipv4Addr::new(127, p, c, d),
                [10, 96, c, d] => std::net::Ipv4Addr::new(127, p + 1, c, d),
                _ => v4,
            }
            .into(),
            (_, ip) => ip,
        };
        std::net::SocketAddr::new(ip, address.port())
    }
}

impl Simulator {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the simulator (SIGTERM) and checks that it stopped every pod and removed its network namespaces.
    pub async fn stop(mut self) {
        self.terminate();
        let stopped = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        assert!(stopped.is_ok(), "workload-sim did not stop within 60 s of SIGTERM:\n{}", self.log());
        let prefix = format!("wsim{}-", self.pod_network);
        let namespaces = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
        let left: Vec<String> = String::from_utf8_lossy(&namespaces.stdout)
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(String::from)
            .collect();
        assert!(left.is_empty(), "network namespaces left by workload-sim: {left:?}");
    }

    fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-s", "TERM", &pid.to_string()]).status();
        }
    }
}

impl Drop for Simulator {
    /// A test that panicked leaves no pods running: the simulator stops them on SIGTERM by itself.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

impl Cluster {
    /// A backend for the simulator to run: Deployment `name` of `replicas` pods of the built-in server (image
    /// `echo:<name>`, so each answers `pod=<pod> image=echo:<name>`) on port 8080, with `readiness_probe` if
    /// given, and Service `name` selecting them (port `tcp` 80 -> 8080).
    pub async fn create_backend(&self, name: &str, replicas: i32, readiness_probe: Option<serde_json::Value>) {
        use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
        let mut container =
            serde_json::json!({"name": "echo", "image": format!("echo:{name}"), "ports": [{"containerPort": 8080}]});
        if let Some(probe) = readiness_probe {
            container["readinessProbe"] = probe;
        }
        let deployment = serde_json::json!({"metadata": {"name": name}, "spec": {"replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}}});
        let service = serde_json::json!({"metadata": {"name": name}, "spec": {"selector": {"app": name},
            "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}});
        let pp = kube::api::PostParams::default();
        self.api::<Deployment>().create(&pp, &serde_json::from_value(deployment).unwrap()).await.unwrap();
        self.api::<Service>().create(&pp, &serde_json::from_value(service).unwrap()).await.unwrap();
    }

    /// Where the host reaches `port` of Service `name` (its cluster IP's mirror), once it exists (waits up to
    /// 30 s).
    pub async fn service_address(&self, name: &str, port: u16) -> std::net::SocketAddr {
        use k8s_openapi::api::core::v1::Service;
        let services = self.api::<Service>();
        let what = format!("Service {name}");
        crate::eventually(30, &what, || async { services.get_opt(name).await.unwrap().is_some() }).await;
        let ip = services.get(name).await.unwrap().spec.and_then(|s| s.cluster_ip).expect("a cluster IP");
        self.host_address(std::net::SocketAddr::new(ip.parse().expect("an IP address"), port))
    }

    /// The `metadata.generation` of Deployment `name` (0 when it does not exist): a change of its spec raises it.
    pub async fn generation(&self, name: &str) -> i64 {
        let deployment = self.api::<k8s_openapi::api::apps::v1::Deployment>().get_opt(name).await.unwrap();
        deployment.and_then(|d| d.metadata.generation).unwrap_or(0)
    }

    /// Waits up to `secs` seconds until the spec of Deployment `name` changes (its generation passes `generation`).
    pub async fn wait_changed(&self, name: &str, generation: i64, secs: u64) {
        let what = format!("Deployment {name} changed (generation past {generation})");
        crate::eventually(secs, &what, || async { self.generation(name).await > generation }).await;
    }

    /// Waits up to `secs` seconds until Deployment `name` has rolled out: the controller has seen its latest
    /// spec (`observedGeneration`), its newest ReplicaSet (highest
    /// `deployment.kubernetes.io/revision`) has every replica ready and the ready endpoints of `service` are
    /// exactly those pods (none of an older template left), as a client of the Service then sees it.
    pub async fn wait_rolled_out(&self, name: &str, service: &str, secs: u64) {
        let what = format!("Deployment {name} rolled out and alone behind Service {service}");
        crate::eventually(secs, &what, || self.rolled_out(name, service)).await;
        // the simulator's service proxy follows the EndpointSlice by a watch event
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    async fn rolled_out(&self, name: &str, service: &str) -> bool {
        use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
        use k8s_openapi::api::core::v1::Pod;
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        use kube::api::ListParams;
        let Ok(Some(deployment)) = self.api::<Deployment>().get_opt(name).await else { return false };
        let observed = deployment.status.as_ref().and_then(|s| s.observed_generation);
        if observed < deployment.metadata.generation {
            return false;
        }
        let wanted = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) as usize;
        let uid = deployment.metadata.uid.clone();
        let revision = |rs: &ReplicaSet| -> u64 {
            let annotations = rs.metadata.annotations.as_ref();
            annotations.and_then(|a| a.get("deployment.kubernetes.io/revision")?.parse().ok()).unwrap_or(0)
        };
        let Ok(sets) = self.api::<ReplicaSet>().list(&ListParams::default()).await else { return false };
        let newest = sets
            .items
            .iter()
            .filter(|rs| rs.metadata.owner_references.iter().flatten().any(|o| Some(&o.uid) == uid.as_ref()))
            .max_by_key(|rs| revision(rs));
        let Some(hash) = newest.and_then(|rs| rs.metadata.labels.as_ref()?.get("pod-template-hash").cloned()) else {
            return false;
        };
        let Ok(pods) =
            self.api::<Pod>().list(&ListParams::default().labels(&format!("pod-template-hash={hash}"))).await
        else {
            return false;
        };
        let current: Vec<String> = pods.items.iter().filter_map(|p| p.metadata.name.clone()).collect();
        let selector = format!("kubernetes.io/service-name={service}");
        let Ok(slices) = self.api::<EndpointSlice>().list(&ListParams::default().labels(&selector)).await else {
            return false;
        };
        let ready: Vec<String> = slices
            .items
            .iter()
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .filter_map(|e| e.target_ref.as_ref()?.name.clone())
            .collect();
        ready.len() == wanted && ready.iter().all(|pod| current.contains(pod))
    }
}
