//! The custom resource types this operator serves, one file per API, and the CRDs generated from them.

pub mod canary;
pub mod kanary;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD the operator needs, in install order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![canary::Canary::crd()];
    crds.extend(kanary::GROUPS.iter().map(|(group, version)| kanary::crd(group, version)));
    crds
}

/// The CRDs as one multi-document YAML stream (what `canary-controller crd` prints).
pub fn crds_yaml() -> anyhow::Result<String> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
