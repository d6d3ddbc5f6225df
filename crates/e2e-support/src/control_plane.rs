//! Kubernetes' own control plane as local processes, built from its sources by `make setup`
//! (`scripts/build-control-plane.sh` into `.local/control-plane/current/bin`): etcd, kube-apiserver (RBAC and
//! the usual admission plugins on, a service-account signing key, a static admin token), kube-controller-manager
//! (every controller, service-account credentials) and kube-scheduler, in a throwaway directory, on free loopback
//! ports. Nothing is routed: the Service range is only allocated. [`shared`] is the one control plane of a test
//! binary (tests isolate themselves by namespace); its processes die with the binary (`PR_SET_PDEATHSIG`).
//! The API server keeps an audit log of who did what (`audit.log`), from which the RBAC test proves the
//! controller's roles exact.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The binaries built by `make setup`, when they are there.
pub fn binaries() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.local/control-plane/current/bin");
    ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
        .iter()
        .all(|b| dir.join(b).exists())
        .then_some(dir)
}

/// The Kubernetes version the control plane is built at (control-plane/go.mod).
pub fn version() -> String {
    let go_mod = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../control-plane/go.mod"))
        .expect("control-plane/go.mod");
    go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes ").map(|v| v.trim().to_string()))
        .expect("k8s.io/kubernetes in control-plane/go.mod")
}

/// A running control plane; its processes are killed when it drops.
pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    /// The API server's audit log (JSON lines, level Metadata, without the control plane's own components).
    pub audit_log: PathBuf,
    /// `https://127.0.0.1:<port>`
    pub url: String,
    /// A kubeconfig of the admin (group system:masters).
    pub kubeconfig: PathBuf,
    /// The API server's serving certificate and its CA (self-signed, generated at start), which clients trust.
    pub ca: PathBuf,
    /// How long from starting etcd to kube-apiserver's /readyz answering ok.
    pub started_in: Duration,
    processes: Vec<Child>,
    /// kube-apiserver's program and arguments, to restart it.
    apiserver: (PathBuf, Vec<String>),
}

/// Starts a component logging to `log` (appended to); it dies with the thread that started it.
fn spawn(program: &Path, args: &[String], log: &Path) -> Child {
    let mut command = Command::new(program);
    // SAFETY: prctl is async-signal-safe; the process dies with the thread that started it
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()))
}

const ADMIN_TOKEN: &str = "e2e-admin-token";

/// Who is audited: everyone but the control plane's own components and their controllers' service accounts.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
- level: None\n  users: [system:kube-controller-manager, system:kube-scheduler, system:apiserver]\n\
- level: None\n  userGroups: [system:serviceaccounts:kube-system, system:nodes]\n\
- level: Metadata\n";

/// What a client needs of a running control plane: where its API server is, what to trust, the admin's
/// kubeconfig and the audit log.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub url: String,
    pub ca: PathBuf,
    pub kubeconfig: PathBuf,
    pub audit_log: PathBuf,
}

/// The test binary's control plane, started on first use (in a thread of its own that lives as long as the
/// binary, so that its processes, which die with that thread, stay up); `None` when it was not built.
pub fn shared() -> Option<&'static Endpoint> {
    static SHARED: OnceLock<Option<Endpoint>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("control-plane".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    runtime.block_on(async move {
                        let Some(plane) = ControlPlane::start().await else {
                            tx.send(None).unwrap();
                            return;
                        };
                        tx.send(Some(plane.endpoint())).unwrap();
                        // held until the binary exits; the directory is swept by the next start
                        let _plane = plane;
                        std::future::pending::<()>().await
                    })
                })
                .unwrap();
            rx.recv().expect("the control plane starts (see the panic above)")
        })
        .as_ref()
}

const DIR_PREFIX: &str = "canary-e2e-plane-";

/// Removes the directories of control planes whose test binary is gone (a shared plane's is never dropped).
fn sweep_stale_directories() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else { continue };
        let pid = rest.split('-').next().unwrap_or_default();
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler; returns once the API server is
    /// ready. `None` when the binaries were not built.
    pub async fn start() -> Option<ControlPlane> {
        let bin = binaries()?;
        sweep_stale_directories();
        let prefix = format!("{DIR_PREFIX}{}-", std::process::id());
        let dir = tempfile::Builder::new().prefix(&prefix).tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let path = |name: &str| root.join(name);
        let started = Instant::now();
        let run = |program: &str, args: Vec<String>, log: &str| spawn(&bin.join(program), &args, &path(log));
        let port = || crate::traffic::free_port("127.0.0.1");
        let (client, peer, secure) = (port(), port(), port());
        let etcd = run(
            "etcd",
            vec![
                format!("--data-dir={}", path("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
                "--quota-backend-bytes=1073741824".into(),
                // a throwaway store: no fsync (the tests' writes are many, the disk is shared)
                "--unsafe-no-fsync".into(),
            ],
            "etcd.log",
        );
        // the service-account signing key (openssl, which ca-certificates brings), and the admin's token
        let openssl = |args: &[&str]| {
            let done = std::process::Command::new("openssl").args(args).current_dir(&root).output();
            assert!(done.as_ref().is_ok_and(|o| o.status.success()), "openssl {args:?}: {done:?}");
        };
        openssl(&["genrsa", "-out", "sa.key", "2048"]);
        openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        std::fs::write(path("tokens.csv"), format!("{ADMIN_TOKEN},admin,admin,system:masters\n")).unwrap();
        std::fs::write(path("audit-policy.yaml"), AUDIT_POLICY).unwrap();
        let apiserver_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{client}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={secure}"),
            format!("--cert-dir={}", path("certs").display()),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", path("sa.pub").display()),
            format!("--service-account-signing-key-file={}", path("sa.key").display()),
            format!("--token-auth-file={}", path("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112".into(),
            format!("--audit-policy-file={}", path("audit-policy.yaml").display()),
            format!("--audit-log-path={}", path("audit.log").display()),
        ];
        let apiserver = run("kube-apiserver", apiserver_args.clone(), "kube-apiserver.log");
        let url = format!("https://127.0.0.1:{secure}");
        // the serving certificate kube-apiserver generates, and its CA, are what clients trust
        let ca = path("certs/apiserver.crt");
        let written = crate::within(30, || async { ca.exists() }).await;
        assert!(written, "kube-apiserver wrote no serving certificate within 30 s");
        let kubeconfig = path("admin.kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_text(&url, ADMIN_TOKEN, &ca)).unwrap();
        let audit_log = path("audit.log");
        let processes = vec![etcd, apiserver];
        let apiserver = (bin.join("kube-apiserver"), apiserver_args);
        let mut plane =
            ControlPlane { dir, audit_log, url, kubeconfig, ca, started_in: Duration::ZERO, processes, apiserver };
        let client = plane.client().await;
        // about 3 s on an idle machine; minutes when the machine is loaded (a CI run starting a plane while
        // another test drives traffic waited over 60 s)
        let ready = crate::within(180, || ready(&client)).await;
        assert!(ready, "kube-apiserver not ready within 180 s:\n{}", plane.logs());
        plane.started_in = started.elapsed();
        let kubeconfig = plane.kubeconfig.display().to_string();
        let manager = run(
            "kube-controller-manager",
            vec![
                format!("--kubeconfig={kubeconfig}"),
                "--controllers=*".into(),
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", plane.dir.path().join("sa.key").display()),
                format!("--root-ca-file={}", plane.ca.display()),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
            ],
            "kube-controller-manager.log",
        );
        let scheduler = run(
            "kube-scheduler",
            vec![
                format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
            ],
            "kube-scheduler.log",
        );
        plane.processes.extend([manager, scheduler]);
        Some(plane)
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: self.url.clone(),
            ca: self.ca.clone(),
            kubeconfig: self.kubeconfig.clone(),
            audit_log: self.audit_log.clone(),
        }
    }

    /// Stops kube-apiserver (SIGKILL: no goodbye to its clients' watches) and starts it again on the same
    /// port and store; returns once it is ready.
    pub async fn restart_apiserver(&mut self) {
        let old = &mut self.processes[1];
        old.kill().await.unwrap();
        let (program, args) = &self.apiserver;
        self.processes[1] = spawn(program, args, &self.dir.path().join("kube-apiserver.log"));
        let client = self.client().await;
        let ready = crate::within(60, || ready(&client)).await;
        assert!(ready, "kube-apiserver not ready within 60 s after a restart:\n{}", self.logs());
    }

    /// The components' process ids: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        let names = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"];
        names.into_iter().zip(&self.processes).filter_map(|(name, p)| Some((name, p.id()?))).collect()
    }

    /// A client of the admin.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// The components' logs, for failures.
    pub fn logs(&self) -> String {
        ["etcd.log", "kube-apiserver.log", "kube-controller-manager.log", "kube-scheduler.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
                format!("--- {f}\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Whether the API server answers its `/readyz` with ok.
async fn ready(client: &kube::Client) -> bool {
    let request = http::Request::get("/readyz").body(vec![]).unwrap();
    client.request_text(request).await.is_ok_and(|t| t.trim() == "ok")
}

/// A kubeconfig for `url` with a bearer token, trusting the certificates in `ca`.
pub fn kubeconfig_text(url: &str, token: &str, ca: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {url}\n    certificate-authority: {}\n\
         users:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: user\n    namespace: default\n\
         current-context: local\n",
        ca.display()
    )
}
