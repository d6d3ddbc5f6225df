//! The custom resource types this operator serves, one file per API, and the CRDs generated from them.

pub mod canary;
pub mod kanary;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD the operator serves, in install order: Canary and Kanary in both groups.
pub fn crds() -> Vec<CustomResourceDefinition> {
    crds_with(&[]).expect("no group to check")
}

/// The Canary CRD and the Kanary CRDs of `kanary_groups` (both groups when empty). Installing one Kanary
/// group is what lets `kubectl get kanary` and `kubectl get ky` name it with no ambiguity; both groups share
/// those names, so with both installed kubectl picks kanary.k8s.io for `kanary` and warns for `ky`.
pub fn crds_with(kanary_groups: &[String]) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    if let Some(unknown) = kanary_groups.iter().find(|g| !kanary::GROUPS.iter().any(|(group, _)| group == g)) {
        let known: Vec<&str> = kanary::GROUPS.iter().map(|(g, _)| *g).collect();
        anyhow::bail!("--kanary-group: {unknown:?} is not a Kanary group (the groups: {})", known.join(", "));
    }
    let mut crds = vec![canary::Canary::crd()];
    crds.extend(
        kanary::GROUPS
            .iter()
            .filter(|(group, _)| kanary_groups.is_empty() || kanary_groups.iter().any(|g| g == group))
            .map(|(group, version)| kanary::crd(group, version)),
    );
    Ok(crds)
}

/// The CRDs as one multi-document YAML stream (what `canary-controller crd` prints).
pub fn crds_yaml(kanary_groups: &[String]) -> anyhow::Result<String> {
    let mut out = String::new();
    for crd in crds_with(kanary_groups)? {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
