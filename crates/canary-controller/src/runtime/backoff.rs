//! Per-object retry delays after failed reconciles: 0.5 s doubling up to 5 minutes, reset by a success, so
//! one object that keeps failing is retried less and less often without slowing the others down. Objects
//! that are gone are forgotten at the next failure.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const FIRST: Duration = Duration::from_millis(500);
const MAX: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct ErrorBackoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl ErrorBackoff {
    /// Counts a failure of `object` and returns how long to wait before retrying it.
    pub fn failed(&self, object: &str) -> Duration {
        let mut failures = self.failures.lock().expect("backoff lock");
        let count = failures.entry(object.to_string()).or_default();
        *count = count.saturating_add(1);
        FIRST.saturating_mul(2u32.saturating_pow(*count - 1)).min(MAX)
    }

    /// What a controller's error policy does after a failed reconcile of `object`: forgets the objects that
    /// are no longer `live`, counts the failure, logs it (at debug when it was `expected`: a create that raced
    /// the cache) and schedules the next attempt.
    pub fn retry(
        &self,
        object: &str,
        live: &std::collections::HashSet<String>,
        error: &dyn std::fmt::Display,
        expected: bool,
    ) -> kube::runtime::controller::Action {
        self.forget_all_but(live);
        let delay = self.failed(object);
        if expected {
            tracing::debug!(%object, %error, ?delay, "retrying once the cache has caught up");
        } else {
            tracing::warn!(%object, %error, ?delay, "reconcile failed; retrying");
        }
        kube::runtime::controller::Action::requeue(delay)
    }

    /// Forgets the failures of the objects that are no longer `live` (deleted while failing).
    fn forget_all_but(&self, live: &std::collections::HashSet<String>) {
        self.failures.lock().expect("backoff lock").retain(|object, _| live.contains(object));
    }

    /// How many objects have failures counted.
    pub fn tracked(&self) -> usize {
        self.failures.lock().expect("backoff lock").len()
    }

    /// Forgets the failures of `object` after a successful reconcile.
    pub fn succeeded(&self, object: &str) {
        self.failures.lock().expect("backoff lock").remove(object);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_per_object_up_to_the_maximum_and_reset_on_success() {
        let b = ErrorBackoff::default();
        assert_eq!(b.failed("a"), Duration::from_millis(500));
        assert_eq!(b.failed("a"), Duration::from_secs(1));
        assert_eq!(b.failed("a"), Duration::from_secs(2));
        assert_eq!(b.failed("b"), Duration::from_millis(500), "objects back off independently");
        for _ in 0..40 {
            b.failed("a");
        }
        assert_eq!(b.failed("a"), MAX);
        b.succeeded("a");
        assert_eq!(b.failed("a"), Duration::from_millis(500));
        b.forget_all_but(&["a".to_string()].into());
        assert_eq!(b.failures.lock().unwrap().len(), 1, "b, deleted, is forgotten");
    }
}
