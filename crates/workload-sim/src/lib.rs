//! workload-sim: a node of a Kubernetes cluster for tests (a test double). It registers its Node and keeps
//! its Lease, and plays the kubelet and kube-proxy of that node, closely enough for canary-controller: the
//! Pods the scheduler binds to it really run, as local processes in network namespaces of their own. The
//! cluster's own controllers (Deployments, ReplicaSets, EndpointSlices) are Kubernetes' own. See README.md for
//! what it emulates and what it does not.

pub mod api_endpoint;
pub mod container;
pub mod images;
pub mod kubelet;
pub mod network;
pub mod node;
pub mod server;
pub mod service_proxy;
