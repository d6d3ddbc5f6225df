//! Gathers, off the reconcile, the evidence a release asks for: the proxy pods' counters, the answers of the
//! checks' PromQL queries (and the Secrets of their tokens), a webhook step's answer. Every such call goes to
//! something outside that may be slow or never answer; run inside a reconcile it would hold one of the
//! controller's few reconcile slots, and a handful of Canaries with silent webhooks would stop every other
//! release, rollbacks included. So a reconcile asks ([`Gatherer::poll`]) for what the release machine needs,
//! keyed by the release's state when it asked: the first ask starts a task, later asks find it under way (the
//! reconcile looks again in a second), and the ask after it is done takes the answer. One task per Canary at
//! a time; a task whose key no longer matches (the release moved on) is dropped; each task is bounded by the
//! calls' own deadlines and by [`MAX_GATHER`] as a whole.

use crate::api::canary::{ReleaseStatus, RouteCounters};
use crate::canary::release::{Call, Called, Queried};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest a task may take as a whole (its calls have their own, shorter deadlines).
pub const MAX_GATHER: Duration = Duration::from_secs(150);
/// How soon a reconcile that found a task under way looks again.
pub const POLL: Duration = Duration::from_secs(1);

/// What a task gathered, and when.
#[derive(Debug, Clone)]
pub struct Gathered {
    /// When it was read: the time the release judges it at.
    pub at: Time,
    /// The proxy pods' counters, or why they could not be read.
    pub stats: Option<Result<BTreeMap<String, RouteCounters>, String>>,
    /// The checks' PromQL answers, by check.
    pub queried: Option<Vec<Option<Queried>>>,
    /// A webhook step's answer.
    pub called: Option<Called>,
    /// The routes' request latencies over the window that ends (HTTP traffic).
    pub latencies: Option<crate::canary::release::WindowLatencies>,
}

impl Gathered {
    /// Something gathered now.
    pub fn now() -> Gathered {
        Gathered {
            at: Time(k8s_openapi::jiff::Timestamp::now()),
            stats: None,
            queried: None,
            called: None,
            latencies: None,
        }
    }
}

/// What the release asked for, as a key: the kind of need and the state of the release it was asked in (its
/// answer is only used in that state).
pub fn key(need: &str, release: Option<&ReleaseStatus>) -> String {
    match release {
        None => format!("{need}|new"),
        Some(r) => format!(
            "{need}|{}|{:?}|{}|{}|{:?}|{}|{}|{}|{:?}|{:?}",
            r.revision,
            r.phase,
            r.step,
            r.weight,
            r.window.as_ref().map(|w| &w.started_at),
            r.evidence.len(),
            r.failed_windows,
            r.extended_windows,
            r.last_call_at,
            r.handled_request
        ),
    }
}

/// The key of a webhook call: the call's step and URL, and the release's state.
pub fn call_key(call: &Call, release: Option<&ReleaseStatus>) -> String {
    key(&format!("call {} {}", call.step, call.url), release)
}

struct Job {
    key: String,
    answer: Arc<Mutex<Option<Gathered>>>,
    task: tokio::task::AbortHandle,
}

/// The tasks under way, by Canary uid.
#[derive(Default)]
pub struct Gatherer {
    jobs: Mutex<HashMap<String, Job>>,
}

impl Gatherer {
    /// The answer to `key` for Canary `uid` once gathered (taken: a second poll starts again); otherwise
    /// starts `gather` unless it is under way (a task for another key is dropped) and returns `None`.
    pub fn poll<F>(&self, uid: &str, key: &str, gather: impl FnOnce() -> F) -> Option<Gathered>
    where
        F: Future<Output = Gathered> + Send + 'static,
    {
        self.poll_then(uid, key, gather, || ())
    }

    /// [`Gatherer::poll`], calling `done` once a task it starts has its answer (to wake the reconcile that
    /// asked, rather than waiting for its next [`POLL`]).
    pub fn poll_then<F>(
        &self,
        uid: &str,
        key: &str,
        gather: impl FnOnce() -> F,
        done: impl FnOnce() + Send + 'static,
    ) -> Option<Gathered>
    where
        F: Future<Output = Gathered> + Send + 'static,
    {
        let mut jobs = self.jobs.lock().expect("not poisoned");
        if let Some(job) = jobs.get(uid) {
            if job.key == key {
                let done = job.answer.lock().expect("not poisoned").take();
                if done.is_some() {
                    jobs.remove(uid);
                }
                return done;
            }
            job.task.abort();
        }
        let answer = Arc::new(Mutex::new(None));
        let slot = answer.clone();
        let work = gather();
        let task = tokio::spawn(async move {
            let gathered = match tokio::time::timeout(MAX_GATHER, work).await {
                Ok(gathered) => gathered,
                Err(_) => {
                    let why = format!("gathering the evidence took over {MAX_GATHER:?}");
                    Gathered { stats: Some(Err(why)), ..Gathered::now() }
                }
            };
            *slot.lock().expect("not poisoned") = Some(gathered);
            done();
        });
        jobs.insert(uid.to_string(), Job { key: key.to_string(), answer, task: task.abort_handle() });
        None
    }

    /// Drops the task of Canary `uid` (its release is gone).
    pub fn forget(&self, uid: &str) {
        if let Some(job) = self.jobs.lock().expect("not poisoned").remove(uid) {
            job.task.abort();
        }
    }

    /// Drops the tasks of Canaries that no longer exist.
    pub fn retain(&self, exists: impl Fn(&str) -> bool) {
        self.jobs.lock().expect("not poisoned").retain(|uid, job| {
            let keep = exists(uid);
            if !keep {
                job.task.abort();
            }
            keep
        });
    }

    /// How many tasks are kept.
    pub fn len(&self) -> usize {
        self.jobs.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_says_when_it_has_its_answer() {
        let gatherer = Gatherer::default();
        let (done, answered) = tokio::sync::oneshot::channel::<()>();
        let started = gatherer.poll_then(
            "a",
            "k",
            || async { Gathered::now() },
            move || {
                let _ = done.send(());
            },
        );
        assert!(started.is_none(), "started, not awaited");
        tokio::time::timeout(Duration::from_secs(10), answered).await.expect("told").expect("sent");
        assert!(gatherer.poll("a", "k", || async { unreachable!() }).is_some(), "the answer is there when told");
    }

    #[tokio::test]
    async fn a_slow_task_is_polled_not_awaited_and_its_answer_is_taken_once() {
        let gatherer = Gatherer::default();
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let slow = || async move {
            let _ = held.await;
            Gathered {
                called: Some(Called { step: 0, url: "u".into(), answer: Ok("HTTP 200".into()) }),
                ..Gathered::now()
            }
        };
        assert!(gatherer.poll("a", "k1", slow).is_none(), "started");
        let never = || async { unreachable!("a task under way is not started again") };
        assert!(gatherer.poll("a", "k1", never).is_none(), "under way");
        release.send(()).unwrap();
        let mut answer = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            answer = gatherer.poll("a", "k1", || async { unreachable!() });
            if answer.is_some() {
                break;
            }
        }
        assert_eq!(answer.unwrap().called.unwrap().answer, Ok("HTTP 200".into()));
        assert!(gatherer.is_empty(), "taken");
    }

    #[tokio::test]
    async fn a_task_for_another_state_is_dropped_and_deleted_canaries_are_forgotten() {
        let gatherer = Gatherer::default();
        let (_keep, held) = tokio::sync::oneshot::channel::<()>();
        let hangs = || async move {
            let _ = held.await;
            Gathered::now()
        };
        assert!(gatherer.poll("a", "k1", hangs).is_none());
        assert!(gatherer.poll("a", "k2", || async { Gathered::now() }).is_none(), "k1 dropped, k2 started");
        assert!(gatherer.poll("b", "k1", std::future::pending).is_none());
        assert_eq!(gatherer.len(), 2);
        gatherer.retain(|uid| uid == "a");
        assert_eq!(gatherer.len(), 1);
        gatherer.forget("a");
        assert!(gatherer.is_empty());
    }
}
