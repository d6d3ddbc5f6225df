//! The resource registry: which kinds the server serves, under which group, version and plural, and how.
//!
//! Built-in kinds are a fixed table; every served version of a created CustomResourceDefinition is added at
//! run time (and removed with the CRD). Objects of one group and resource share one storage bucket whatever
//! version they are read in (CRD conversion strategy `None`, as most CRDs use).

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One served group/version/resource.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub has_status: bool,
    /// The storage bucket shared by every version of the resource.
    pub bucket: String,
    /// The openAPIV3Schema of a custom resource version, with its compiled CEL rules.
    pub schema: Option<Arc<CrdSchema>>,
    pub printer_columns: Vec<PrinterColumn>,
    /// Name of the CRD that defines this resource (None for built-in kinds).
    pub crd: Option<String>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `deployments.apps`, `configmaps`: how the real server names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    pub fn is_builtin(&self) -> bool {
        self.crd.is_none()
    }
}

/// The schema of one custom resource version, ready to validate objects.
pub struct CrdSchema {
    pub openapi: Value,
    pub compiled: kube_cel::CompiledSchema,
}

impl CrdSchema {
    /// Compiles the schema's CEL rules (with `type()` emulated: see `schema::emulate_type_function`).
    pub fn compile(openapi: serde_json::Value) -> CrdSchema {
        let mut for_cel = openapi.clone();
        crate::schema::emulate_type_function(&mut for_cel);
        CrdSchema { compiled: kube_cel::compile_schema(&for_cel), openapi }
    }
}

impl std::fmt::Debug for CrdSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdSchema").finish_non_exhaustive()
    }
}

/// A CRD `additionalPrinterColumns` entry.
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

#[derive(Debug, Default, Clone)]
pub struct Registry {
    /// Keyed by (group, version, plural).
    types: BTreeMap<(String, String, String), Arc<ResourceType>>,
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    has_status: bool,
    bucket: &str,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: if matches!(plural, "pods" | "services" | "deployments" | "replicasets") {
            vec!["all".into()]
        } else {
            vec![]
        },
        has_status,
        bucket: bucket.into(),
        schema: None,
        printer_columns: vec![],
        crd: None,
    }
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut r = Registry::default();
        let b = |g: &str, v: &str, p: &str, k: &str, ns: bool, short: &[&str], status: bool| {
            let bucket = if g.is_empty() { p.to_string() } else { format!("{p}.{g}") };
            builtin(g, v, p, k, ns, short, status, &bucket)
        };
        for t in [
            b("", "v1", "namespaces", "Namespace", false, &["ns"], true),
            b("", "v1", "pods", "Pod", true, &["po"], true),
            b("", "v1", "services", "Service", true, &["svc"], true),
            b("", "v1", "endpoints", "Endpoints", true, &["ep"], false),
            b("", "v1", "configmaps", "ConfigMap", true, &["cm"], false),
            b("", "v1", "secrets", "Secret", true, &[], false),
            b("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], false),
            b("", "v1", "events", "Event", true, &["ev"], false),
            // events.k8s.io/v1 shares storage with core events and is converted on the way in and out.
            builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"], false, "events"),
            b("apps", "v1", "deployments", "Deployment", true, &["deploy"], true),
            b("apps", "v1", "replicasets", "ReplicaSet", true, &["rs"], true),
            b("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", true, &[], false),
            b("coordination.k8s.io", "v1", "leases", "Lease", true, &[], false),
            b("rbac.authorization.k8s.io", "v1", "roles", "Role", true, &[], false),
            b("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true, &[], false),
            b("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false, &[], false),
            b("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", false, &[], false),
            b(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                &["crd", "crds"],
                true,
            ),
        ] {
            r.insert(t);
        }
        r
    }

    pub fn insert(&mut self, t: ResourceType) {
        self.types.insert((t.group.clone(), t.version.clone(), t.plural.clone()), Arc::new(t));
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types.get(&(group.to_string(), version.to_string(), plural.to_string())).cloned()
    }

    /// Removes every version that a CRD defined.
    pub fn remove_crd(&mut self, crd_name: &str) {
        self.types.retain(|_, t| t.crd.as_deref() != Some(crd_name));
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceType>> {
        self.types.values()
    }

    /// Every group with its served versions, the preferred (highest priority) version first.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.types.values() {
            let versions = groups.entry(t.group.clone()).or_default();
            if !versions.contains(&t.version) {
                versions.push(t.version.clone());
            }
        }
        for versions in groups.values_mut() {
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        groups
    }

    /// The kind served by a group for a given kind name, in any version (used to find owners and CRD kinds).
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.types.values().find(|t| t.api_version() == api_version && t.kind == kind).cloned()
    }
}

/// Kubernetes version priority: GA > beta > alpha, then by number (v2 > v1, v1beta2 > v1beta1).
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    static VERSION: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"^v(\d+)(?:(alpha|beta)(\d+))?$").expect("static regex"));
    match VERSION.captures(v) {
        Some(c) => {
            let major = c[1].parse().unwrap_or(0);
            let minor = c.get(3).map(|m| m.as_str().parse().unwrap_or(0)).unwrap_or(0);
            let stability = match c.get(2).map(|m| m.as_str()) {
                None => 3,
                Some("beta") => 2,
                _ => 1,
            };
            (stability, major, minor)
        }
        None => (0, 0, 0),
    }
}

/// Turns a stored CRD object into the resource types it serves.
pub fn types_from_crd(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let group = str_at(spec, "/group").ok_or("spec.group: Required value")?;
    let plural = str_at(spec, "/names/plural").ok_or("spec.names.plural: Required value")?;
    let kind = str_at(spec, "/names/kind").ok_or("spec.names.kind: Required value")?;
    let singular = str_at(spec, "/names/singular").unwrap_or_else(|| kind.to_lowercase());
    let namespaced = match str_at(spec, "/scope").as_deref() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => return Err("spec.scope: Unsupported value: must be \"Namespaced\" or \"Cluster\"".into()),
    };
    let strings = |p: &str| -> Vec<String> {
        spec.pointer(p)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let short_names = strings("/names/shortNames");
    let categories = strings("/names/categories");
    let versions = spec.get("versions").and_then(Value::as_array).ok_or("spec.versions: Required value")?;
    let mut out = vec![];
    for (i, v) in versions.iter().enumerate() {
        if !v.get("served").and_then(Value::as_bool).unwrap_or(false) {
            continue;
        }
        let version = str_at(v, "/name").ok_or(format!("spec.versions[{i}].name: Required value"))?;
        let openapi = v
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .ok_or(format!("spec.versions[{i}].schema.openAPIV3Schema: Required value"))?;
        let compiled = CrdSchema::compile(openapi.clone()).compiled;
        if compiled.has_errors() {
            let errs: Vec<String> = compiled.compilation_errors().iter().map(|e| e.to_string()).collect();
            return Err(format!(
                "spec.versions[{i}].schema.openAPIV3Schema: Invalid value: compilation failed: {}",
                errs.join("; ")
            ));
        }
        let printer_columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: str_at(c, "/name").unwrap_or_default(),
                        type_: str_at(c, "/type").unwrap_or_else(|| "string".into()),
                        format: str_at(c, "/format").unwrap_or_default(),
                        description: str_at(c, "/description").unwrap_or_default(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        json_path: str_at(c, "/jsonPath").unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceType {
            group: group.clone(),
            version,
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced,
            short_names: short_names.clone(),
            categories: categories.clone(),
            has_status: v.pointer("/subresources/status").is_some(),
            bucket: format!("{plural}.{group}"),
            schema: Some(Arc::new(CrdSchema { openapi, compiled })),
            printer_columns,
            crd: Some(name.to_string()),
        });
    }
    Ok(out)
}

fn str_at(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer).and_then(Value::as_str).map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ga_versions_are_preferred_over_beta_and_alpha() {
        let mut v = vec!["v1alpha1", "v1", "v2beta1", "v1beta2"];
        v.sort_by_key(|x| std::cmp::Reverse(version_priority(x)));
        assert_eq!(v, ["v1", "v2beta1", "v1beta2", "v1alpha1"]);
    }
}
