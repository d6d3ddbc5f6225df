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
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
                kubernetes_formats(schema);
            }
        }
    }
    Ok(crds)
}

/// Replaces the integer formats schemars writes for Rust's types (`uint32`, `uint64`, ...), which the API
/// server does not know (it warns on every apply: `unrecognized format "uint64"`), with the ones it does
/// (`int32`, `int64`); `minimum: 0` keeps them unsigned.
fn kubernetes_formats(
    schema: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    let known = match schema.format.as_deref() {
        Some("int8" | "int16" | "uint8" | "uint16") => Some("int32"),
        Some("uint32" | "uint64" | "uint" | "int") => Some("int64"),
        _ => None,
    };
    if let Some(format) = known {
        schema.format = Some(format.to_string());
    }
    let children = schema.properties.iter_mut().flat_map(|p| p.values_mut());
    let items = schema.items.iter_mut().flat_map(|items| match items {
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s) => {
            vec![s.as_mut()]
        }
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schemas(v) => {
            v.iter_mut().collect()
        }
    });
    let additional = schema.additional_properties.iter_mut().filter_map(|a| match a {
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(s) => {
            Some(s.as_mut())
        }
        _ => None,
    });
    let alternatives = [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of].into_iter().flatten().flatten();
    let all: Vec<&mut _> = children.chain(items).chain(additional).chain(alternatives).collect();
    for child in all {
        kubernetes_formats(child);
    }
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
