//! workload-sim: a workload simulator beside fake-apiserver (a test double, like it). It plays the
//! Deployment, ReplicaSet and EndpointSlice controllers, the kubelet of one node and kube-proxy, closely
//! enough for canary-controller: Pods really run, as local processes on loopback addresses. See README.md
//! for what it emulates and what it does not.

pub mod api_endpoint;
pub mod container;
pub mod endpoint_slices;
pub mod images;
pub mod kubelet;
pub mod network;
pub mod node;
pub mod server;
pub mod service_proxy;
pub mod workloads;
