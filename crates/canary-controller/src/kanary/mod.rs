//! The Kanary controller: split L4 traffic by weight between Services through a generated HAProxy.
//!
//! Pipeline: `reconcile` observes the Kanary (either API group), its backend Services and their
//! EndpointSlices, and the objects it owns; `validate` parses and checks the spec; `endpoints` turns
//! Services and EndpointSlices into servers; `haproxy` renders the config (one random draw per connection,
//! cumulative thresholds, a backend per route guarded by `nbsrv`); `build` makes the ConfigMap, Deployment,
//! Service and status as plain values; `reconcile` applies them and records events.

pub mod build;
pub mod endpoints;
pub mod haproxy;
pub mod observe;
pub mod reconcile;
pub mod validate;
