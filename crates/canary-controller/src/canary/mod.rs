//! The Canary controller: from a target Deployment and a Canary, run `<target>-canary`, a copy of the target
//! with the Canary's images.
//!
//! Pipeline, one module a step: `reconcile` observes (the Canary, its target, an existing canary Deployment),
//! `validate` decides whether the Canary can be served or what is wrong (a [`validate::Problem`], whose
//! reason names the condition and the Warning event), `build` makes the desired Deployment and the status
//! as plain values, and `reconcile` applies them (server-side apply, one field manager) and records events.

pub mod build;
pub mod observe;
pub mod reconcile;
pub mod validate;
