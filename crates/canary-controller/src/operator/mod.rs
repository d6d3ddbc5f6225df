//! The operator's assembly, what `canary-controller run` does: connect, check the CRDs, take the leader
//! Lease, fill the shared caches, run the Canary controller and one Kanary controller per installed group
//! until SIGTERM or Ctrl-C (or a lost Lease).

pub mod canary;
pub mod kanary;

use crate::runtime::caches::{Cache, CachedForm, Caches};
use crate::runtime::index::References;
use crate::runtime::{Scope, caches, connect, leader, telemetry};
use anyhow::{Context, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use std::fmt::Debug;
use std::sync::Arc;

/// The addresses of the API server the controller talks to (its URL's host, resolved): webhooks and queries
/// may not call them unless allowed.
async fn api_server_addresses(config: &kube::Config) -> Vec<std::net::IpAddr> {
    let Some(host) = config.cluster_url.host() else { return vec![] };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match tokio::net::lookup_host((host, 0)).await {
        Ok(addresses) => addresses.map(|a| a.ip()).collect(),
        Err(e) => {
            tracing::warn!(host, error = %e, "cannot resolve the API server's host for the egress policy");
            vec![]
        }
    }
}

/// Checks the installed CRDs and returns the Kanary groups to serve. Fails with the install command when the
/// Canary CRD or every Kanary CRD is missing (or not established); a Kanary group that is not installed is
/// not served (installing one group is a documented choice).
pub async fn check_crds(client: &Client) -> anyhow::Result<Vec<(&'static str, &'static str)>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut installed = std::collections::BTreeSet::new();
    let names: Vec<String> = crate::api::crds().iter().map(|crd| crd.name_any()).collect();
    for name in names {
        let found = api.get_opt(&name).await.with_context(|| format!("cannot read CustomResourceDefinition {name}"))?;
        let established = found
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        if established {
            installed.insert(name);
        }
    }
    let canary = <crate::api::canary::Canary as kube::CustomResourceExt>::crd_name().to_string();
    let kanary_crd = |group: &str| format!("{}.{group}", crate::api::kanary::PLURAL);
    let kanary_groups: Vec<(&'static str, &'static str)> = crate::api::kanary::GROUPS
        .iter()
        .copied()
        .filter(|(group, _)| installed.contains(&kanary_crd(group)))
        .collect();
    if !installed.contains(&canary) || kanary_groups.is_empty() {
        let mut missing = vec![];
        if !installed.contains(&canary) {
            missing.push(canary);
        }
        if kanary_groups.is_empty() {
            let all: Vec<String> = crate::api::kanary::GROUPS.iter().map(|(g, _)| kanary_crd(g)).collect();
            missing.push(all.join(" or "));
        }
        bail!(
            "the CustomResourceDefinitions {} are not installed (or not established): install them with \
             `canary-controller crd | kubectl apply --server-side -f -` or `make deploy`",
            missing.join(", ")
        );
    }
    for (group, _) in crate::api::kanary::GROUPS.iter().filter(|g| !kanary_groups.contains(g)) {
        tracing::info!(crd = %kanary_crd(group), "not installed: Kanaries of {group} are not served");
    }
    Ok(kanary_groups)
}

/// How long running reconciles may take to finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Settings of `canary-controller run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub proxy: crate::kanary::build::ProxyOptions,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_address: std::net::SocketAddr,
    /// Prometheus's base URL for the PromQL checks of releases that name none.
    pub prometheus_address: Option<String>,
    /// What webhook steps and Prometheus queries may call (the API server's addresses are added on start).
    pub egress: crate::canary::evidence::egress::Policy,
    /// The one namespace watched (`--watch-namespace`); `None`: every namespace.
    pub watch_namespace: Option<String>,
    /// `None` runs the controllers at once, without leader election (a single replica).
    pub leader_election: Option<leader::LeaderElection>,
}

/// Runs the operator (the Canary controller and one Kanary controller per API group) until SIGTERM or Ctrl-C,
/// or until this replica loses the leader Lease (an error: the process exits and restarts as a standby).
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    use futures::FutureExt;
    let shutdown = shutdown_signal().shared();
    let metrics = telemetry::Metrics::new();
    let listener = tokio::net::TcpListener::bind(options.metrics_address).await.with_context(|| {
        format!("cannot listen on {} for metrics and health checks (--metrics-address)", options.metrics_address)
    })?;
    tracing::info!("serving /metrics, /healthz and /readyz on {}", listener.local_addr()?);
    tokio::spawn(telemetry::serve(listener, metrics.clone(), shutdown.clone()));
    let (client, config) = connect(&metrics).await?;
    let mut egress = options.egress.clone();
    egress.api_server = api_server_addresses(&config).await;
    tracing::info!(policy = ?egress, "egress policy of webhooks and Prometheus queries");
    crate::canary::evidence::egress::set(egress);
    let kanary_groups = check_crds(&client).await?;
    metrics.set_ready();

    let Some(settings) = &options.leader_election else {
        metrics.set_leader(true);
        tracing::info!("connected; CRDs installed; controllers running");
        run_controllers(&client, &options, &kanary_groups, &metrics, shutdown).await;
        return Ok(());
    };
    let mut election = leader::Leadership::start(config, settings).await?;
    tracing::info!(lease = election.lease(), identity = %settings.identity, "waiting to become the leader");
    tokio::select! {
        acquired = election.acquired() => acquired?,
        _ = shutdown.clone() => {
            election.release().await;
            return Ok(());
        }
    }
    tracing::info!(lease = election.lease(), identity = %settings.identity, "became the leader");
    metrics.set_leader(true);
    tracing::info!("connected; CRDs installed; controllers running");
    // SIGTERM stops the controllers gracefully; a lost leadership drops them at once (in-flight reconciles
    // included), so that two leaders never reconcile at the same time
    let lost = tokio::select! {
        _ = run_controllers(&client, &options, &kanary_groups, &metrics, shutdown) => None,
        lost = election.lost() => Some(lost),
    };
    metrics.set_leader(false);
    match lost {
        None => {
            election.release().await;
            Ok(())
        }
        Some(leader::Lost::Lease) => {
            tracing::error!(lease = election.lease(), "stopped reconciling: lost the leader Lease");
            bail!("lost the leader Lease {}: controllers stopped; exiting to restart as a standby", election.lease())
        }
        Some(leader::Lost::RenewDeadline) => {
            let (deadline, lease) = (election.renew_deadline(), election.lease().to_string());
            tracing::error!(%lease, ?deadline, "stopped reconciling: no renewal of the leader Lease succeeded within the renew deadline");
            election.abandon();
            bail!(
                "lost the leader Lease {lease}: no renewal succeeded within {deadline:?}, before it could expire; controllers stopped; exiting to restart as a standby"
            )
        }
    }
}

/// Runs the controllers until `stop` completes; in-flight reconciles then get [`SHUTDOWN_GRACE`].
async fn run_controllers(
    client: &Client,
    options: &RunOptions,
    kanary_groups: &[(&str, &str)],
    metrics: &std::sync::Arc<telemetry::Metrics>,
    stop: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let scope = Scope(options.watch_namespace.clone());
    // releases create their Kanaries in kanary.k8s.io: watched when that group is installed
    let release_group = crate::api::kanary::GROUPS[0].0;
    let installed = kanary_groups.iter().any(|(group, _)| *group == release_group);
    let release_kanary = installed.then(crate::api::kanary::release_resource);
    let caches = std::sync::Arc::new(caches::Caches::start(client, &scope, release_kanary.as_ref()));
    tokio::select! {
        ready = caches.ready() => if let Err(e) = ready {
            tracing::error!(error = %e, "the caches did not fill; controllers not started");
            return;
        },
        _ = stop.clone() => {
            tracing::info!("shutting down: stopped while the caches were filling");
            return;
        }
    }
    tracing::info!("caches filled: Deployments, Services, EndpointSlices, ConfigMaps (metadata)");
    let kanaries = kanary_groups.iter().map(|(group, version)| {
        let resource = crate::api::kanary::api_resource(group, version);
        kanary::run(
            client.clone(),
            &scope,
            caches.clone(),
            resource,
            options.proxy.clone(),
            metrics.clone(),
            stop.clone(),
        )
    });
    let controllers = async {
        futures::join!(
            canary::run(
                client.clone(),
                &scope,
                caches.clone(),
                crate::canary::reconcile::CanaryReconciler::new(options.prometheus_address.clone()),
                metrics.clone(),
                stop.clone()
            ),
            futures::future::join_all(kanaries)
        )
    };
    // In-flight reconciles get a grace period; a controller still starting up when the signal comes can
    // otherwise keep waiting (seen with kube-runtime 5 when SIGTERM arrives during the initial lists).
    let grace = async {
        stop.clone().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = controllers => tracing::info!("shutting down: controllers stopped"),
        _ = grace => tracing::warn!("shutting down: controllers did not stop within {SHUTDOWN_GRACE:?}"),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// What a cached object is known by to the controllers that refer to it: its name, or a label's value.
trait NameOf {
    fn name_of(&self) -> String;
    fn label_of(&self, label: &str) -> Option<String>;
}

impl<K: CachedForm> NameOf for K {
    fn name_of(&self) -> String {
        self.name_any()
    }
    fn label_of(&self, label: &str) -> Option<String> {
        self.kept_labels().get(label).map(String::from)
    }
}

/// What wakes the objects (`R`) of one controller when a cached object changes.
struct Wakes<R: Resource> {
    caches: Arc<Caches>,
    references: Arc<References<R>>,
    dyntype: R::DynamicType,
    /// Whether an owner reference names an object of this controller.
    is_owner: fn(&OwnerReference, &R::DynamicType) -> bool,
}

impl<R> Wakes<R>
where
    R: Resource + Send + Sync + 'static,
    R::DynamicType: Clone + Send + Sync,
{
    /// The objects a change of a cached object (in `cache` of the caches) wakes: see [`woken`]; `name`
    /// says what the object is known by (none: only its owner cares).
    fn of<K>(
        &self,
        cache: fn(&Caches) -> &Cache<K>,
        name: fn(&dyn NameOf) -> Option<String>,
    ) -> impl Fn(Arc<K>) -> Vec<ObjectRef<R>> + Send + Sync + 'static
    where
        K: CachedForm + Clone + Debug + Send + Sync + 'static,
    {
        let (caches, references) = (self.caches.clone(), self.references.clone());
        let (dyntype, is_owner) = (self.dyntype.clone(), self.is_owner);
        move |object| {
            let (name, echo) = (name(object.as_ref()), cache(&caches).is_echo(&object));
            woken(object.as_ref(), name.as_deref(), echo, &references, &dyntype, is_owner)
        }
    }
}

/// The objects a change of `object` (known by `name`) matters to: its controller, unless the change is the
/// echo of the controller's own write, and the objects that refer to the name.
fn woken<R, K>(
    object: &K,
    name: Option<&str>,
    echo: bool,
    references: &References<R>,
    dyntype: &R::DynamicType,
    is_owner: fn(&OwnerReference, &R::DynamicType) -> bool,
) -> Vec<ObjectRef<R>>
where
    R: Resource,
    R::DynamicType: Clone,
    K: Resource,
{
    let ns = object.namespace().unwrap_or_default();
    let names = references.woken_by(object, name, |r| is_owner(r, dyntype), echo);
    names.iter().map(|n| ObjectRef::new_with(n, dyntype.clone()).within(&ns)).collect()
}
