//! The write path: create, update, patch, server-side apply and delete, with the metadata rules of a real
//! API server (uid, generateName, generation bumps on spec changes only, resourceVersion preconditions,
//! status subresource separation, finalizers and deletionTimestamp, no-op writes that change nothing).
//! Each function runs under the server's single lock and commits at most one change per object.

use crate::apply::{self, Part};
use crate::errors::{ApiError, FieldError};
use crate::registry::{Registry, ResourceType, types_from_crd};
use crate::shape::Shape;
use crate::store::{ChangeType, Store};
use crate::{builtins, events, schema};
use serde_json::{Value, json};
use std::sync::Arc;

/// Everything the lock protects.
pub struct Inner {
    pub store: Store,
    pub registry: Registry,
    next_cluster_ip: u32,
    /// The first two bytes of the addresses Services get (`--service-cluster-ip-range`, a /16).
    pub service_network: [u8; 2],
}

impl Default for Inner {
    fn default() -> Self {
        let mut inner = Inner {
            store: Store::default(),
            registry: Registry::with_builtins(),
            next_cluster_ip: 1,
            service_network: [10, 96],
        };
        let ns = inner.registry.get("", "v1", "namespaces").expect("built-in");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            inner.create(&ns, None, obj, &WriteOptions::by("fake-apiserver")).expect("system namespaces");
        }
        inner
    }
}

/// Options every write carries: who writes (field manager), whether to persist, whether unknown fields
/// are an error (`fieldValidation=Strict`, what kubectl sends), and whether an apply takes over conflicts.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub manager: String,
    pub dry_run: bool,
    pub strict: bool,
    pub force: bool,
}

impl WriteOptions {
    pub fn by(manager: &str) -> Self {
        WriteOptions { manager: manager.into(), ..Default::default() }
    }
}

/// A PATCH request body and its media type (merge, JSON or strategic merge patch).
pub struct PatchBody<'a> {
    pub content_type: &'a str,
    pub body: &'a Value,
}

/// Options of a delete call.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
    /// `gracePeriodSeconds`: for a Pod bound to a node, how long its kubelet has to stop it.
    pub grace_period: Option<i64>,
}

/// The grace period of a deletion of `stored`: 0 but for a Pod bound to a node (`spec.nodeName`), whose
/// grace is the request's, else its `terminationGracePeriodSeconds` (default 30).
fn pod_grace_period(rt: &ResourceType, stored: &Value, requested: Option<i64>) -> i64 {
    if rt.kind != "Pod" || !rt.group.is_empty() || stored.pointer("/spec/nodeName").and_then(Value::as_str).is_none() {
        return 0;
    }
    requested
        .or_else(|| stored.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
        .unwrap_or(30)
        .max(0)
}

pub fn now() -> String {
    timestamp(chrono::Utc::now())
}

/// `at` as the API writes times (RFC 3339, whole seconds, UTC).
fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn shape_of(rt: &ResourceType) -> Shape<'_> {
    Shape::for_schema(rt.schema.as_ref().map(|s| &s.openapi))
}

fn part_for(rt: &ResourceType, status: bool) -> Part {
    match (rt.has_status, status) {
        (_, true) => Part::Status,
        (true, false) => Part::Main,
        (false, false) => Part::Whole,
    }
}

/// The object without metadata and status: what bumps `metadata.generation` when it changes.
fn spec_view(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

impl Inner {
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.registry.get(group, version, plural)
    }

    /// Reads an object in the shape of the version it is asked for.
    pub fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.store
            .get(&rt.bucket, ns.unwrap_or_default(), name)
            .map(|o| present(rt, o))
            .ok_or_else(|| ApiError::not_found(&rt.qualified(), name))
    }

    fn check_namespace(&self, rt: &ResourceType, ns: Option<&str>) -> Result<(), ApiError> {
        if let (true, Some(ns)) = (rt.namespaced, ns)
            && self.store.get("namespaces", "", ns).is_none()
        {
            return Err(ApiError::not_found("namespaces", ns));
        }
        Ok(())
    }

    /// Defaults and validates an object about to be stored (`old` on updates).
    fn admit(&mut self, rt: &ResourceType, obj: Value, old: Option<&Value>, strict: bool) -> Result<Value, ApiError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let kind_qualified = if rt.group.is_empty() { rt.kind.clone() } else { format!("{}.{}", rt.kind, rt.group) };
        let mut errors: Vec<FieldError> = builtins::validate_name(&rt.kind, &name);
        errors.extend(builtins::validate_owner_references(&obj));
        let obj = match &rt.schema {
            Some(schema) => {
                if let Some(labels) = obj.pointer("/metadata/labels") {
                    errors.extend(builtins::validate_labels(labels, "metadata.labels"));
                }
                match schema::admit(schema, obj, old) {
                    Ok((_, unknown)) if strict && !unknown.is_empty() => {
                        let list: Vec<String> = unknown.iter().map(|u| format!("unknown field \"{u}\"")).collect();
                        return Err(ApiError::bad_request(format!("strict decoding error: {}", list.join(", "))));
                    }
                    Ok((o, _)) => o,
                    Err(e) => {
                        errors.extend(e);
                        Value::Null
                    }
                }
            }
            None => {
                let mut obj = obj;
                let counter = &mut self.next_cluster_ip;
                let [a, b] = self.service_network;
                let mut next_ip = || {
                    *counter += 1;
                    format!("{a}.{b}.{}.{}", *counter / 250, *counter % 250 + 1)
                };
                builtins::keep_allocated_values(&rt.kind, &mut obj, old);
                builtins::apply_defaults(&rt.kind, &mut obj, &mut next_ip);
                errors.extend(builtins::validate(&rt.kind, &obj, old));
                obj
            }
        };
        if errors.is_empty() { Ok(obj) } else { Err(ApiError::invalid(&kind_qualified, &name, &errors)) }
    }

    /// Creates an object. `manager` gets the fields (operation Update), unless the object already carries
    /// managedFields (server-side apply of a new object).
    pub fn create(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        check_type(rt, &obj)?;
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        if rt.group == "events.k8s.io" {
            obj = events::to_core(&obj);
        }
        obj["apiVersion"] = json!(if rt.group == "events.k8s.io" { "v1".to_string() } else { rt.api_version() });
        obj["kind"] = json!(rt.kind);
        let meta_ns = obj["metadata"]["namespace"].as_str().map(String::from);
        match (rt.namespaced, ns, meta_ns.as_deref()) {
            (true, Some(path_ns), Some(body_ns)) if path_ns != body_ns => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({path_ns})"
                )));
            }
            (true, Some(path_ns), _) => obj["metadata"]["namespace"] = json!(path_ns),
            (true, None, _) => return Err(ApiError::bad_request("a namespaced object must be created in a namespace")),
            (false, _, _) => {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("namespace");
                }
            }
        }
        self.check_namespace(rt, ns)?;
        if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            match obj["metadata"]["generateName"].as_str() {
                Some(prefix) => {
                    let suffix: String = uuid::Uuid::new_v4().simple().to_string().chars().take(5).collect();
                    obj["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
                }
                None => {
                    return Err(ApiError::invalid(&rt.kind, "", &[FieldError::required("metadata.name")]));
                }
            }
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if self.store.get(&rt.bucket, ns.unwrap_or_default(), &name).is_some() {
            return Err(ApiError::already_exists(&rt.qualified(), &name));
        }
        if rt.has_status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        let meta = obj["metadata"].as_object_mut().expect("metadata is an object");
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
        ] {
            meta.remove(k);
        }
        let mut obj = self.admit(rt, obj, None, opts.strict)?;
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        meta["creationTimestamp"] = json!(now());
        meta["generation"] = json!(1);
        if obj.pointer("/metadata/managedFields").is_none() {
            apply::track_update(None, &mut obj, &opts.manager, shape_of(rt), part_for(rt, false), &now());
        }
        match rt.kind.as_str() {
            "Namespace" => obj["status"] = json!({"phase": "Active"}),
            "CustomResourceDefinition" => self.establish_crd(&mut obj)?,
            _ => {}
        }
        if opts.dry_run {
            return Ok(present(rt, &obj));
        }
        let stored = self.store.put(&rt.bucket, obj, ChangeType::Added);
        Ok(present(rt, &stored))
    }

    /// Validates a CRD, registers the resources it serves and marks it Established.
    fn establish_crd(&mut self, crd: &mut Value) -> Result<(), ApiError> {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let invalid = |msg: String| {
            let (field, rest) = msg.split_once(": ").unwrap_or(("spec", &msg));
            ApiError::invalid(
                "CustomResourceDefinition.apiextensions.k8s.io",
                &name,
                &[FieldError { field: field.into(), reason: "FieldValueInvalid", message: rest.into() }],
            )
        };
        let group = crd.pointer("/spec/group").and_then(Value::as_str).unwrap_or_default().to_string();
        let plural = crd.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or_default().to_string();
        if name != format!("{plural}.{group}") {
            return Err(invalid(format!(
                "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
            )));
        }
        let protected = group == "k8s.io"
            || group.ends_with(".k8s.io")
            || group == "kubernetes.io"
            || group.ends_with(".kubernetes.io");
        if protected && crd.pointer("/metadata/annotations/api-approved.kubernetes.io").is_none() {
            return Err(invalid(format!(
                "metadata.annotations[api-approved.kubernetes.io]: Required value: protected groups must have approval annotation \"api-approved.kubernetes.io\", see https://github.com/kubernetes/enhancements/pull/1111 (group {group})"
            )));
        }
        let storage = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| vs.iter().filter(|v| v["storage"] == true).count());
        if storage != Some(1) {
            return Err(invalid(
                "spec.versions: Invalid value: must have exactly one version marked as storage version".into(),
            ));
        }
        let types = types_from_crd(crd).map_err(invalid)?;
        for t in self.registry.all() {
            if t.group == group && t.plural == plural && t.crd.as_deref() != Some(name.as_str()) {
                return Err(invalid(format!("spec.names.plural: Invalid value: {plural:?}: is already in use")));
            }
        }
        self.registry.remove_crd(&name);
        for t in types {
            self.registry.insert(t);
        }
        crd["status"] = json!({
            "acceptedNames": crd["spec"]["names"].clone(),
            "storedVersions": crd["spec"]["versions"].as_array().into_iter().flatten()
                .filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>(),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()},
            ],
        });
        Ok(())
    }

    /// Stores `new` as the next state of `current` (an update, a patch result or an apply result).
    /// `track`: record `opts.manager` as owner of the changed fields (false when an apply already did).
    pub fn write_update(
        &mut self,
        rt: &Arc<ResourceType>,
        current: &Value,
        new: Value,
        track: bool,
        status: bool,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        check_type(rt, &new)?;
        let name = current["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if let Some(n) = new["metadata"]["name"].as_str()
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        check_uid(rt, current, new["metadata"]["uid"].as_str())?;
        let current_stored = stored_shape(rt, current);
        let mut new = stored_shape(rt, &new);
        let part = part_for(rt, status);
        // the part of the object this endpoint may not change comes from the stored object
        match part {
            Part::Status => {
                let status_value = new.get("status").cloned();
                // an apply (not tracked here) brings the owners of the fields it computed
                let applied_owners = new.pointer("/metadata/managedFields").cloned().filter(|_| !track);
                new = current_stored.clone();
                match status_value {
                    Some(s) => new["status"] = s,
                    None => {
                        new.as_object_mut().map(|m| m.remove("status"));
                    }
                }
                if let Some(owners) = applied_owners {
                    new["metadata"]["managedFields"] = owners;
                }
            }
            Part::Main => match current_stored.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().map(|m| m.remove("status"));
                }
            },
            Part::Whole => {}
        }
        let cur_meta = &current_stored["metadata"];
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
            "generation",
        ] {
            match cur_meta.get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    new["metadata"].as_object_mut().map(|m| m.remove(k));
                }
            }
        }
        if new.pointer("/metadata/managedFields").is_none()
            && let Some(mf) = cur_meta.get("managedFields")
        {
            new["metadata"]["managedFields"] = mf.clone();
        }
        new["metadata"]["resourceVersion"] = cur_meta["resourceVersion"].clone();
        // a deleting object may lose finalizers but not gain new ones
        if cur_meta.get("deletionTimestamp").is_some() {
            let before: Vec<Value> = cur_meta["finalizers"].as_array().cloned().unwrap_or_default();
            let after: Vec<Value> = new["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
            if after.iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &name,
                    &[FieldError::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        let mut new = self.admit(rt, new, Some(&current_stored), opts.strict)?;
        if spec_view(&new) != spec_view(&current_stored) {
            let g = current_stored["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        if track {
            apply::track_update(Some(&current_stored), &mut new, &opts.manager, shape_of(rt), part, &now());
        }
        if rt.kind == "CustomResourceDefinition" && part != Part::Status {
            new["status"] = current_stored["status"].clone();
            self.establish_crd(&mut new)?;
        }
        if new == current_stored {
            return Ok(present(rt, &current_stored)); // nothing changed: no write, no event, same resourceVersion
        }
        if opts.dry_run {
            return Ok(present(rt, &new));
        }
        let finalizers_done = new["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
        if new["metadata"].get("deletionTimestamp").is_some() && finalizers_done {
            let ns = new["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
            self.store.put(&rt.bucket, new, ChangeType::Modified);
            return self.remove_now(rt, &ns, &name).map(|o| present(rt, &o));
        }
        let stored = self.store.put(&rt.bucket, new, ChangeType::Modified);
        Ok(present(rt, &stored))
    }

    /// PUT: replaces the object, with an optimistic-concurrency check on `metadata.resourceVersion`.
    pub fn update(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: Option<&str>,
        name: &str,
        new: Value,
        status: bool,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let current = self.get(rt, ns, name)?;
        check_resource_version(rt, &current, new["metadata"]["resourceVersion"].as_str())?;
        self.write_update(rt, &current, new, true, status, opts)
    }

    /// PATCH with a JSON merge, JSON or strategic merge patch.
    pub fn patch(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: Option<&str>,
        name: &str,
        patch: PatchBody,
        status: bool,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let current = self.get(rt, ns, name)?;
        let mut patched = current.clone();
        let PatchBody { content_type, body: patch } = patch;
        match content_type {
            "application/merge-patch+json" => crate::patch::merge_patch(&mut patched, patch),
            "application/json-patch+json" => crate::patch::json_patch(&mut patched, patch).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?,
            "application/strategic-merge-patch+json" if rt.is_builtin() => {
                crate::patch::strategic_merge(&mut patched, patch, Shape::Builtin)
            }
            other => return Err(ApiError::unsupported_media_type(other)),
        }
        check_resource_version(rt, &current, patched["metadata"]["resourceVersion"].as_str())?;
        self.write_update(rt, &current, patched, true, status, opts)
    }

    /// Server-side apply (`application/apply-patch+yaml`): creates the object when it does not exist.
    pub fn server_side_apply(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: Option<&str>,
        name: &str,
        applied: &Value,
        status: bool,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        check_type(rt, applied)?;
        if applied["apiVersion"].as_str().is_none() || applied["kind"].as_str().is_none() {
            return Err(ApiError::bad_request("apiVersion and kind must be set in an applied configuration"));
        }
        if applied["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                applied["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        let existing = self.get(rt, ns, name).ok();
        let applied = stored_shape(rt, applied);
        let part = part_for(rt, status);
        let live = match &existing {
            Some(c) => stored_shape(rt, c),
            None if status => return Err(ApiError::not_found(&rt.qualified(), name)),
            None => {
                let mut skeleton =
                    json!({"apiVersion": applied["apiVersion"], "kind": rt.kind, "metadata": {"name": name}});
                if let Some(ns) = ns {
                    skeleton["metadata"]["namespace"] = json!(ns);
                }
                skeleton
            }
        };
        let result = apply::apply(&live, &applied, &opts.manager, opts.force, shape_of(rt), part, &now()).map_err(|conflicts| {
            let n = conflicts.len();
            let lines: Vec<String> = conflicts.iter().map(|c| format!("conflict with \"{}\": .{}", c.manager, c.path)).collect();
            let mut e = ApiError::new(409, "Conflict", format!("Apply failed with {n} conflict{}: {}", if n == 1 { "" } else { "s" }, lines.join("\n")));
            e.details = Some(json!({
                "name": name,
                "kind": rt.plural,
                "causes": conflicts.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": format!(".{}", c.path)})).collect::<Vec<_>>(),
            }));
            e
        })?;
        match existing {
            Some(current) => {
                // a resourceVersion in the applied configuration is a precondition, as in a real API server
                check_resource_version(rt, &current, applied["metadata"]["resourceVersion"].as_str())?;
                // and a uid that is not the object's is refused, as the real one does (422: the uid is
                // immutable), so an apply meant for a replaced object never takes the new one over
                if let Some(uid) = applied["metadata"]["uid"].as_str()
                    && Some(uid) != current["metadata"]["uid"].as_str()
                {
                    let field = crate::errors::FieldError::invalid("metadata.uid", uid, "field is immutable");
                    return Err(ApiError::invalid(&rt.qualified(), name, &[field]));
                }
                self.write_update(rt, &current, result, false, status, opts)
            }
            None => self.create(rt, ns, result, opts),
        }
    }

    /// DELETE of one object, with preconditions and propagation policy.
    pub fn delete(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let current = self.get(rt, ns, name)?;
        let stored = stored_shape(rt, &current);
        check_uid(rt, &stored, opts.precondition_uid.as_deref())?;
        check_resource_version(rt, &stored, opts.precondition_rv.as_deref())?;
        if opts.dry_run {
            return Ok(current);
        }
        let ns_key = ns.unwrap_or_default();
        let uid = stored["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let policy = opts.propagation.as_deref().unwrap_or("Background");
        if policy == "Orphan" {
            self.orphan_dependents(&uid);
        }
        let mut finalizers: Vec<Value> = stored["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
        if policy == "Foreground" && !finalizers.contains(&json!("foregroundDeletion")) && self.has_dependents(&uid) {
            finalizers.push(json!("foregroundDeletion"));
        }
        // a Pod bound to a node is deleted gracefully, as by a real API server: it is marked with a deletion
        // time grace seconds ahead, and its kubelet removes it (a delete with grace 0) once it has stopped it
        let grace = pod_grace_period(rt, &stored, opts.grace_period);
        if grace > 0 {
            let already = stored["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if already.is_some_and(|g| g <= grace) {
                return Ok(current);
            }
            let mut marked = stored.clone();
            let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
            marked["metadata"]["deletionTimestamp"] = json!(timestamp(at));
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            marked["metadata"]["finalizers"] = json!(finalizers);
            let out = self.store.put(&rt.bucket, marked, ChangeType::Modified);
            return Ok(present(rt, &out));
        }
        if finalizers.is_empty() {
            return self.remove_now(rt, ns_key, name).map(|o| present(rt, &o));
        }
        if stored["metadata"].get("deletionTimestamp").is_some()
            && stored["metadata"]["finalizers"].as_array() == Some(&finalizers)
        {
            return Ok(current);
        }
        let mut marked = stored.clone();
        marked["metadata"]["deletionTimestamp"] = json!(now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        marked["metadata"]["finalizers"] = json!(finalizers);
        let out = self.store.put(&rt.bucket, marked, ChangeType::Modified);
        Ok(present(rt, &out))
    }

    /// Removes an object from storage at once (no finalizers left), with what that takes along: a CRD its
    /// resources and objects, a namespace its contents.
    pub fn remove_now(&mut self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        let removed =
            self.store.remove(&rt.bucket, ns, name).ok_or_else(|| ApiError::not_found(&rt.qualified(), name))?;
        match rt.kind.as_str() {
            "CustomResourceDefinition" if rt.group == "apiextensions.k8s.io" => {
                let bucket = self.registry.all().find(|t| t.crd.as_deref() == Some(name)).map(|t| t.bucket.clone());
                self.registry.remove_crd(name);
                if let Some(b) = bucket {
                    self.store.drop_bucket(&b);
                }
            }
            "Namespace" if rt.group.is_empty() => {
                let buckets: Vec<String> =
                    self.registry.all().filter(|t| t.namespaced).map(|t| t.bucket.clone()).collect();
                for b in buckets {
                    let names: Vec<String> = self
                        .store
                        .list(&b, Some(name))
                        .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
                        .collect();
                    for n in names {
                        self.store.remove(&b, name, &n);
                    }
                }
            }
            _ => {}
        }
        Ok(removed)
    }

    fn has_dependents(&self, uid: &str) -> bool {
        self.store.all().any(|(_, o)| owned_by(o, uid))
    }

    fn orphan_dependents(&mut self, uid: &str) {
        let dependents: Vec<(String, Value)> =
            self.store.all().filter(|(_, o)| owned_by(o, uid)).map(|(b, o)| (b.clone(), o.clone())).collect();
        for (bucket, mut o) in dependents {
            if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"] != uid);
            }
            self.store.put(&bucket, o, ChangeType::Modified);
        }
    }
}

pub fn owned_by(o: &Value, uid: &str) -> bool {
    o["metadata"]["ownerReferences"].as_array().is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
}

/// A write or delete that names a uid other than the stored object's is a 409 Conflict (the object was
/// replaced by another of the same name).
fn check_uid(rt: &ResourceType, current: &Value, requested: Option<&str>) -> Result<(), ApiError> {
    let actual = current["metadata"]["uid"].as_str().unwrap_or_default();
    match requested {
        Some(uid) if uid != actual => Err(ApiError::conflict(
            &rt.qualified(),
            current["metadata"]["name"].as_str().unwrap_or_default(),
            &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"),
        )),
        _ => Ok(()),
    }
}

/// Optimistic concurrency: a write that names a resourceVersion other than the stored one is a 409 Conflict.
/// An absent or empty resourceVersion means an unconditional write.
fn check_resource_version(rt: &ResourceType, current: &Value, requested: Option<&str>) -> Result<(), ApiError> {
    match requested.filter(|rv| !rv.is_empty()) {
        Some(rv) if Some(rv) != current["metadata"]["resourceVersion"].as_str() => Err(ApiError::conflict(
            &rt.qualified(),
            current["metadata"]["name"].as_str().unwrap_or_default(),
            "the object has been modified; please apply your changes to the latest version and try again",
        )),
        _ => Ok(()),
    }
}

/// Rejects a body whose apiVersion or kind is not the endpoint's.
fn check_type(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if let Some(av) = obj["apiVersion"].as_str()
        && av != rt.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    if let Some(k) = obj["kind"].as_str()
        && k != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    Ok(())
}

/// An object as stored (core Events in the core shape, custom resources under their storage bucket's
/// version are kept in the version they were written in, with apiVersion rewritten on read).
fn stored_shape(rt: &ResourceType, obj: &Value) -> Value {
    if rt.group == "events.k8s.io" { events::to_core(obj) } else { obj.clone() }
}

/// An object as returned for a resource type: apiVersion of the version asked for, Events converted.
pub fn present(rt: &ResourceType, obj: &Value) -> Value {
    if rt.group == "events.k8s.io" {
        return events::from_core(obj);
    }
    let mut o = obj.clone();
    o["apiVersion"] = json!(rt.api_version());
    o
}
