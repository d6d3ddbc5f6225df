//! canary-controller: canary Deployments (the wantedly Canary API) and weighted L4 traffic splitting
//! (the Kanary API) for plain Kubernetes. `api` holds the custom resource types, `runtime` the process
//! wiring (client, CRD checks, controllers, shutdown, logs).

pub mod api;
pub mod canary;
pub mod children;
pub mod conditions;
pub mod kanary;
pub mod report;
pub mod runtime;
