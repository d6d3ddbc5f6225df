//! Leader election. Every replica runs; only the holder of a Lease (kept by kube-lease-manager) runs the
//! controllers. A standby takes the Lease when the holder stops renewing it (within the lease duration) or
//! releases it on shutdown. A leader that loses the Lease stops its controllers and exits, so that it comes
//! back as a standby with fresh state.

use anyhow::Context;
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Settings of leader election.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease; `None` means the client's default namespace (in a pod: its own).
    pub namespace: Option<String>,
    /// This replica's name in the Lease (`holderIdentity`).
    pub identity: String,
    /// Seconds the Lease is valid after its last renewal; the leader renews a third of it before it ends.
    pub lease_duration_seconds: u64,
}

impl LeaderElection {
    /// The identity when none is given: `HOSTNAME` (in a pod, its name) and the process id.
    pub fn default_identity() -> String {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "canary-controller".into());
        format!("{host}-{}", std::process::id())
    }

    fn grace_seconds(&self) -> u64 {
        (self.lease_duration_seconds / 3).max(1)
    }
}

/// A running election: tells whether this replica is the leader.
pub struct Leadership {
    is_leader: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
    lease: String,
}

impl Leadership {
    /// Creates the Lease if needed and starts competing for it.
    pub async fn start(client: Client, settings: &LeaderElection) -> anyhow::Result<Leadership> {
        let namespace = settings.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
        let lease = format!("{namespace}/{}", settings.lease_name);
        let manager = LeaseManagerBuilder::new(client, &settings.lease_name)
            .with_namespace(&namespace)
            .with_identity(&settings.identity)
            .with_duration(settings.lease_duration_seconds)
            .with_grace(settings.grace_seconds())
            .build()
            .await
            .with_context(|| format!("cannot read or create the leader election Lease {lease}"))?;
        let (is_leader, task) = manager.watch().await;
        Ok(Leadership { is_leader, task, lease })
    }

    /// The Lease, as `namespace/name`.
    pub fn lease(&self) -> &str {
        &self.lease
    }

    /// Completes once this replica holds the Lease; fails if the election stopped.
    pub async fn acquired(&mut self) -> anyhow::Result<()> {
        self.is_leader.wait_for(|leader| *leader).await.context("leader election stopped")?;
        Ok(())
    }

    /// A future that completes when this replica no longer holds the Lease (or the election stopped).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut is_leader = self.is_leader.clone();
        async move {
            let _ = is_leader.wait_for(|leader| !*leader).await;
        }
    }

    pub fn is_leader(&self) -> bool {
        *self.is_leader.borrow() && !self.task.is_finished()
    }

    /// Stops competing and releases the Lease if this replica holds it, so that a standby takes over at once.
    pub async fn release(self) {
        drop(self.is_leader);
        match self.task.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, lease = %self.lease, "could not release the leader Lease"),
            Err(e) => tracing::warn!(error = %e, lease = %self.lease, "leader election task failed"),
        }
    }
}
