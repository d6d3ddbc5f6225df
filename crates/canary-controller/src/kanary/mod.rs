//! The Kanary controller: split L4 traffic by weight between Services through a generated HAProxy.
//!
//! Pipeline, one module a step, the same shape as the Canary controller's: `observe` reads the backend
//! Services, their EndpointSlices and the objects the Kanary owns from the shared caches; `validate` checks
//! the spec and the ownership of the proxy's objects and resolves the routes to servers (`endpoints`),
//! returning a [`validate::Valid`] Kanary or a [`validate::Problem`]; `build` renders the config (`haproxy`:
//! one random draw per connection, cumulative thresholds, a backend per route guarded by `nbsrv`) and makes
//! the ConfigMap, Deployment, Service, status and events as plain values; `reconcile` applies them, writes
//! the status when it changed and records the events. The skeleton around it is `runtime::reconciler`.

pub mod build;
pub mod endpoints;
pub mod observe;
pub mod reconcile;
pub mod validate;
