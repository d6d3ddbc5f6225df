//! The end-to-end test harness of canary-controller's tests. By default each test gets its own fake-apiserver
//! (in-process, on a loopback port) and a kubeconfig for it; with `E2E_KUBECONFIG=/path/to/kubeconfig` the
//! same tests run against that cluster instead, each in a namespace of its own. The controller is the binary
//! cargo built next to the test (`CANARY_CONTROLLER_BIN` overrides it).

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

pub mod control_plane;
pub mod kanary;
pub mod prometheus;
pub mod release;
pub mod simulator;
pub mod traffic;
use kube::{Client, ResourceExt};
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

pub struct Cluster {
    pub fake: Option<FakeApiServer>,
    pub dir: tempfile::TempDir,
    /// The admin's kubeconfig (kubectl and the test's own client use it).
    pub kubeconfig: PathBuf,
    /// The controller's kubeconfig: on fake-apiserver, the controller's service account, held to the RBAC
    /// rules of config/rbac; on a real cluster, E2E_KUBECONFIG.
    pub controller_kubeconfig: PathBuf,
    pub namespace: String,
    pub client: Client,
}

impl Cluster {
    /// A cluster with a fresh namespace for this test.
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let (fake, kubeconfig, client) = match std::env::var("E2E_KUBECONFIG") {
            Ok(path) => {
                let path = PathBuf::from(path);
                let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
                let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
                (None, path, Client::try_from(config).unwrap())
            }
            Err(_) => {
                let server = FakeApiServer::start().await.unwrap();
                let path = dir.path().join("kubeconfig");
                std::fs::write(&path, server.kubeconfig()).unwrap();
                let client = server.client();
                (Some(server), path, client)
            }
        };
        let namespace = format!("e2e-{}", &uuid_like()[..8]);
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
        let mut controller_kubeconfig = kubeconfig.clone();
        if let Some(server) = &fake {
            controller_kubeconfig = dir.path().join("controller-kubeconfig");
            std::fs::write(&controller_kubeconfig, server.kubeconfig_with_token(CONTROLLER_TOKEN)).unwrap();
            grant_controller_roles(server, &client, &namespace).await;
        }
        Cluster { fake, dir, kubeconfig, controller_kubeconfig, namespace, client }
    }

    /// The user name the controller's requests carry on fake-apiserver.
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

    /// The canary-controller binary, pointed at this cluster, serving metrics on a free loopback port.
    fn controller_command(&self) -> Command {
        let mut cmd = Command::new(controller_binary());
        cmd.env("KUBECONFIG", &self.controller_kubeconfig)
            .env("RUST_LOG", std::env::var("E2E_CONTROLLER_LOG").unwrap_or_else(|_| "info".into()))
            .env("METRICS_ADDRESS", "127.0.0.1:0")
            // the tests' webhook servers and Prometheus listen on loopback, which the egress policy refuses
            // by default
            .env("EGRESS_ALLOW", "127.0.0.0/8,::1");
        // the leader election Lease lives in the test's namespace, so that tests sharing a cluster do not compete
        cmd.env("POD_NAMESPACE", &self.namespace);
        cmd
    }

    /// Runs the canary-controller binary with this cluster's kubeconfig to completion.
    pub async fn controller(&self, args: &[&str]) -> Output {
        self.controller_command().args(args).output().await.unwrap()
    }

    /// Starts `canary-controller run` in the background; it is stopped when the guard drops.
    pub fn spawn_controller(&self) -> Process {
        self.spawn_controller_with("controller", &[])
    }

    /// Starts `canary-controller run ARGS...`, logging to `<name>.log`; it is killed when the guard drops.
    pub fn spawn_controller_with(&self, name: &str, args: &[&str]) -> Process {
        self.spawn(name, args, &self.controller_kubeconfig)
    }

    fn spawn(&self, name: &str, args: &[&str], kubeconfig: &std::path::Path) -> Process {
        let log = self.dir.path().join(format!("{name}.log"));
        let child = self
            .controller_command()
            .env("KUBECONFIG", kubeconfig)
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Process { child, log }
    }

    /// On fake-apiserver: a kubeconfig for the controller's service account with a bearer token of its own
    /// (`token`), so that faults can target one replica's requests.
    pub fn controller_kubeconfig_with_token(&self, token: &str) -> PathBuf {
        let server = self.fake.as_ref().expect("tokens are fake-apiserver's");
        server.state().rbac.add_token(token, &self.controller_user(), &[]);
        let path = self.dir.path().join(format!("kubeconfig-{token}"));
        std::fs::write(&path, server.kubeconfig_with_token(token)).unwrap();
        path
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

const CONTROLLER_TOKEN: &str = "canary-controller-e2e";
const RBAC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/rbac");

/// The controller runs as service account `controller-manager` of the test's namespace.
fn controller_user(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:controller-manager")
}

/// The roles of config/rbac as they are (the ClusterRole, and the leader election Role in the test's
/// namespace, where the controller's Lease is), bound to the controller's service account; enforcement on.
async fn grant_controller_roles(server: &FakeApiServer, client: &Client, namespace: &str) {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let rbac = &server.state().rbac;
    rbac.add_token(CONTROLLER_TOKEN, &controller_user(namespace), &[]);
    let subject = serde_json::json!([{"kind": "ServiceAccount", "name": "controller-manager", "namespace": namespace}]);
    let mut objects = vec![];
    for file in ["role.yaml", "leader_election_role.yaml"] {
        let text = std::fs::read_to_string(format!("{RBAC}/{file}")).unwrap();
        let mut role: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let kind = role["kind"].as_str().unwrap().to_string();
        let name = role["metadata"]["name"].as_str().unwrap().to_string();
        if kind == "Role" {
            role["metadata"]["namespace"] = namespace.into();
        }
        let binding_kind = if kind == "Role" { "RoleBinding" } else { "ClusterRoleBinding" };
        let mut binding = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding_kind,
            "metadata": {"name": format!("{name}-binding")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}, "subjects": subject});
        if kind == "Role" {
            binding["metadata"]["namespace"] = namespace.into();
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
    rbac.set_enforce(true);
}

/// Runs kubectl (see `fake_apiserver::tools::command`); None when it is missing outside CI (the test skips).
pub async fn kubectl(
    kubeconfig: &std::path::Path,
    cache: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Option<Output> {
    use tokio::io::AsyncWriteExt;
    if !fake_apiserver::tools::available("kubectl") {
        return None;
    }
    let mut child = Command::new(fake_apiserver::tools::command("kubectl"))
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
        let text = http_get(&self.metrics_address(), "/metrics").await?;
        let (_, text) = text.split_once("\r\n\r\n")?;
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}

pub use fake_apiserver::tools::http_get;

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
