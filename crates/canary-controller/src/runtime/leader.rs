//! Leader election. Every replica runs; only the holder of a Lease (kept by kube-lease-manager) runs the
//! controllers. A standby takes the Lease when the holder stops renewing it (within the lease duration) or
//! releases it on shutdown. A leader that loses the Lease stops its controllers and exits, so that it comes
//! back as a standby with fresh state.
//!
//! kube-lease-manager keeps saying "leader" while its renewals fail, so a leader cut off from its Lease (but
//! not from the rest of the API) would keep reconciling after a standby took over. Like client-go's renew
//! deadline, this module watches the Lease writes themselves (a layer on the election's client records each
//! successful one) and declares leadership lost when none succeeded within the renew deadline, which ends
//! before the Lease can expire for the others.

use anyhow::Context;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Settings of leader election.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease; `None` means the client's default namespace (in a pod: its own).
    pub namespace: Option<String>,
    /// This replica's name in the Lease (`holderIdentity`).
    pub identity: String,
    /// Seconds the Lease is valid after its last renewal.
    pub lease_duration_seconds: u64,
}

impl LeaderElection {
    /// The identity when none is given: `HOSTNAME` (in a pod, its name) and the process id.
    pub fn default_identity() -> String {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "canary-controller".into());
        format!("{host}-{}", std::process::id())
    }

    /// The leader renews this long before the Lease ends: two thirds of it (a renewal every 5 s of a 15 s
    /// lease), so that failed renewals, and kube-lease-manager's own backoff after a conflict (0.1 s doubling),
    /// have half the lease to succeed before the renew deadline.
    fn grace_seconds(&self) -> u64 {
        (self.lease_duration_seconds * 2 / 3).max(1)
    }

    /// A leader that has not renewed for this long stops reconciling: five sixths of the lease duration
    /// (12.5 s of 15 s), which leaves the rest for it to stop before a standby may take the Lease.
    pub fn renew_deadline(&self) -> Duration {
        Duration::from_millis(self.lease_duration_seconds * 1000 * 5 / 6)
    }
}

/// Why this replica stopped being the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The Lease is held by another replica (or the election stopped).
    Lease,
    /// No renewal succeeded within the renew deadline: the Lease may be someone else's soon.
    RenewDeadline,
}

/// A running election: tells whether this replica is the leader.
pub struct Leadership {
    is_leader: watch::Receiver<bool>,
    renewed: watch::Receiver<Option<Instant>>,
    renew_deadline: Duration,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
    lease: String,
}

impl Leadership {
    /// Creates the Lease if needed and starts competing for it, with a client of its own built from `config`.
    pub async fn start(config: kube::Config, settings: &LeaderElection) -> anyhow::Result<Leadership> {
        let namespace = settings.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let lease = format!("{namespace}/{}", settings.lease_name);
        let path = format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{}", settings.lease_name);
        let (recorder, renewed) = RenewalRecorder::new(path);
        let client = kube::client::ClientBuilder::try_from(config)
            .context("cannot build the leader election client")?
            .with_layer(&recorder)
            .build();
        let manager = LeaseManagerBuilder::new(client, &settings.lease_name)
            .with_namespace(&namespace)
            .with_identity(&settings.identity)
            .with_duration(settings.lease_duration_seconds)
            .with_grace(settings.grace_seconds())
            .build()
            .await
            .with_context(|| format!("cannot read or create the leader election Lease {lease}"))?;
        let (is_leader, task) = watch_leadership(manager);
        Ok(Leadership { is_leader, renewed, renew_deadline: settings.renew_deadline(), task, lease })
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

    /// A future that completes when this replica no longer holds the Lease, or no renewal of it succeeded
    /// within the renew deadline.
    pub fn lost(&self) -> impl Future<Output = Lost> + Send + 'static {
        let mut is_leader = self.is_leader.clone();
        let mut renewed = self.renewed.clone();
        let renew_deadline = self.renew_deadline;
        async move {
            loop {
                let last = *renewed.borrow_and_update();
                let Some(last) = last else { return Lost::RenewDeadline };
                tokio::select! {
                    _ = is_leader.wait_for(|leader| !*leader) => return Lost::Lease,
                    changed = renewed.changed() => if changed.is_err() { return Lost::Lease },
                    _ = tokio::time::sleep_until(last + renew_deadline) => return Lost::RenewDeadline,
                }
            }
        }
    }

    /// The renew deadline.
    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
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

    /// Stops competing without a word to the API (it cannot be reached: the Lease simply expires).
    pub fn abandon(self) {
        self.task.abort();
    }
}

/// How soon a failed Lease request is tried again. kube-lease-manager's own loop (`LeaseManager::watch`)
/// waits a second, then two: with a short lease, a blip of the API server at renewal time would use up the
/// renew deadline.
const RETRY: Duration = Duration::from_millis(200);

/// Runs the election (kube-lease-manager's `changed`, which acquires and renews) and publishes whether this
/// replica leads; when every receiver is gone, releases the Lease and returns.
fn watch_leadership(
    manager: LeaseManager,
) -> (watch::Receiver<bool>, JoinHandle<Result<LeaseManager, LeaseManagerError>>) {
    let (sender, receiver) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = sender.closed() => {
                    manager.release().await?;
                    return Ok(manager);
                }
                changed = manager.changed() => match changed {
                    Ok(leader) => {
                        if sender.send(leader).is_err() {
                            manager.release().await?;
                            return Ok(manager);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election: a Lease request failed; retrying");
                        tokio::time::sleep(RETRY).await;
                    }
                },
            }
        }
    });
    (receiver, task)
}

/// A client layer that records when a write (PATCH) to the Lease last succeeded, timed when it was sent
/// (no later than the renew time it carries).
#[derive(Clone)]
struct RenewalRecorder {
    path: String,
    renewed: std::sync::Arc<watch::Sender<Option<Instant>>>,
}

impl RenewalRecorder {
    fn new(path: String) -> (RenewalRecorder, watch::Receiver<Option<Instant>>) {
        let (sender, receiver) = watch::channel(None);
        (RenewalRecorder { path, renewed: std::sync::Arc::new(sender) }, receiver)
    }
}

impl<S> tower::Layer<S> for RenewalRecorder {
    type Service = RecordRenewals<S>;

    fn layer(&self, inner: S) -> RecordRenewals<S> {
        RecordRenewals { inner, recorder: self.clone() }
    }
}

struct RecordRenewals<S> {
    inner: S,
    recorder: RenewalRecorder,
}

impl<S, B> tower::Service<http::Request<kube::client::Body>> for RecordRenewals<S>
where
    S: tower::Service<http::Request<kube::client::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let is_lease_write = request.method() == http::Method::PATCH && request.uri().path() == self.recorder.path;
        let sent = Instant::now();
        let response = self.inner.call(request);
        let renewed = self.recorder.renewed.clone();
        Box::pin(async move {
            let response = response.await;
            if is_lease_write && response.as_ref().is_ok_and(|r| r.status().is_success()) {
                renewed.send_replace(Some(sent));
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_renew_deadline_ends_after_the_renewal_and_before_the_lease() {
        for seconds in [2, 3, 15, 60] {
            let settings = LeaderElection {
                lease_name: "l".into(),
                namespace: None,
                identity: "i".into(),
                lease_duration_seconds: seconds,
            };
            let renews_after = Duration::from_secs(seconds - settings.grace_seconds());
            let deadline = settings.renew_deadline();
            assert!(renews_after < deadline && deadline < Duration::from_secs(seconds), "{seconds} s: {deadline:?}");
        }
    }
}
