//! What any controller of this operator runs on, generic over what it reconciles: logging, the client, the
//! watch scope, the shared caches and their indexes, owned-children writes, the reconcile skeleton (metrics,
//! backoff), leader election and telemetry. Nothing here names a controller: the operator's assembly is
//! `crate::operator`.

use anyhow::Context;
use kube::{Api, Client};

pub mod backoff;
pub mod caches;
pub mod children;
pub mod index;
pub mod leader;
pub mod reconciler;
pub mod telemetry;
pub mod triggers;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Connects to the cluster named by KUBECONFIG (or the in-cluster service account) and checks that it
/// answers; returns the client (its requests counted in `metrics`) and its configuration (leader election
/// builds a client of its own).
pub async fn connect(metrics: &telemetry::Metrics) -> anyhow::Result<(Client, kube::Config)> {
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration found: set KUBECONFIG, or run inside a cluster")?;
    let url = config.cluster_url.clone();
    let client = kube::client::ClientBuilder::try_from(config.clone())
        .context("cannot build a Kubernetes client")?
        .with_layer(&metrics.count_requests())
        .build();
    client.apiserver_version().await.with_context(|| format!("cannot reach the Kubernetes API server at {url}"))?;
    Ok((client, config))
}

/// What the controllers watch: every namespace, or one (`--watch-namespace`).
#[derive(Debug, Clone, Default)]
pub struct Scope(pub Option<String>);

impl Scope {
    /// The API of a namespaced resource over the watched namespaces.
    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.0 {
            Some(namespace) => Api::namespaced(client.clone(), namespace),
            None => Api::all(client.clone()),
        }
    }

    /// [`Scope::api`] of a resource known at run time.
    pub fn api_with<K>(&self, client: &Client, resource: &K::DynamicType) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::DynamicResourceScope>,
    {
        match &self.0 {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, resource),
            None => Api::all_with(client.clone(), resource),
        }
    }
}
