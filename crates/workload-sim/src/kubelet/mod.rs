//! The kubelet, as the simulator plays it, for the Pods bound to its node (this module: a Pod's lifecycle,
//! start, status and graceful stop; `volumes`, `processes` and `probes` the rest): each Pod gets an address and
//! (as root) a network namespace, its volumes (ConfigMap keys as files, kept up to date as the ConfigMap
//! changes; emptyDirs), and a local process per container (see `images`); a volume that cannot be mounted yet
//! (its ConfigMap missing, the API server failing) is retried; readiness probes (`httpGet`, `tcpSocket`) decide Ready, a container that exits is
//! restarted with a growing delay, and the status is written as a real kubelet writes it. Native sidecars
//! (init containers with `restartPolicy: Always`) start first, in order, each once the one before passed
//! its startup probe, and the main containers after them; other init containers are not simulated (the Pod
//! stays Pending, saying so). A Pod marked for deletion is stopped as a real kubelet stops it (`preStop` exec
//! hooks, SIGTERM, SIGKILL when its grace period is over; the main containers first, then the sidecars) and
//! then removed.

mod probes;
mod processes;
mod volumes;

use crate::images::{self, Launch};
use crate::network::{NODE_ADDRESS, NODE_ADDRESS_V6, Network, POD_NETWORK, pod_address_v6};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef};
use probes::*;
use processes::*;
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

/// Removes a stopped Pod from the API server (delete with grace 0); gone already is fine.
async fn remove(api: &Api<Pod>, name: &str) -> Result<(), kube::Error> {
    match api.delete(name, &DeleteParams::default().grace_period(0)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
