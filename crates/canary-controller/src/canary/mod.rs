//! The Canary controller: from a target Deployment and a Canary, run `<target>-canary`, a copy of the target
//! with the Canary's images.
//!
//! Pipeline, one module a step, the same shape as the Kanary controller's: `observe` reads the target and
//! the canary Deployments from the shared cache; `validate` returns a [`validate::Valid`] Canary (its target,
//! its canary Deployment if any) or what is wrong (a [`validate::Problem`], whose reason names the condition
//! and the Warning event); `build` makes the desired Deployment, the status and the events as plain values;
//! `reconcile` applies (create when absent, server-side apply when the cache does not show it as desired),
//! writes the status when it changed and records the events. The skeleton around it (context, metrics,
//! error policy) is `runtime::reconciler`.

pub mod build;
pub mod egress;
pub mod gather;
pub mod http;
pub mod measure;
pub mod observe;
pub mod prometheus;
pub mod reconcile;
pub mod release;
pub mod statistics;
pub mod traffic;
pub mod validate;
