//! The Canary controller: from a target Deployment and a Canary, run `<target>-canary`, a copy of the target
//! with the Canary's images; with `spec.traffic`, release it step by step through a Kanary and judge it.
//!
//! One module a step of the reconcile (`reconcile` reads them top to bottom): `observe` (the shared
//! caches), `validate` (a [`validate::Valid`] Canary or a [`validate::Problem`]), `build` (the release's
//! decision and the [`build::Desired`] objects; `traffic` builds a release's Services, EndpointSlices and
//! Kanary), `apply` (writes them, deletes what is no longer wanted). The release itself is `release`, a pure
//! state machine; what it asks for is gathered by `evidence` (all the IO of judging: the proxies' counters,
//! PromQL, Secrets, webhooks) and compared by `statistics`.

pub mod apply;
pub mod build;
pub mod evidence;
pub mod observe;
pub mod reconcile;
pub mod release;
pub mod statistics;
pub mod traffic;
pub mod validate;
