//! Authentication by bearer token and RBAC authorization, off until a test turns it on.
//!
//! - A request without a token is the cluster admin (`system:admin` in `system:masters`), as on the old
//!   insecure port; a request with a registered token is that token's user; any other token gets 401.
//! - With enforcement on, a non-admin user's resource requests are checked against the ClusterRoles,
//!   Roles and bindings stored in the server (`rbac.authorization.k8s.io/v1`, no aggregation), as the real
//!   RBAC authorizer does; a denial is the real 403 message. Discovery, `/version` and `/openapi` are open
//!   to every authenticated user (the `system:discovery` role).
//! - `POST .../serviceaccounts/<name>/token` (TokenRequest, as a kubelet asks for a Pod's token) returns a new
//!   token for that ServiceAccount. It is an opaque string, not a signed JWT: only this server knows it.
//! - Escalation is prevented as the real server does: with enforcement on, a non-admin user may write a Role
//!   or ClusterRole only with rules it holds itself (or `escalate` on it), and a RoleBinding or
//!   ClusterRoleBinding only to a role whose rules it holds (or `bind` on it); the rules it held for that
//!   count as used.
//! - Every resource request of a non-admin user is recorded as (user, verb, group, resource[/subresource]),
//!   so that a test can show a role grants nothing that is never used.

use crate::errors::ApiError;
use crate::objects::Inner;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// The answer to a TokenRequest for `account` (a stored ServiceAccount): a new token registered for it.
pub fn token_request(rbac: &Rbac, account: &Value, request: &Value) -> Value {
    let (namespace, name) = (
        account["metadata"]["namespace"].as_str().unwrap_or_default(),
        account["metadata"]["name"].as_str().unwrap_or_default(),
    );
    let token = format!("fake-apiserver.{}", uuid::Uuid::new_v4().simple());
    rbac.add_token(&token, &format!("system:serviceaccount:{namespace}:{name}"), &[]);
    let seconds = request["spec"]["expirationSeconds"].as_i64().unwrap_or(3600).max(600);
    let expires = chrono::Utc::now() + chrono::Duration::seconds(seconds);
    json!({
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
        "spec": {"audiences": request["spec"]["audiences"].as_array().cloned().unwrap_or_default(),
            "expirationSeconds": seconds, "boundObjectRef": request["spec"]["boundObjectRef"]},
        "status": {"token": token, "expirationTimestamp": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)},
    })
}

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    fn admin() -> User {
        User { name: "system:admin".into(), groups: vec!["system:masters".into(), "system:authenticated".into()] }
    }

    fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// What a resource request does, in RBAC terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// One request as recorded for [`Rbac::usage`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Use {
    pub verb: String,
    pub group: String,
    pub resource: String,
}

#[derive(Default)]
pub struct Rbac {
    inner: Mutex<RbacState>,
}

#[derive(Default)]
struct RbacState {
    enforce: bool,
    tokens: HashMap<String, User>,
    usage: HashMap<String, BTreeSet<Use>>,
}

impl Rbac {
    /// Registers a bearer token for `user` (for a service account: `system:serviceaccount:<ns>:<name>`).
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        groups.push("system:authenticated".into());
        if let Some(sa_ns) = user.strip_prefix("system:serviceaccount:").and_then(|r| r.split(':').next()) {
            groups.push("system:serviceaccounts".into());
            groups.push(format!("system:serviceaccounts:{sa_ns}"));
        }
        let user = User { name: user.into(), groups };
        self.inner.lock().expect("lock").tokens.insert(token.into(), user);
    }

    /// Turns authorization of non-admin users on or off.
    pub fn set_enforce(&self, enforce: bool) {
        self.inner.lock().expect("lock").enforce = enforce;
    }

    /// The requests `user` made (allowed or not), as (verb, group, resource[/subresource]).
    pub fn usage(&self, user: &str) -> BTreeSet<Use> {
        self.inner.lock().expect("lock").usage.get(user).cloned().unwrap_or_default()
    }

    /// The user of a request, from its `Authorization` header.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<User, ApiError> {
        let Some(header) = authorization else { return Ok(User::admin()) };
        let token = header.strip_prefix("Bearer ").unwrap_or_default().trim();
        self.inner
            .lock()
            .expect("lock")
            .tokens
            .get(token)
            .cloned()
            .ok_or_else(|| ApiError::new(401, "Unauthorized", "Unauthorized"))
    }

    /// Records the request and, with enforcement on, fails it with 403 unless a role bound to `user` allows it.
    pub fn authorize(&self, inner: &Inner, user: &User, request: &Attributes) -> Result<(), ApiError> {
        if user.is_admin() {
            return Ok(());
        }
        let enforce = {
            let mut state = self.inner.lock().expect("lock");
            let used =
                Use { verb: request.verb.clone(), group: request.group.clone(), resource: request.resource.clone() };
            state.usage.entry(user.name.clone()).or_default().insert(used);
            state.enforce
        };
        if !enforce || allowed(inner, user, request) {
            return Ok(());
        }
        Err(forbidden(user, request))
    }
}

impl Rbac {
    /// Fails a write of RBAC object `object` (`resource`: roles, clusterroles, rolebindings or
    /// clusterrolebindings, as it will be stored) that would grant `user` permissions it does not hold.
    pub fn check_escalation(&self, inner: &Inner, user: &User, resource: &str, object: &Value) -> Result<(), ApiError> {
        if user.is_admin() || !self.inner.lock().expect("lock").enforce {
            return Ok(());
        }
        let namespace = object["metadata"]["namespace"].as_str().map(String::from);
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let (rules, exemption) = match resource {
            "roles" | "clusterroles" => {
                let rules = object["rules"].as_array().cloned().unwrap_or_default();
                (
                    rules,
                    Attributes {
                        verb: "escalate".into(),
                        group: RBAC_GROUP.into(),
                        resource: resource.into(),
                        namespace: namespace.clone(),
                        name: Some(name.clone()),
                    },
                )
            }
            "rolebindings" | "clusterrolebindings" => {
                let kind = object["roleRef"]["kind"].as_str().unwrap_or_default();
                let role = object["roleRef"]["name"].as_str().unwrap_or_default();
                let (plural, role_ns) =
                    if kind == "ClusterRole" { ("clusterroles", None) } else { ("roles", namespace.as_deref()) };
                let rules = stored(inner, plural, role_ns)
                    .into_iter()
                    .filter(|r| r["metadata"]["name"] == role)
                    .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
                    .collect();
                (
                    rules,
                    Attributes {
                        verb: "bind".into(),
                        group: RBAC_GROUP.into(),
                        resource: plural.into(),
                        namespace: namespace.clone(),
                        name: Some(role.into()),
                    },
                )
            }
            _ => return Ok(()),
        };
        if allowed(inner, user, &exemption) {
            self.record(user, &exemption);
            return Ok(());
        }
        let mut missing = vec![];
        for rule in &rules {
            for request in rule_requests(rule, namespace.as_deref()) {
                if allowed(inner, user, &request) {
                    self.record(user, &request);
                } else {
                    missing.push(format!(
                        "{{APIGroups:[{:?}], Resources:[{:?}], ResourceNames:[{:?}], Verbs:[{:?}]}}",
                        request.group,
                        request.resource,
                        request.name.clone().unwrap_or_default(),
                        request.verb
                    ));
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let qualified = format!("{resource}.{RBAC_GROUP}");
        Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "{qualified} {name:?} is forbidden: user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
                user.name,
                user.groups,
                missing.join("\n")
            ),
        ))
    }

    fn record(&self, user: &User, request: &Attributes) {
        let used = Use { verb: request.verb.clone(), group: request.group.clone(), resource: request.resource.clone() };
        self.inner.lock().expect("lock").usage.entry(user.name.clone()).or_default().insert(used);
    }
}

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Each single permission a rule grants (verb, group, resource, name), as requests in `namespace`.
fn rule_requests(rule: &Value, namespace: Option<&str>) -> Vec<Attributes> {
    let list = |key: &str| -> Vec<String> {
        rule[key].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect()
    };
    let names: Vec<Option<String>> = match list("resourceNames") {
        names if names.is_empty() => vec![None],
        names => names.into_iter().map(Some).collect(),
    };
    let mut out = vec![];
    for verb in list("verbs") {
        for group in list("apiGroups") {
            for resource in list("resources") {
                for name in &names {
                    out.push(Attributes {
                        verb: verb.clone(),
                        group: group.clone(),
                        resource: resource.clone(),
                        namespace: namespace.map(String::from),
                        name: name.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The stored objects of RBAC resource `plural` (in namespace `ns`, or all).
fn stored(inner: &Inner, plural: &str, ns: Option<&str>) -> Vec<Value> {
    match inner.resource(RBAC_GROUP, "v1", plural) {
        Some(rt) => inner.store.list(&rt.bucket, ns).cloned().collect(),
        None => vec![],
    }
}

fn forbidden(user: &User, r: &Attributes) -> ApiError {
    let resource = r.resource.split('/').next().unwrap_or_default();
    let qualified = if r.group.is_empty() { resource.to_string() } else { format!("{resource}.{}", r.group) };
    let subject = match &r.name {
        Some(name) => format!("{qualified} {name:?} is forbidden"),
        None => format!("{qualified} is forbidden"),
    };
    let scope = match &r.namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".into(),
    };
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!(
            "{subject}: User {:?} cannot {} resource {:?} in API group {:?} {scope}",
            user.name, r.verb, r.resource, r.group
        ),
    );
    let mut details = json!({"group": r.group, "kind": resource});
    if let Some(name) = &r.name {
        details["name"] = json!(name);
    }
    e.details = Some(details);
    e
}

/// Whether any role bound to `user` (cluster-wide, or in the request's namespace) has a rule that allows it.
fn allowed(inner: &Inner, user: &User, request: &Attributes) -> bool {
    let objects = |plural: &str, ns: Option<&str>| stored(inner, plural, ns);
    let role_rules = |kind: &str, name: &str, ns: Option<&str>| -> Vec<Value> {
        let (plural, ns) = if kind == "ClusterRole" { ("clusterroles", None) } else { ("roles", ns) };
        objects(plural, ns)
            .into_iter()
            .filter(|r| r["metadata"]["name"] == name)
            .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let mut rules = vec![];
    for binding in objects("clusterrolebindings", None) {
        if binds(&binding, user, None) && binding["roleRef"]["kind"] == "ClusterRole" {
            rules.extend(role_rules("ClusterRole", binding["roleRef"]["name"].as_str().unwrap_or_default(), None));
        }
    }
    if let Some(ns) = request.namespace.as_deref() {
        for binding in objects("rolebindings", Some(ns)) {
            if binds(&binding, user, Some(ns)) {
                let kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
                rules.extend(role_rules(kind, binding["roleRef"]["name"].as_str().unwrap_or_default(), Some(ns)));
            }
        }
    }
    rules.iter().any(|rule| rule_allows(rule, request))
}

/// Whether a binding's subjects include `user` (a RoleBinding's service accounts default to its namespace).
fn binds(binding: &Value, user: &User, binding_ns: Option<&str>) -> bool {
    binding["subjects"].as_array().into_iter().flatten().any(|s| {
        let name = s["name"].as_str().unwrap_or_default();
        match s["kind"].as_str() {
            Some("User") => user.name == name,
            Some("Group") => user.groups.iter().any(|g| g == name),
            Some("ServiceAccount") => {
                let ns = s["namespace"].as_str().or(binding_ns).unwrap_or_default();
                user.name == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        }
    })
}

fn rule_allows(rule: &Value, r: &Attributes) -> bool {
    let list =
        |key: &str| -> Vec<&str> { rule[key].as_array().into_iter().flatten().filter_map(Value::as_str).collect() };
    let (verbs, groups, resources, names) =
        (list("verbs"), list("apiGroups"), list("resources"), list("resourceNames"));
    let verb_ok = verbs.iter().any(|v| *v == "*" || *v == r.verb);
    let group_ok = groups.iter().any(|g| *g == "*" || *g == r.group);
    let resource_ok = resources.iter().any(|res| {
        *res == "*"
            || *res == r.resource
            || match r.resource.split_once('/') {
                Some((main, sub)) => *res == format!("{main}/*") || *res == format!("*/{sub}"),
                None => false,
            }
    });
    let name_ok = names.is_empty() || r.name.as_deref().is_some_and(|n| names.contains(&n));
    verb_ok && group_ok && resource_ok && name_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(verb: &str, group: &str, resource: &str, name: Option<&str>) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: Some("ns".into()),
            name: name.map(String::from),
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let rule = json!({"apiGroups": ["apps"], "resources": ["deployments", "deployments/status"], "verbs": ["get", "patch"]});
        assert!(rule_allows(&rule, &request("get", "apps", "deployments", Some("a"))));
        assert!(rule_allows(&rule, &request("patch", "apps", "deployments/status", Some("a"))));
        assert!(!rule_allows(&rule, &request("delete", "apps", "deployments", Some("a"))));
        assert!(!rule_allows(&rule, &request("get", "", "deployments", Some("a"))));
        assert!(!rule_allows(&rule, &request("patch", "apps", "deployments/scale", Some("a"))));
        let wildcard = json!({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]});
        assert!(rule_allows(&wildcard, &request("update", "x.io", "things/status", Some("a"))));
        assert!(!rule_allows(&wildcard, &request("update", "x.io", "things", Some("a"))));
        let named = json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["one"]});
        assert!(rule_allows(&named, &request("get", "", "configmaps", Some("one"))));
        assert!(!rule_allows(&named, &request("get", "", "configmaps", Some("two"))));
        assert!(!rule_allows(&named, &request("get", "", "configmaps", None)));
    }

    #[test]
    fn denials_read_like_the_real_server() {
        let user = User { name: "system:serviceaccount:a:b".into(), groups: vec![] };
        let e = forbidden(&user, &request("patch", "apps", "deployments/status", Some("web")));
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "deployments.apps \"web\" is forbidden: User \"system:serviceaccount:a:b\" cannot patch resource \"deployments/status\" in API group \"apps\" in the namespace \"ns\""
        );
    }

    #[test]
    fn service_account_subjects_default_to_the_binding_namespace() {
        let user = User { name: "system:serviceaccount:ns:sa".into(), groups: vec!["system:authenticated".into()] };
        let binding = json!({"subjects": [{"kind": "ServiceAccount", "name": "sa"}]});
        assert!(binds(&binding, &user, Some("ns")));
        assert!(!binds(&binding, &user, Some("other")));
        let group = json!({"subjects": [{"kind": "Group", "name": "system:authenticated"}]});
        assert!(binds(&group, &user, None));
    }
}
