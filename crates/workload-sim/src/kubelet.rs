//! The kubelet, as the simulator plays it, for the Pods bound to its node: each Pod gets an address and
//! (as root) a network namespace, its volumes (ConfigMap keys as files, kept up to date as the ConfigMap
//! changes; emptyDirs), and a local process per container (see `images`); a volume that cannot be mounted yet
//! (its ConfigMap missing, the API server failing) is retried; readiness probes (`httpGet`, `tcpSocket`) decide Ready, a container that exits is
//! restarted with a growing delay, and the status is written as a real kubelet writes it. Native sidecars
//! (init containers with `restartPolicy: Always`) start first, in order, each once the one before passed
//! its startup probe, and the main containers after them; other init containers are not simulated (the Pod
//! stays Pending, saying so). A Pod marked for deletion is stopped as a real kubelet stops it (`preStop` exec
//! hooks, SIGTERM, SIGKILL when its grace period is over; the main containers first, then the sidecars) and
//! then removed.

use crate::images::{self, Launch};
use crate::network::{NODE_ADDRESS, NODE_ADDRESS_V6, Network, POD_NETWORK, pod_address_v6};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef};
use serde_json::json;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// The kubelet's settings and the Pods it runs.
pub struct Kubelet {
    pub client: kube::Client,
    pub node: String,
    pub network: Arc<Network>,
    /// Where pods' volumes are written.
    pub state_dir: PathBuf,
    pub pod_limit: usize,
    /// Where Pods reach the API server.
    pub api: Option<crate::api_endpoint::ApiEndpoint>,
    /// The binary containers of canary-controller's image run.
    pub controller_binary: PathBuf,
    running: Mutex<HashMap<String, Arc<RunningPod>>>,
    next_address: Mutex<u32>,
}

/// How often a Pod whose volumes cannot be mounted yet is tried again.
const MOUNT_RETRY: Duration = Duration::from_secs(2);

/// A Pod this kubelet started: its address, namespace, containers and helper tasks.
struct RunningPod {
    id: String,
    address: Ipv4Addr,
    netns: String,
    namespace: String,
    name: String,
    containers: Vec<ContainerProcess>,
    /// The ConfigMap volumes: the ConfigMap's name and the directory its keys are written to.
    config_volumes: Vec<(String, PathBuf)>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopping: AtomicBool,
    ready: AtomicBool,
}

struct ContainerProcess {
    name: String,
    /// A native sidecar (an init container that keeps running).
    sidecar: bool,
    /// The process's host pid (in a pid namespace of its own as root), while it runs.
    pid: Mutex<Option<u32>>,
    restarts: AtomicI32,
}

impl RunningPod {
    fn signal(&self, signal: nix::sys::signal::Signal) {
        for pid in self.containers.iter().filter_map(|c| *c.pid.lock().unwrap()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    /// Signals the sidecars' processes (`sidecars`), or the main containers'.
    fn signal_some(&self, sidecars: bool, signal: nix::sys::signal::Signal) {
        for pid in self.containers.iter().filter(|c| c.sidecar == sidecars).filter_map(|c| *c.pid.lock().unwrap()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    /// Whether any of the sidecars (`sidecars`), or of the main containers, runs.
    fn any_alive_of(&self, sidecars: bool) -> bool {
        self.containers.iter().filter(|c| c.sidecar == sidecars).any(|c| c.pid.lock().unwrap().is_some())
    }

    fn all_alive(&self) -> bool {
        self.containers.iter().all(|c| c.pid.lock().unwrap().is_some())
    }
}

impl Kubelet {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        node: String,
        network: Arc<Network>,
        state_dir: PathBuf,
        pod_limit: usize,
        api: Option<crate::api_endpoint::ApiEndpoint>,
        controller_binary: PathBuf,
    ) -> Kubelet {
        Kubelet {
            client,
            node,
            network,
            state_dir,
            pod_limit,
            api,
            controller_binary,
            running: Mutex::default(),
            next_address: Mutex::new(1),
        }
    }

    fn allocate_address(&self) -> Ipv4Addr {
        let used: Vec<Ipv4Addr> = self.running.lock().unwrap().values().map(|p| p.address).collect();
        let mut next = self.next_address.lock().unwrap();
        loop {
            *next = if *next >= 63_500 { 1 } else { *next + 1 };
            let [a, b] = POD_NETWORK;
            let address = Ipv4Addr::new(a, b, (*next / 250) as u8, (*next % 250) as u8 + 1);
            if !used.contains(&address) {
                return address;
            }
        }
    }

    /// Starts, stops or removes `pod` as its state asks.
    pub async fn reconcile(self: &Arc<Self>, pod: Arc<Pod>) -> Result<Action, kube::Error> {
        let spec = pod.spec.clone().unwrap_or_default();
        if spec.node_name.as_deref() != Some(self.node.as_str()) {
            return Ok(Action::await_change());
        }
        let uid = pod.uid().unwrap_or_default();
        let running = self.running.lock().unwrap().get(&uid).cloned();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        if pod.metadata.deletion_timestamp.is_some() {
            match running {
                Some(running) => {
                    if !running.stopping.swap(true, Ordering::SeqCst) {
                        let kubelet = self.clone();
                        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30).max(0) as u64;
                        let pod = pod.clone();
                        tokio::spawn(async move {
                            kubelet.stop(&running, &pod, Duration::from_secs(grace)).await;
                            kubelet.running.lock().unwrap().remove(&uid);
                            // the API server may be failing just now: the Pod must still go
                            while remove(&api, &pod.name_any()).await.is_err() {
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        });
                    }
                }
                None => remove(&api, &pod.name_any()).await?,
            }
            return Ok(Action::await_change());
        }
        if running.is_some() {
            return Ok(Action::await_change());
        }
        if self.running.lock().unwrap().len() >= self.pod_limit {
            let status = json!({"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "PodLimitReached", "message": format!("workload-sim runs at most {} pods (--pod-limit)", self.pod_limit)}]}});
            api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await?;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        self.start(&pod, &api).await
    }

    /// Starts `pod`, or says why it cannot start yet and tries again later (as a real kubelet retries a
    /// volume it cannot mount).
    async fn start(self: &Arc<Self>, pod: &Arc<Pod>, api: &Api<Pod>) -> Result<Action, kube::Error> {
        let uid = pod.uid().unwrap_or_default();
        let id: String = uid.replace('-', "").chars().take(12).collect();
        let address = self.allocate_address();
        let spec = pod.spec.clone().unwrap_or_default();
        let namespace = pod.namespace().unwrap_or_default();
        let pod_dir = self.pod_dir(&id);
        let volumes_dir = pod_dir.join("volumes");
        let prepared = async {
            // `ip` runs a dozen times: off the async workers, which serve probes and forwarders meanwhile
            let network = self.network.clone();
            let pod_id = id.clone();
            let netns = tokio::task::spawn_blocking(move || network.add_pod(&pod_id, address)).await??;
            let volumes = self.write_volumes(pod, &volumes_dir).await?;
            let context = images::PodContext {
                address,
                node_address: NODE_ADDRESS,
                volumes: &volumes,
                api: self.api.as_ref().map(|a| a.address),
                own_binary: &self.controller_binary,
            };
            let launches = pod_containers(&spec)?
                .iter()
                .map(|(c, _)| images::launch(c, pod, &context))
                .collect::<anyhow::Result<Vec<Launch>>>()?;
            anyhow::Ok((netns, launches))
        }
        .await;
        let (netns, launches) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = self.release(&id).await;
                tracing::debug!(pod = %pod.name_any(), error = %e, "pod not started; retrying");
                let status = json!({"status": {"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "False", "reason": "ContainersNotStarted", "message": format!("workload-sim: {e:#}")}]}});
                api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await?;
                return Ok(Action::requeue(MOUNT_RETRY));
            }
        };
        let config_volumes = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| Some((v.config_map.as_ref()?.name.clone(), volumes_dir.join(&v.name))))
            .collect();
        let running = Arc::new(RunningPod {
            id: id.clone(),
            address,
            netns,
            namespace,
            name: pod.name_any(),
            containers: pod_containers(&spec)
                .unwrap_or_default()
                .into_iter()
                .map(|(c, sidecar)| ContainerProcess {
                    name: c.name,
                    sidecar,
                    pid: Mutex::new(None),
                    restarts: AtomicI32::new(0),
                })
                .collect(),
            config_volumes,
            tasks: Mutex::default(),
            stopping: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        });
        self.running.lock().unwrap().insert(uid, running.clone());
        let started = Timestamp::now();
        let containers = pod_containers(&spec).unwrap_or_default();
        let starter =
            tokio::spawn(start_in_order(self.clone(), running.clone(), containers.clone(), launches, pod_dir));
        running.tasks.lock().unwrap().push(starter);
        // the host reaches each declared port at the Pod's mirror on loopback
        let mirror = self.network.mirror.of(address.into()).expect("a Pod address");
        for port in containers.iter().flat_map(|(c, _)| c.ports.iter().flatten()) {
            let port = port.container_port as u16;
            let (on_host, at) = (SocketAddr::from((mirror, port)), SocketAddr::from((address, port)));
            let network = self.network.clone();
            let task = tokio::spawn(async move {
                let forwarded = match crate::network::listen(on_host) {
                    Ok(listener) => crate::network::forward(network, listener, move || Some(at)).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = forwarded {
                    tracing::warn!(address = %on_host, error = %e, "cannot forward to the pod from the host");
                }
            });
            running.tasks.lock().unwrap().push(task);
        }
        // the prober writes the first status too, and writes again until the API server took it
        let prober = tokio::spawn(probe_loop(self.clone(), running.clone(), pod.clone(), started));
        running.tasks.lock().unwrap().push(prober);
        tracing::info!(pod = %pod.name_any(), namespace = %running.namespace, %address, "pod started");
        Ok(Action::await_change())
    }

    /// A token of the Pod's ServiceAccount, bound to the Pod, from a TokenRequest (as a kubelet gets one).
    async fn token(&self, pod: &Pod, expiration: i64, audiences: &[String]) -> anyhow::Result<String> {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        use k8s_openapi::api::core::v1::ServiceAccount;
        let spec = pod.spec.as_ref();
        let account = spec.and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
        let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": audiences,
            "expirationSeconds": expiration.max(600),
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.name_any(), "uid": pod.uid()}}}))?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let answer = accounts
            .create_token_request(&account, &Default::default(), &request)
            .await
            .map_err(|e| anyhow::anyhow!("the token of ServiceAccount {account}: {e}"))?;
        Ok(answer.status.map(|s| s.token).unwrap_or_default())
    }

    /// Writes the Pod's volumes under `dir`: ConfigMaps (every key a file), emptyDirs, and projected volumes
    /// (a ServiceAccount token, ConfigMap keys, the downward API's fields), as the real API server's
    /// ServiceAccount admission adds one to every Pod (`kube-api-access-*`).
    async fn write_volumes(&self, pod: &Pod, dir: &std::path::Path) -> anyhow::Result<HashMap<String, PathBuf>> {
        let namespace = pod.namespace().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let config_maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
        let config_map = |name: String| {
            let config_maps = config_maps.clone();
            async move {
                let found = config_maps.get(&name).await.map_err(|e| anyhow::anyhow!("ConfigMap {name}: {e}"))?;
                anyhow::Ok(found.data.unwrap_or_default())
            }
        };
        let mut volumes = HashMap::new();
        for volume in spec.volumes.iter().flatten() {
            let path = dir.join(&volume.name);
            std::fs::create_dir_all(&path)?;
            set_mode(&path, 0o777)?;
            if let Some(source) = &volume.config_map {
                write_config_map(&path, &config_map(source.name.clone()).await?)?;
                set_mode(&path, 0o755)?;
            }
            if let Some(projected) = &volume.projected {
                let mut files = std::collections::BTreeMap::new();
                for source in projected.sources.iter().flatten() {
                    if let Some(token) = &source.service_account_token {
                        let audiences: Vec<String> = token.audience.iter().cloned().collect();
                        let value = self.token(pod, token.expiration_seconds.unwrap_or(3607), &audiences).await?;
                        files.insert(token.path.clone(), value);
                    }
                    if let Some(source) = &source.config_map {
                        let data = config_map(source.name.clone()).await?;
                        match &source.items {
                            Some(items) => {
                                for item in items {
                                    let value = data.get(&item.key).cloned().unwrap_or_default();
                                    files.insert(item.path.clone(), value);
                                }
                            }
                            None => files.extend(data),
                        }
                    }
                    if let Some(downward) = &source.downward_api {
                        for item in downward.items.iter().flatten() {
                            let Some(field) = &item.field_ref else {
                                anyhow::bail!("volume {}: only fieldRef is supported by workload-sim", volume.name);
                            };
                            files.insert(item.path.clone(), images::pod_field(pod, &field.field_path)?);
                        }
                    }
                }
                write_config_map(&path, &files)?;
                set_mode(&path, 0o755)?;
            }
            volumes.insert(volume.name.clone(), path);
        }
        Ok(volumes)
    }

    async fn write_status(&self, running: &RunningPod, pod: &Pod, started: Timestamp) -> Result<(), kube::Error> {
        let ready = running.ready.load(Ordering::SeqCst);
        let previous = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        let since = |type_: &str, status: &str| {
            previous
                .and_then(|cs| cs.iter().find(|c| c.type_ == type_ && c.status == status))
                .and_then(|c| c.last_transition_time.clone())
                .map(|t| t.0)
                .unwrap_or_else(Timestamp::now)
        };
        let flag = if ready { "True" } else { "False" };
        let spec = pod.spec.clone().unwrap_or_default();
        let statuses = |sidecars: bool| -> Vec<serde_json::Value> {
            pod_containers(&spec)
                .unwrap_or_default()
                .iter()
                .zip(&running.containers)
                .filter(|((_, sidecar), _)| *sidecar == sidecars)
                .map(|((c, _), p)| {
                    let alive = p.pid.lock().unwrap().is_some();
                    json!({"name": c.name, "image": c.image, "imageID": "", "ready": ready && alive, "started": alive,
                        "restartCount": p.restarts.load(Ordering::SeqCst),
                        "state": if alive { json!({"running": {"startedAt": started}}) } else { json!({"waiting": {"reason": "CrashLoopBackOff"}}) }})
                })
                .collect()
        };
        let (containers, sidecars) = (statuses(false), statuses(true));
        let ip = running.address.to_string();
        let status = json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}, {"ip": pod_address_v6(running.address).to_string()}],
            "hostIP": NODE_ADDRESS.to_string(),
            "hostIPs": [{"ip": NODE_ADDRESS.to_string()}, {"ip": NODE_ADDRESS_V6.to_string()}],
            "startTime": started,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": since("PodScheduled", "True")},
                {"type": "Initialized", "status": "True", "lastTransitionTime": since("Initialized", "True")},
                {"type": "ContainersReady", "status": flag, "lastTransitionTime": since("ContainersReady", flag)},
                {"type": "Ready", "status": flag, "lastTransitionTime": since("Ready", flag)},
            ],
            "containerStatuses": containers,
            "initContainerStatuses": sidecars,
        }});
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &running.namespace);
        api.patch_status(&running.name, &PatchParams::default(), &Patch::Merge(&status)).await?;
        Ok(())
    }

    /// Stops a Pod as a real kubelet does: the `preStop` hooks, SIGTERM, SIGKILL at the end of the grace period.
    async fn stop(&self, running: &RunningPod, pod: &Pod, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let containers = pod_containers(&pod.spec.clone().unwrap_or_default()).unwrap_or_default();
        // the main containers first, then the sidecars (in the time that is left)
        for sidecars in [false, true] {
            let pids = running.containers.iter().map(|c| *c.pid.lock().unwrap());
            let these = containers.iter().zip(pids).filter(|((_, sidecar), _)| *sidecar == sidecars);
            stop_containers(running, these.map(|((c, _), pid)| (c, pid)), sidecars, deadline).await;
        }
        self.kill(running);
        tracing::info!(pod = %running.name, namespace = %running.namespace, "pod stopped");
    }

    /// Brings every running Pod's ConfigMap volumes up to date with `config_maps` (a real kubelet does it
    /// within about a minute; the simulator's caller decides how often). A ConfigMap that is gone leaves its
    /// files as they were.
    pub fn refresh_volumes(&self, config_maps: &reflector::Store<ConfigMap>) {
        let pods: Vec<Arc<RunningPod>> = self.running.lock().unwrap().values().cloned().collect();
        for pod in pods.iter().filter(|p| !p.stopping.load(Ordering::SeqCst)) {
            for (name, dir) in &pod.config_volumes {
                let Some(config_map) = config_maps.get(&ObjectRef::new(name).within(&pod.namespace)) else { continue };
                match write_config_map(dir, config_map.data.as_ref().unwrap_or(&Default::default())) {
                    Ok(true) => tracing::info!(pod = %pod.name, config_map = %name, "ConfigMap volume updated"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(pod = %pod.name, config_map = %name, error = %e, "cannot update a ConfigMap volume")
                    }
                }
            }
        }
    }

    /// Stops every Pod at once (the simulator is stopping).
    pub async fn stop_all(&self) {
        let pods: Vec<Arc<RunningPod>> = self.running.lock().unwrap().drain().map(|(_, p)| p).collect();
        for running in pods {
            self.kill(&running);
        }
    }

    /// Stops the Pods that are gone from the API without a graceful deletion (deleted with grace 0).
    pub fn forget_missing(&self, present: &std::collections::HashSet<String>) {
        let gone: Vec<Arc<RunningPod>> = {
            let mut running = self.running.lock().unwrap();
            let gone: Vec<String> = running.keys().filter(|uid| !present.contains(*uid)).cloned().collect();
            gone.iter().filter_map(|uid| running.remove(uid)).filter(|p| !p.stopping.load(Ordering::SeqCst)).collect()
        };
        for running in gone {
            self.kill(&running);
        }
    }

    /// Ends what is left of a Pod at once: its processes (SIGKILL), its helper tasks, its namespace, its files.
    fn kill(&self, running: &RunningPod) {
        running.signal(nix::sys::signal::Signal::SIGKILL);
        for task in running.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        // not awaited: the Pod is over
        drop(self.release(&running.id));
    }

    /// Where a Pod's volumes, token and containers' scratch space are.
    fn pod_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("pods").join(id)
    }

    /// Removes Pod `id`'s namespace and files, on the blocking pool (`ip` and the file system).
    fn release(&self, id: &str) -> tokio::task::JoinHandle<()> {
        let (network, id, dir) = (self.network.clone(), id.to_string(), self.pod_dir(id));
        tokio::task::spawn_blocking(move || {
            network.remove_pod(&id);
            let _ = std::fs::remove_dir_all(dir);
        })
    }
}

/// Writes each key of `data` as a file of `dir` (each replaced at once, by a rename) and removes files of keys
/// that are gone; says whether anything changed.
fn write_config_map(dir: &std::path::Path, data: &std::collections::BTreeMap<String, String>) -> std::io::Result<bool> {
    let mut changed = false;
    for (key, value) in data {
        let file = dir.join(key);
        if std::fs::read(&file).is_ok_and(|on_disk| on_disk == value.as_bytes()) {
            continue;
        }
        let staged = dir.join(format!("..{key}.new"));
        std::fs::write(&staged, value)?;
        set_mode(&staged, 0o644)?;
        std::fs::rename(&staged, &file)?;
        changed = true;
    }
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().to_string();
        if !name.starts_with("..") && !data.contains_key(&name) {
            std::fs::remove_file(dir.join(&name))?;
            changed = true;
        }
    }
    Ok(changed)
}

fn set_mode(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// A Pod's containers as the simulator runs them: its native sidecars (init containers with `restartPolicy:
/// Always`), then its main containers, each saying whether it is a sidecar. Other init containers are not
/// simulated.
fn pod_containers(spec: &k8s_openapi::api::core::v1::PodSpec) -> anyhow::Result<Vec<(Container, bool)>> {
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
async fn start_in_order(
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
async fn supervise(running: Arc<RunningPod>, index: usize, launch: Launch, scratch: PathBuf) {
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
async fn stop_containers<'a>(
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

/// Removes a stopped Pod from the API server (delete with grace 0); gone already is fine.
async fn remove(api: &Api<Pod>, name: &str) -> Result<(), kube::Error> {
    match api.delete(name, &DeleteParams::default().grace_period(0)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Probes the Pod's readiness (every container's probe; a container without one is ready once started) and
/// writes the status at the start and whenever readiness or restarts change, retrying a write that failed.
async fn probe_loop(kubelet: Arc<Kubelet>, running: Arc<RunningPod>, pod: Arc<Pod>, started: Timestamp) {
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
async fn probe_once(network: &Network, address: Ipv4Addr, container: &Container, probe: &Probe) -> bool {
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
