//! The end-to-end test harness of canary-controller's tests. By default each test runs on Kubernetes' own
//! control plane (`control_plane`: one per test binary, shared by its tests, each in a namespace of its own;
//! a test that runs pods or edits cluster-wide objects takes one of its own, with workload-sim as its node:
//! `simulator`); with `E2E_KUBECONFIG=/path/to/kubeconfig` the same tests run against that cluster instead
//! (those that need this machine's own control plane are then not run). The controller is the binary cargo
//! built next to the test (`CANARY_CONTROLLER_BIN` overrides it).

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

pub mod control_plane;
pub mod faults;
pub mod fleet;
pub mod http;
pub mod kanary;
pub mod node;
pub mod prometheus;
pub mod release;
pub mod simulator;
pub mod tools;
pub mod traffic;
use kube::{Client, ResourceExt};
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// The admin's kubeconfig (kubectl and the test's own client use it).
    pub kubeconfig: PathBuf,
    /// The controller's kubeconfig: on the control plane, the controller's service account, held to the RBAC
    /// rules of config/rbac; on another cluster, E2E_KUBECONFIG.
    pub controller_kubeconfig: PathBuf,
    pub namespace: String,
    pub client: Client,
    /// On the control plane: the controller's service-account token (for [`Cluster::fault_proxy`]).
    controller_token: Option<String>,
    /// On the control plane: where its API server is.
    endpoint: Option<control_plane::Endpoint>,
    /// The control plane of this test alone ([`Cluster::start_own`]), stopped with the cluster.
    own: Option<control_plane::ControlPlane>,
    /// The workload simulator's host mirror byte, once it started ([`Cluster::start_simulator`]).
    mirror: std::sync::OnceLock<u8>,
}

impl Cluster {
    /// A cluster with a fresh namespace for this test: E2E_KUBECONFIG's, else the test binary's real control
    /// plane ([`control_plane::shared`]), where the controller runs as service account `controller-manager` of
    /// the namespace, bound to the roles of config/rbac.
    pub async fn start() -> Cluster {
        if std::env::var_os("E2E_KUBECONFIG").is_some() {
            return Cluster::start_remote().await;
        }
        let plane = control_plane::shared().unwrap_or_else(|| panic!("{NOT_BUILT}"));
        Cluster::start_on(plane.clone(), None).await
    }

    /// A cluster on a control plane of this test's own, for what would disturb the tests sharing one (editing
    /// or removing the CRDs, running pods); `None` on E2E_KUBECONFIG (the test is then not run).
    pub async fn start_own() -> Option<Cluster> {
        if std::env::var_os("E2E_KUBECONFIG").is_some() {
            tools::skip_unsupported("needs a control plane of its own (it edits cluster-wide objects)");
            return None;
        }
        let plane = control_plane::ControlPlane::start().await.unwrap_or_else(|| panic!("{NOT_BUILT}"));
        Some(Cluster::start_on(plane.endpoint(), Some(plane)).await)
    }

    async fn start_on(endpoint: control_plane::Endpoint, own: Option<control_plane::ControlPlane>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = endpoint.kubeconfig.clone();
        let client = client_of(&kubeconfig).await;
        let namespace = create_namespace(&client).await;
        let token = grant_controller_roles(&client, &namespace).await;
        let controller_kubeconfig = dir.path().join("controller-kubeconfig");
        std::fs::write(&controller_kubeconfig, control_plane::kubeconfig_text(&endpoint.url, &token, &endpoint.ca))
            .unwrap();
        let controller_token = Some(token);
        record_where(if own.is_some() {
            "Kubernetes' control plane (a test's own)"
        } else {
            "Kubernetes' control plane"
        });
        let endpoint = Some(endpoint);
        Cluster {
            dir,
            kubeconfig,
            controller_kubeconfig,
            namespace,
            client,
            controller_token,
            endpoint,
            own,
            mirror: Default::default(),
        }
    }

    /// The cluster of E2E_KUBECONFIG, in a namespace of this test's, the controller with that kubeconfig.
    async fn start_remote() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = PathBuf::from(std::env::var_os("E2E_KUBECONFIG").unwrap());
        let client = client_of(&kubeconfig).await;
        let namespace = create_namespace(&client).await;
        record_where("E2E_KUBECONFIG");
        Cluster {
            dir,
            controller_kubeconfig: kubeconfig.clone(),
            kubeconfig,
            namespace,
            client,
            controller_token: None,
            endpoint: None,
            own: None,
            mirror: Default::default(),
        }
    }

    /// On the control plane: a [`faults::FaultProxy`] in front of the API server, and a kubeconfig of the
    /// controller's service account through it (for one replica whose requests are to fail); `None` elsewhere.
    pub async fn fault_proxy(&self, name: &str) -> Option<(faults::FaultProxy, PathBuf)> {
        let token = self.controller_token.as_ref()?;
        let proxy = faults::FaultProxy::start(&self.endpoint.as_ref()?.url, self.listener_for_controller()).await;
        let path = self.dir.path().join(format!("kubeconfig-{name}"));
        std::fs::write(&path, proxy.kubeconfig(token)).unwrap();
        Some((proxy, path))
    }

    /// The requests the controller's service account made, as (verb, group, resource[/subresource]): from
    /// the control plane's audit log; `None` on E2E_KUBECONFIG.
    pub fn controller_requests(&self) -> Option<std::collections::BTreeSet<(String, String, String)>> {
        self.requests_of(&self.controller_user())
    }

    /// The requests `user` made, as (verb, group, resource[/subresource]), as [`Cluster::controller_requests`].
    pub fn requests_of(&self, user: &str) -> Option<std::collections::BTreeSet<(String, String, String)>> {
        let log = std::fs::read_to_string(&self.endpoint.as_ref()?.audit_log).ok()?;
        let requests = log
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["user"]["username"] == user)
            .filter_map(|event| {
                let object = &event["objectRef"];
                let mut resource = object["resource"].as_str()?.to_string();
                if let Some(sub) = object["subresource"].as_str() {
                    resource = format!("{resource}/{sub}");
                }
                let group = object["apiGroup"].as_str().unwrap_or_default().to_string();
                Some((event["verb"].as_str()?.to_string(), group, resource))
            })
            .collect();
        Some(requests)
    }

    /// What a kubelet would report once `count` pods matching `selector` run and pass their probes (on the
    /// shared control plane, which has no node: tests that run pods take a plane with workload-sim): each pod
    /// Running and Ready. The real ReplicaSet and Deployment controllers then count them.
    pub async fn report_pods_ready(&self, selector: &str, count: usize) {
        use k8s_openapi::api::core::v1::Pod;
        let pods: Api<Pod> = self.api();
        let params = kube::api::ListParams::default().labels(selector);
        eventually(30, &format!("{count} pods of {selector}"), || async {
            pods.list(&params).await.unwrap().items.len() >= count
        })
        .await;
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
        for pod in pods.list(&params).await.unwrap() {
            let status = serde_json::json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}]}});
            pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(status)).await.unwrap();
        }
    }

    /// Restarts the API server of this test's own control plane ([`Cluster::start_own`]).
    pub async fn restart_api_server(&mut self) {
        self.own.as_mut().expect("a control plane of the test's own").restart_apiserver().await;
    }

    /// A kubeconfig of ServiceAccount `account` of the test's namespace (which must exist), with a token from
    /// the TokenRequest API.
    pub async fn service_account_kubeconfig(&self, account: &str) -> PathBuf {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        use k8s_openapi::api::core::v1::ServiceAccount;
        let path = self.dir.path().join(format!("kubeconfig-{account}"));
        let request: TokenRequest =
            serde_json::from_value(serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).unwrap();
        let accounts: Api<ServiceAccount> = self.api();
        let answer = accounts.create_token_request(account, &PostParams::default(), &request).await.unwrap();
        let token = answer.status.expect("a token").token;
        let endpoint = self.endpoint.as_ref().expect("on the control plane");
        std::fs::write(&path, control_plane::kubeconfig_text(&endpoint.url, &token, &endpoint.ca)).unwrap();
        path
    }

    /// Whether this is the tests' own control plane (not E2E_KUBECONFIG's cluster).
    pub fn on_control_plane(&self) -> bool {
        self.endpoint.is_some()
    }

    /// The user name the controller's requests carry (on the control plane).
    pub fn controller_user(&self) -> String {
        controller_user(&self.namespace)
    }

    /// Installs (server-side applies) the operator's CRDs and waits until they are established.
    pub async fn install_crds(&self) {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in canary_controller::api::crds() {
            let name = crd.name_any();
            api.patch(&name, &PatchParams::apply("e2e").force(), &Patch::Apply(crd)).await.unwrap();
            let cond = kube::runtime::conditions::is_crd_established();
            tokio::time::timeout(
                Duration::from_secs(10),
                kube::runtime::wait::await_condition(api.clone(), &name, cond),
            )
            .await
            .unwrap()
            .unwrap();
        }
    }

    /// The canary-controller binary, pointed at this cluster, serving metrics on a free loopback port; run
    /// on the node ([`Cluster::node_namespace`]) when `on_node`.
    fn controller_command(&self, on_node: Option<&str>) -> Command {
        let mut cmd = match on_node {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(controller_binary());
                cmd
            }
            None => Command::new(controller_binary()),
        };
        cmd.env("KUBECONFIG", &self.controller_kubeconfig)
            .env("RUST_LOG", std::env::var("E2E_CONTROLLER_LOG").unwrap_or_else(|_| "info".into()))
            .env("METRICS_ADDRESS", "127.0.0.1:0")
            // the tests' webhook servers and Prometheus listen on loopback, which the egress policy refuses
            // by default
            .env("EGRESS_ALLOW", "127.0.0.0/8,::1");
        // the leader election Lease lives in the test's namespace, and the controller watches that namespace
        // alone, so that tests sharing a cluster neither compete nor see each other's objects
        cmd.env("POD_NAMESPACE", &self.namespace).env("WATCH_NAMESPACE", &self.namespace);
        cmd
    }

    /// Runs the canary-controller binary with this cluster's kubeconfig to completion.
    pub async fn controller(&self, args: &[&str]) -> Output {
        self.controller_command(None).args(args).output().await.unwrap()
    }

    /// Starts `canary-controller run` in the background; it is stopped when the guard drops.
    pub fn spawn_controller(&self) -> Process {
        self.spawn_controller_with("controller", &[])
    }

    /// Starts `canary-controller run ARGS...`, logging to `<name>.log`; it is killed when the guard drops.
    pub fn spawn_controller_with(&self, name: &str, args: &[&str]) -> Process {
        self.spawn(name, args, &self.controller_kubeconfig)
    }

    /// Starts `canary-controller run ARGS` as `name`: on the node when a simulator runs (so that it reaches
    /// Pods as a controller in a cluster does; a kubeconfig of the API server is then pointed at its address
    /// on the node), else on the host.
    fn spawn(&self, name: &str, args: &[&str], kubeconfig: &std::path::Path) -> Process {
        let log = self.dir.path().join(format!("{name}.log"));
        let netns = self.node_namespace();
        let mut kubeconfig = kubeconfig.to_path_buf();
        if let (Some(_), Some(endpoint)) = (&netns, &self.endpoint) {
            let text = std::fs::read_to_string(&kubeconfig).unwrap();
            let on_node = self.dir.path().join(format!("{name}.node-kubeconfig"));
            let server = format!("server: {}\n", endpoint.url);
            std::fs::write(&on_node, text.replace(&server, &format!("server: {}\n", node::API_URL))).unwrap();
            kubeconfig = on_node;
        }
        let child = self
            .controller_command(netns.as_deref())
            .env("KUBECONFIG", kubeconfig)
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Process { child, log, netns }
    }

    /// A listener on a free loopback port where this cluster's controller reaches it (a webhook receiver, a
    /// stand-in for Prometheus): in the node's namespace when the controller runs there, else on the host.
    pub fn listener_for_controller(&self) -> tokio::net::TcpListener {
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        match self.node_namespace() {
            Some(ns) => node::listen_in(&ns, any).unwrap(),
            None => std::net::TcpListener::bind(any)
                .and_then(|l| l.set_nonblocking(true).map(|_| l))
                .and_then(tokio::net::TcpListener::from_std)
                .unwrap(),
        }
    }

    /// The simulator's node's network namespace, once a simulator runs on this cluster's control plane.
    pub fn node_namespace(&self) -> Option<String> {
        let mirror = self.mirror.get()?;
        self.endpoint.as_ref().map(|_| format!("wsim{mirror}-node"))
    }

    /// Starts a replica like [`Cluster::spawn_replica`] that uses `kubeconfig`.
    pub fn spawn_replica_with(&self, identity: &str, lease_seconds: u64, kubeconfig: &std::path::Path) -> Process {
        let lease = lease_seconds.to_string();
        self.spawn(identity, &["--lease-duration", &lease, "--leader-election-identity", identity], kubeconfig)
    }

    /// Starts a replica that competes for the leader Lease as `identity`, with a short lease.
    pub fn spawn_replica(&self, identity: &str, lease_seconds: u64) -> Process {
        self.spawn_replica_with(identity, lease_seconds, &self.controller_kubeconfig)
    }

    /// Replica "a", once it leads, and replica "b", once it stands by.
    pub async fn leader_and_standby(&self, lease_seconds: u64) -> (Process, Process) {
        let mut a = self.spawn_replica("a", lease_seconds);
        a.wait_for_log("became the leader").await;
        let mut b = self.spawn_replica("b", lease_seconds);
        b.wait_for_log("waiting to become the leader").await;
        (a, b)
    }

    /// A namespaced API in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Option<Output> {
        kubectl(&self.kubeconfig, &self.dir.path().join("kubectl-cache"), args, stdin).await
    }

    pub async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client.clone()).delete(&self.namespace, &DeleteParams::default()).await;
    }
}

/// What a test says when Kubernetes' control plane is not built.
const NOT_BUILT: &str =
    "Kubernetes' control plane is not built: run `make setup` (scripts/build-control-plane.sh builds it once)";
const RBAC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/rbac");

/// The controller runs as service account `controller-manager` of the test's namespace.
fn controller_user(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:controller-manager")
}

/// The roles of config/rbac as they are (the ClusterRole, and the leader election Role in the test's
/// namespace, where the controller's Lease is), bound to the controller's service account.
async fn apply_controller_roles(client: &Client, namespace: &str) {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let subject = serde_json::json!([{"kind": "ServiceAccount", "name": "controller-manager", "namespace": namespace}]);
    let mut objects = vec![];
    for file in ["role.yaml", "leader_election_role.yaml"] {
        let text = std::fs::read_to_string(format!("{RBAC}/{file}")).unwrap();
        let mut role: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let kind = role["kind"].as_str().unwrap().to_string();
        let name = role["metadata"]["name"].as_str().unwrap().to_string();
        let mut binding = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1",
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}, "subjects": subject});
        if kind == "Role" {
            role["metadata"]["namespace"] = namespace.into();
            binding["kind"] = "RoleBinding".into();
            binding["metadata"] = serde_json::json!({"name": format!("{name}-binding"), "namespace": namespace});
        } else {
            // one ClusterRoleBinding per test namespace (tests share a control plane)
            binding["kind"] = "ClusterRoleBinding".into();
            binding["metadata"] = serde_json::json!({"name": format!("{name}-{namespace}")});
        }
        objects.push(role);
        objects.push(binding);
    }
    for object in objects {
        let kind = object["kind"].as_str().unwrap();
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind));
        let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        api.patch(&name, &PatchParams::apply("e2e").force(), &Patch::Apply(object)).await.unwrap();
    }
}

/// On a real API server: the controller's ServiceAccount, its roles, and a token for it (TokenRequest).
async fn grant_controller_roles(client: &Client, namespace: &str) -> String {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "controller-manager"}})).unwrap();
    accounts.create(&PostParams::default(), &account).await.unwrap();
    apply_controller_roles(client, namespace).await;
    let request: TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 86400}})).unwrap();
    let answer = accounts.create_token_request("controller-manager", &PostParams::default(), &request).await.unwrap();
    answer.status.expect("a token").token
}

/// Records in `$E2E_WHERE_LOG` which API server the running test started a cluster on (`make test` sums them).
fn record_where(api_server: &str) {
    use std::io::Write;
    let Some(path) = std::env::var_os("E2E_WHERE_LOG") else { return };
    let thread = std::thread::current();
    let test = format!("{}::{}", std::env::args().next().unwrap_or_default(), thread.name().unwrap_or("main"));
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{api_server}\t{test}");
    }
}

async fn client_of(kubeconfig: &std::path::Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

async fn create_namespace(client: &Client) -> String {
    let namespace = format!("e2e-{}", &uuid_like()[..8]);
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    namespace
}

/// Runs kubectl (see `tools::command`); None when it is missing outside CI (the test skips).
pub async fn kubectl(
    kubeconfig: &std::path::Path,
    cache: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Option<Output> {
    use tokio::io::AsyncWriteExt;
    if !tools::available("kubectl") {
        return None;
    }
    let mut child = Command::new(tools::command("kubectl"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECACHEDIR", cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).await.unwrap();
    }
    drop(child.stdin.take());
    Some(child.wait_with_output().await.unwrap())
}

pub struct Process {
    pub child: Child,
    pub log: PathBuf,
    /// The network namespace it runs in (the simulator's node), if not the host's.
    pub netns: Option<String>,
}

impl Process {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address `run` serves /metrics, /healthz and /readyz on, from its log.
    pub fn metrics_address(&self) -> String {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("serving /metrics")).expect("the metrics address is logged");
        line.rsplit(' ').next().unwrap().trim().to_string()
    }

    /// The timestamp (RFC 3339, UTC, as the text log writes it) of the first log line containing `needle`.
    pub fn log_time(&self, needle: &str) -> Option<String> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains(needle))?;
        Some(line.split_whitespace().next()?.to_string())
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&mut self, needle: &str) {
        for _ in 0..200 {
            if self.log().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("canary-controller exited ({status}) before logging {needle:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("canary-controller did not log {needle:?}:\n{}", self.log());
    }

    /// Sends SIGTERM and returns the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        self.exited(10).await.unwrap_or_else(|| panic!("canary-controller did not stop on SIGTERM:\n{}", self.log()))
    }

    /// Waits up to `secs` seconds for the process to exit.
    pub async fn exited(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        for _ in 0..secs * 20 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Fetches `/metrics` and returns the value of the sample whose line starts with `series` (name and labels).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let address = self.metrics_address();
        let text = match &self.netns {
            Some(ns) => node::http_get_in(ns, address.parse().ok()?, "/metrics").await?,
            None => http_get(&address, "/metrics").await?,
        };
        let (_, text) = text.split_once("\r\n\r\n")?;
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}

pub use tools::http_get;

/// The canary-controller binary: `CANARY_CONTROLLER_BIN`, else the one cargo builds for integration tests.
pub fn controller_binary() -> PathBuf {
    workspace_binary("canary-controller", "CANARY_CONTROLLER_BIN")
}

/// A binary of the workspace: the path in `$override_var`, else `name` in the directory above the test's own
/// executable (`target/<profile>/deps/<test>`), where cargo builds the workspace's binaries.
pub fn workspace_binary(name: &str, override_var: &str) -> PathBuf {
    if let Ok(path) = std::env::var(override_var) {
        return path.into();
    }
    let test = std::env::current_exe().expect("the test's executable");
    let profile_dir = test.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    format!("{:016x}", h.finish())
}

/// Polls `check` every 100 ms for up to `secs` seconds; whether it held.
pub async fn within<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 10 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Polls `check` every 100 ms for up to `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 10 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs}s waiting for: {what}");
}
