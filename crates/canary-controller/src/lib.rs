//! canary-controller: canary Deployments (the wantedly Canary API) and weighted L4 traffic splitting
//! (the Kanary API) for plain Kubernetes. `api` holds the custom resource types, `runtime` the process
//! wiring (client, CRD checks, controllers, shutdown, logs), `agent` the proxy agent that runs beside
//! HAProxy in a Kanary's proxy pods.

pub mod agent;
pub mod api;
pub mod canary;
pub mod conditions;
pub mod dataplane;
pub mod kanary;
pub mod names;
pub mod operator;
pub mod report;
pub mod runtime;

/// The operator's image, as `make image` and `make image-oci` tag it and `config/manager` deploys it; the
/// proxy agent runs from it too (`--agent-image`).
pub const IMAGE: &str = "canary-controller:latest";
