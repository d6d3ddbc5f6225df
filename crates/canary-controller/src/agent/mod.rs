//! The proxy agent (`canary-controller proxy-agent`): runs beside HAProxy in a Kanary's proxy pod and keeps
//! the running HAProxy serving what the Kanary's ConfigMap asks for, without restarting it.
//!
//! It watches that one ConfigMap (a watch selected by name, which a Role with `resourceNames` can grant) and
//! reads its `dataplane.json`. For each change (the latest one only, when several come at once) it lays
//! the data plane out in HAProxy's server slots ([`Layout`]), writes the files HAProxy loads (config, weights
//! map, and the layout itself, so a restarted agent or HAProxy starts from what runs), then brings the
//! running HAProxy to them through its master CLI:
//! - servers added, removed or replaced, and weights: Runtime API commands and a map transaction, no reload;
//! - anything else (routes, settings, more servers than slots): one seamless reload; a configuration
//!   HAProxy refuses leaves the old worker serving, the last good files are put back, and it is reported.
//!
//! After every change, and every few seconds, it reads back what the worker serves and corrects any drift
//! (reloading when commands did not take). Before HAProxy runs it only writes the files (as a native sidecar
//! it starts first, so HAProxy starts on them). `/readyz` answers 200 once HAProxy was seen serving the
//! desired data plane; `/metrics` counts runtime updates, reloads and failures. With `--kanary`, it reports
//! the revision HAProxy serves (and one HAProxy refused) in its Kanary's status, under its pod's name
//! (`status.proxies.<pod>`, a server-side apply with a field manager of its own), and takes the report back
//! when it stops.

pub mod master_cli;
pub mod requests;

use crate::dataplane::haproxy::{CONFIG_FILE, WEIGHTS_FILE, backend_name, slot_name, weights_path};
use crate::dataplane::{
    DATAPLANE_KEY, DataPlane, Layout, ServerCommands, server_commands, slot_commands, weights_changed,
};
use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use master_cli::{MasterCli, ServerState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// The layout HAProxy's files were last written for.
const LAYOUT_FILE: &str = "layout.json";
/// The layout HAProxy was last seen serving.
const GOOD_LAYOUT_FILE: &str = "layout-good.json";
/// How often the agent checks that HAProxy still serves what it should.
const RESYNC: Duration = Duration::from_secs(5);
/// How often it looks for HAProxy until it runs (HAProxy starts after the agent).
const RESYNC_UNTIL_READY: Duration = Duration::from_millis(500);

pub struct AgentOptions {
    pub namespace: String,
    /// Where to report what HAProxy serves (none: nowhere).
    pub report_to: Option<ReportTo>,
    pub config_map: String,
    /// Where HAProxy's files are (shared with the HAProxy container).
    pub dir: PathBuf,
    /// HAProxy's master CLI socket.
    pub master_socket: PathBuf,
    pub metrics_address: std::net::SocketAddr,
}

/// The Kanary whose status the agent reports to, and the pod it reports for.
#[derive(Debug, Clone)]
pub struct ReportTo {
    pub kanary: String,
    /// The Kanary's `group/version`.
    pub api_version: String,
    pub pod: String,
}

/// What the agent last reported: the revision HAProxy serves, and the one it refused.
#[derive(Debug, Clone, PartialEq)]
struct Served {
    revision: String,
    refused: Option<String>,
}

/// Writes the agent's reports into its Kanary's status.
struct Reporter {
    api: Api<kube::core::DynamicObject>,
    to: ReportTo,
    /// What the status holds from this agent.
    reported: Option<Served>,
}

impl Reporter {
    fn new(client: Client, namespace: &str, to: ReportTo) -> Reporter {
        let (group, version) = to.api_version.split_once('/').unwrap_or(("", &to.api_version));
        let resource = crate::api::kanary::api_resource(group, version);
        Reporter { api: Api::namespaced_with(client, namespace, &resource), to, reported: None }
    }

    fn field_manager(&self) -> String {
        format!("proxy-agent-{}", self.to.pod)
    }

    /// Reports `served` unless it is what the status already holds from this agent.
    async fn report(&mut self, served: &Served) -> anyhow::Result<()> {
        if self.reported.as_ref() == Some(served) {
            return Ok(());
        }
        let report = crate::api::kanary::ProxyReport {
            revision: served.revision.clone(),
            refused_revision: served.refused.clone(),
            reported_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
        };
        self.apply(serde_json::json!({"proxies": {&self.to.pod: report}})).await?;
        self.reported = Some(served.clone());
        Ok(())
    }

    /// Takes the report back (the pod is stopping): its own key removed.
    async fn withdraw(&mut self) -> anyhow::Result<()> {
        let patch = kube::api::Patch::Merge(serde_json::json!({"status": {"proxies": {&self.to.pod: null}}}));
        self.patch(&kube::api::PatchParams { field_manager: Some(self.field_manager()), ..Default::default() }, patch)
            .await?;
        self.reported = None;
        Ok(())
    }

    async fn apply(&self, status: serde_json::Value) -> anyhow::Result<()> {
        let body = serde_json::json!({"apiVersion": self.to.api_version, "kind": crate::api::kanary::KIND,
            "metadata": {"name": self.to.kanary}, "status": status});
        self.patch(&kube::api::PatchParams::apply(&self.field_manager()).force(), kube::api::Patch::Apply(body)).await
    }

    async fn patch(
        &self,
        params: &kube::api::PatchParams,
        patch: kube::api::Patch<serde_json::Value>,
    ) -> anyhow::Result<()> {
        let write = self.api.patch_status(&self.to.kanary, params, &patch);
        tokio::time::timeout(Duration::from_secs(10), write).await.context("timed out")??;
        Ok(())
    }
}

/// How a change reached HAProxy: the metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApplyLabels {
    /// `runtime` (Runtime API, no reload), `reload`, `files` (HAProxy not running: files only).
    how: String,
}

#[derive(Default)]
struct Metrics {
    applied: Family<ApplyLabels, Counter>,
    reload_failures: Counter,
    sync_errors: Counter,
    invalid_data_planes: Counter,
    in_sync: Gauge,
}

impl Metrics {
    fn register(&self, registry: &mut Registry) {
        registry.register("kanary_agent_changes_applied", "Changes brought to HAProxy, by how", self.applied.clone());
        registry.register(
            "kanary_agent_reload_failures",
            "Reloads HAProxy refused (the previous configuration kept serving)",
            self.reload_failures.clone(),
        );
        registry.register("kanary_agent_sync_errors", "Syncs that could not complete", self.sync_errors.clone());
        registry.register(
            "kanary_agent_invalid_data_planes",
            "ConfigMap versions whose dataplane.json could not be read (ignored)",
            self.invalid_data_planes.clone(),
        );
        registry.register(
            "kanary_agent_in_sync",
            "1 when HAProxy was last seen serving the desired data plane",
            self.in_sync.clone(),
        );
    }

    fn count(&self, how: &str) {
        self.applied.get_or_create(&ApplyLabels { how: how.into() }).inc();
    }
}

/// The agent's state: what HAProxy's files hold.
struct Agent {
    dir: PathBuf,
    cli: MasterCli,
    /// The layout of the files on disk (and, once synced, of the running HAProxy).
    written: Option<Layout>,
    /// The last data plane HAProxy refused: not tried again until it changes.
    refused: Option<DataPlane>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    started: Arc<AtomicBool>,
    /// What HAProxy serves, once known.
    served: Option<Served>,
}

/// Runs the agent until SIGTERM.
pub async fn run(options: AgentOptions) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("connecting to the Kubernetes API")?;
    let mut reporter = options.report_to.clone().map(|to| Reporter::new(client.clone(), &options.namespace, to));
    let api: Api<ConfigMap> = Api::namespaced(client, &options.namespace);
    std::fs::create_dir_all(&options.dir).with_context(|| format!("creating {}", options.dir.display()))?;

    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let requests = requests::RequestMetrics::new(&mut registry);
    // HAProxy's request log (HTTP mode), on the pod's loopback only
    let request_log = std::net::SocketAddr::from(([127, 0, 0, 1], crate::dataplane::haproxy::REQUEST_LOG_PORT));
    match tokio::net::TcpListener::bind(request_log).await {
        Ok(listener) => requests::serve(listener, requests.clone()),
        Err(e) => tracing::warn!("cannot take HAProxy's request log on {request_log}: {e}; no request metrics"),
    }
    let ready = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(options.metrics_address).await?;
    tracing::info!("serving /metrics, /requests, /healthz, /readyz and /startupz on {}", listener.local_addr()?);
    tokio::spawn(serve(listener, registry, requests, ready.clone(), started.clone()));

    let (desired_tx, mut desired) = watch::channel::<Option<DataPlane>>(None);
    let selector = format!("metadata.name={}", options.config_map);
    let watch_metrics = metrics.clone();
    tokio::spawn(async move {
        // with a backoff: an API server that cannot be reached is tried again later, not in a busy loop
        let mut events = watcher(api, watcher::Config::default().fields(&selector)).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => match data_plane(&cm) {
                    Ok(plane) => {
                        desired_tx.send_replace(Some(plane));
                    }
                    Err(e) => {
                        watch_metrics.invalid_data_planes.inc();
                        tracing::warn!("ignoring this version of the ConfigMap, HAProxy keeps its configuration: {e}");
                    }
                },
                // a deleted ConfigMap changes nothing: the proxy keeps serving until it is replaced
                Ok(_) => {}
                Err(e) => tracing::warn!("watching the ConfigMap: {e}"),
            }
        }
    });

    let mut agent = Agent {
        written: read_layout(&options.dir, LAYOUT_FILE),
        refused: None,
        dir: options.dir.clone(),
        cli: MasterCli::new(&options.master_socket),
        metrics,
        ready,
        started,
        served: None,
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let plane = desired.borrow_and_update().clone();
        if let Some(plane) = plane
            && let Err(e) = agent.sync(plane).await
        {
            agent.metrics.sync_errors.inc();
            agent.metrics.in_sync.set(0);
            tracing::warn!("sync failed, retrying: {e:#}");
        }
        if let (Some(reporter), Some(served)) = (reporter.as_mut(), &agent.served)
            && let Err(e) = reporter.report(served).await
        {
            tracing::warn!("reporting the served revision in the Kanary's status, retrying: {e:#}");
        }
        tokio::select! {
            _ = desired.changed() => {}
            _ = tokio::time::sleep(if agent.ready.load(Ordering::SeqCst) { RESYNC } else { RESYNC_UNTIL_READY }) => {}
            _ = terminate.recv() => break,
        }
    }
    if let Some(reporter) = reporter.as_mut()
        && let Err(e) = reporter.withdraw().await
    {
        tracing::warn!("taking the report back from the Kanary's status: {e:#}");
    }
    Ok(())
}

/// The data plane a version of the ConfigMap asks for.
fn data_plane(cm: &ConfigMap) -> anyhow::Result<DataPlane> {
    let json = cm.data.as_ref().and_then(|d| d.get(DATAPLANE_KEY)).context("no dataplane.json key")?;
    serde_json::from_str(json).context("dataplane.json")
}

impl Agent {
    /// Brings HAProxy's files and the running HAProxy to `plane`.
    async fn sync(&mut self, mut plane: DataPlane) -> anyhow::Result<()> {
        // the revision the controller named, before the files' place here is filled in
        let revision = plane.revision();
        plane.settings.files_dir = self.dir.to_string_lossy().into_owned();
        if self.refused.as_ref() == Some(&plane) {
            return Ok(());
        }
        let (next, needs_reload) = match &self.written {
            Some(written) => written.next(&plane),
            None => (Layout::fresh(&plane), true),
        };
        let previous = self.written.clone();
        // a reload also when the HAProxy that runs was last seen serving another structure (an agent restarted
        // after writing the files of a structural change, before the reload)
        let served = read_layout(&self.dir, GOOD_LAYOUT_FILE);
        let needs_reload = needs_reload || served.is_some_and(|served| !served.same_structure(&next));
        if previous.as_ref() != Some(&next) {
            self.write(&next)?;
        }
        self.started.store(true, Ordering::SeqCst);
        if self.cli.reloads().await.is_err() {
            // HAProxy does not run yet: it starts on the files
            if previous.as_ref() != Some(&next) {
                self.metrics.count("files");
            }
            return Ok(());
        }
        match previous {
            Some(previous) if previous != next && !needs_reload => {
                // servers first, weights once every slot that takes traffic holds its server, parking last:
                // a route never gets weight while a slot it needs is still parked (a command that did not
                // take is repaired below before any weight moves)
                let commands = server_commands(&previous, &next);
                self.cli.worker(&commands.fill).await?;
                let (servers, _) = self.running(&next).await?;
                if filled(&next, &servers) {
                    if weights_changed(&previous, &next) {
                        self.cli.replace_map(&weights_path(&next.settings), &next.weights_map()).await?;
                    }
                    self.cli.worker(&commands.park).await?;
                    self.metrics.count("runtime");
                    tracing::info!(revision = %revision, "applied at run time");
                }
            }
            _ => {}
        }
        let (servers, map) = self.running(&next).await?;
        let drift = differences(&next, &servers, &map);
        if drift.is_empty() && !needs_reload {
            return self.in_sync(revision);
        }
        // a worker with every slot is repaired at run time (an agent stopped between writing the layout and
        // applying it, a command that did not take); one whose slots differ, or that runs other settings or
        // routes, needs a reload
        if let (false, Some(commands)) = (needs_reload, repair_commands(&next, &servers)) {
            tracing::info!(revision = %revision, "repairing HAProxy at run time: {}", drift.join("; "));
            // in the same order: servers, then weights, then parking
            self.cli.worker(&commands.fill).await?;
            let (servers, _) = self.running(&next).await?;
            if filled(&next, &servers) {
                self.cli.replace_map(&weights_path(&next.settings), &next.weights_map()).await?;
                self.cli.worker(&commands.park).await?;
                if self.drift(&next).await?.is_empty() {
                    self.metrics.count("runtime");
                    return self.in_sync(revision);
                }
            }
        }
        let why = if needs_reload { "the routes or settings changed".to_string() } else { drift.join("; ") };
        tracing::info!(revision = %revision, "reloading HAProxy: {why}");
        if self.cli.reload().await? {
            self.metrics.count("reload");
        } else {
            self.metrics.reload_failures.inc();
            tracing::error!(
                revision = %revision,
                "HAProxy refused the new configuration; the previous one keeps serving until the ConfigMap changes"
            );
            let good =
                read_layout(&self.dir, GOOD_LAYOUT_FILE).context("no configuration HAProxy ran well is known")?;
            self.write(&good)?;
            self.refused = Some(plane);
            let serving = self.served.as_ref().map(|s| s.revision.clone()).unwrap_or_else(|| "unknown".into());
            self.served = Some(Served { revision: serving, refused: Some(revision.clone()) });
            self.metrics.in_sync.set(0);
            // still ready while HAProxy serves the last good configuration
            if self.drift(&good).await?.is_empty() {
                self.ready.store(true, Ordering::SeqCst);
            }
            return Ok(());
        }
        let mut drift = self.drift(&next).await?;
        for _ in 0..50 {
            if drift.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            drift = self.drift(&next).await?;
        }
        anyhow::ensure!(drift.is_empty(), "after the reload HAProxy still differs: {}", drift.join("; "));
        self.in_sync(revision)
    }

    /// HAProxy serves the written layout (of data plane `revision`): ready, and that layout is the one to go
    /// back to if HAProxy refuses a later configuration (a restarted HAProxy must start on one it accepts).
    fn in_sync(&mut self, revision: String) -> anyhow::Result<()> {
        self.refused = None;
        self.served = Some(Served { revision, refused: None });
        if let Some(layout) = &self.written
            && read_layout(&self.dir, GOOD_LAYOUT_FILE).as_ref() != Some(layout)
        {
            replace(&self.dir.join(GOOD_LAYOUT_FILE), &serde_json::to_string(layout)?)?;
        }
        self.metrics.in_sync.set(1);
        self.ready.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Writes HAProxy's files for `layout`, each replaced at once (a rename).
    fn write(&mut self, layout: &Layout) -> anyhow::Result<()> {
        replace(&self.dir.join(WEIGHTS_FILE), &layout.weights_map())?;
        replace(&self.dir.join(CONFIG_FILE), &layout.config())?;
        replace(&self.dir.join(LAYOUT_FILE), &serde_json::to_string(layout)?)?;
        self.written = Some(layout.clone());
        Ok(())
    }

    /// What the running worker serves: its servers and its weights map (the one `layout` names).
    async fn running(
        &self,
        layout: &Layout,
    ) -> anyhow::Result<(HashMap<(String, String), ServerState>, HashMap<String, String>)> {
        let servers = self.cli.servers().await?;
        let map = self.cli.map(&weights_path(&layout.settings)).await?;
        Ok((servers, map))
    }

    /// How the running worker differs from `layout` (empty: it serves it).
    async fn drift(&self, layout: &Layout) -> anyhow::Result<Vec<String>> {
        let (servers, map) = self.running(layout).await?;
        Ok(differences(layout, &servers, &map))
    }
}

/// Replaces `path`'s content at once.
fn replace(path: &Path, content: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn read_layout(dir: &Path, file: &str) -> Option<Layout> {
    serde_json::from_slice(&std::fs::read(dir.join(file)).ok()?).ok()
}

/// Where the running worker's servers and weights map differ from `layout`. Pure.
fn differences(
    layout: &Layout,
    servers: &HashMap<(String, String), ServerState>,
    map: &HashMap<String, String>,
) -> Vec<String> {
    let mut found = vec![];
    for backend in &layout.backends {
        let be = backend_name(&backend.service);
        for (i, slot) in backend.slots.iter().enumerate() {
            let name = slot_name(i);
            let Some(running) = servers.get(&(be.clone(), name.clone())) else {
                found.push(format!("{be}/{name} is missing"));
                continue;
            };
            if !slot_as_desired(running, slot.as_ref()) {
                found.push(format!("{be}/{name} is {running:?}, not {slot:?}"));
            }
        }
    }
    let slots_total: usize = layout.backends.iter().map(|b| b.slots.len()).sum();
    if servers.len() != slots_total {
        found.push(format!("{} servers run, {slots_total} slots are laid out", servers.len()));
    }
    for line in layout.weights_map().lines() {
        let Some((key, value)) = line.split_once(' ') else { continue };
        if map.get(key).map(String::as_str) != Some(value) {
            found.push(format!("weights map {key} is {:?}, not {value}", map.get(key)));
        }
    }
    found
}

/// Whether a running server is what its slot holds: that server, ready, or (empty) in maintenance.
fn slot_as_desired(running: &ServerState, slot: Option<&crate::dataplane::Server>) -> bool {
    match slot {
        Some(s) => !running.in_maintenance && running.address == Some(s.address) && running.port == s.port,
        None => running.in_maintenance,
    }
}

/// Whether every slot of `layout` that holds a server holds it, ready, in the running worker (the slots to
/// empty may still serve). Pure.
fn filled(layout: &Layout, servers: &HashMap<(String, String), ServerState>) -> bool {
    layout.backends.iter().all(|backend| {
        backend.slots.iter().enumerate().filter(|(_, slot)| slot.is_some()).all(|(i, slot)| {
            servers
                .get(&(backend_name(&backend.service), slot_name(i)))
                .is_some_and(|running| slot_as_desired(running, slot.as_ref()))
        })
    })
}

/// The Runtime API commands that bring the running worker's servers to `layout` (the slots to fill and the
/// slots to park, apart), when it has exactly the layout's slots; none when only a reload can (a slot
/// missing, or more). Pure.
fn repair_commands(layout: &Layout, servers: &HashMap<(String, String), ServerState>) -> Option<ServerCommands> {
    let slots_total: usize = layout.backends.iter().map(|b| b.slots.len()).sum();
    if servers.len() != slots_total {
        return None;
    }
    let mut commands = ServerCommands::default();
    for backend in &layout.backends {
        for (i, slot) in backend.slots.iter().enumerate() {
            let running = servers.get(&(backend_name(&backend.service), slot_name(i)))?;
            if !slot_as_desired(running, slot.as_ref()) {
                let part = if slot.is_some() { &mut commands.fill } else { &mut commands.park };
                part.extend(slot_commands(&backend.service, i, slot.as_ref()));
            }
        }
    }
    Some(commands)
}

/// The query of `GET /latencies`.
#[derive(serde::Deserialize)]
struct LatenciesQuery {
    route: String,
    after: Option<u64>,
    limit: Option<usize>,
}

async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    requests: Arc<requests::RequestMetrics>,
    ready: Arc<AtomicBool>,
    started: Arc<AtomicBool>,
) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let registry = Arc::new(registry);
    let flag = |flag: Arc<AtomicBool>| {
        move || {
            let on = flag.load(Ordering::SeqCst);
            async move { if on { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "not yet") } }
        }
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut text = String::new();
                    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
                    text
                }
            }),
        )
        .route("/requests", {
            let requests = requests.clone();
            get(move || std::future::ready(axum::Json(requests.report())))
        })
        .route(
            "/latencies",
            get(move |query: axum::extract::Query<LatenciesQuery>| {
                let limit = query.limit.unwrap_or(crate::dataplane::requests::MAX_LATENCIES);
                std::future::ready(axum::Json(requests.latencies(&query.route, query.after.unwrap_or(0), limit)))
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(flag(ready)))
        .route("/startupz", get(flag(started)));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("the agent's HTTP server stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::Server;
    use crate::dataplane::haproxy::{ProxySettings, RouteBackend};

    #[test]
    fn differences_name_each_slot_and_weight_that_is_not_as_laid_out() {
        let plane = DataPlane {
            owner: "ns/k".into(),
            settings: ProxySettings::default(),
            routes: vec![RouteBackend {
                service: "a".into(),
                weight: 100,
                servers: vec![Server { name: "p".into(), address: "10.0.0.1".parse().unwrap(), port: 80 }],
                h2c: false,
                header_value: None,
            }],
        };
        let layout = Layout::fresh(&plane);
        let mut servers: HashMap<(String, String), ServerState> = (0..8)
            .map(|i| {
                let state = ServerState { address: "127.0.0.1".parse().ok(), port: 1, in_maintenance: true };
                (("be_a".to_string(), slot_name(i)), state)
            })
            .collect();
        let map: HashMap<String, String> = [("t0", "100"), ("w0", "100")].map(|(k, v)| (k.into(), v.into())).into();
        assert_eq!(
            differences(&layout, &servers, &map),
            [
                "be_a/s1 is ServerState { address: Some(127.0.0.1), port: 1, in_maintenance: true }, not Some(Server { name: \"p\", address: 10.0.0.1, port: 80 })"
            ]
        );
        servers.insert(
            ("be_a".into(), "s1".into()),
            ServerState { address: "10.0.0.1".parse().ok(), port: 80, in_maintenance: false },
        );
        assert!(differences(&layout, &servers, &map).is_empty());
        // a worker with every slot is repaired by commands; one missing a slot is not
        assert_eq!(repair_commands(&layout, &servers), Some(ServerCommands::default()));
        assert!(filled(&layout, &servers));
        let mut parked = servers.clone();
        parked.insert(
            ("be_a".into(), "s1".into()),
            ServerState { address: "127.0.0.1".parse().ok(), port: 1, in_maintenance: true },
        );
        assert_eq!(
            repair_commands(&layout, &parked).unwrap().fill,
            ["set server be_a/s1 addr 10.0.0.1 port 80", "set server be_a/s1 state ready"]
        );
        // the weights wait for it: a route with weight and its slot still parked is never made
        assert!(!filled(&layout, &parked), "a slot that should hold its server is parked");
        parked.remove(&("be_a".to_string(), "s8".to_string()));
        assert_eq!(repair_commands(&layout, &parked), None);
        let reweighted: HashMap<String, String> =
            [("t0", "50"), ("w0", "100")].map(|(k, v)| (k.into(), v.into())).into();
        assert_eq!(differences(&layout, &servers, &reweighted), ["weights map t0 is Some(\"50\"), not 100"]);
    }
}
