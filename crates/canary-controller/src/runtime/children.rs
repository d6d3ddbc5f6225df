//! Writes to the objects the controllers own, without ever taking over or deleting someone else's:
//! - an absent child is created with a create (POST): if the name was taken in between (by someone else, or
//!   by this controller's own earlier write the cache has not seen yet), the API server answers 409 and the
//!   caller retries once its cache holds the object, then applies it if it is its own or reports a Conflict;
//! - a child the controller owns is updated with server-side apply (one field manager, forced), carrying the
//!   uid of the object it was checked on: if that object was replaced under the same name meanwhile, the
//!   API server refuses the apply instead of it taking the replacement over;
//! - a child is deleted with a uid precondition, so that an object that replaced it under the same name is
//!   never deleted.
//!
//! A child whose cached copy already holds everything the desired object says is not written at all
//! ([`up_to_date`]); the desired object carries a hash of itself ([`with_desired_hash`]), so that a field the
//! controller stops setting still changes what is compared.
//!
//! A create records its fields under the field manager's `Update` operation; so that later applies can
//! remove fields they stop setting, the first apply turns the entry into an `Apply` entry (as `kubectl`'s
//! client-side to server-side apply upgrade does).

use super::caches::{Cache, CachedForm};
use crate::names::{DESIRED_HASH_ANNOTATION, FIELD_MANAGER};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::{PartialObjectMeta, Request};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// What a create found.
pub enum Created<K> {
    Created(K),
    /// Someone else created an object of that name first: it is left untouched.
    AlreadyExists,
}

/// What [`write`] did.
pub enum Written<K> {
    /// The cache showed the child as desired: nothing written.
    Unchanged,
    Created(K),
    Applied(K),
    /// Absent from the cache but taken meanwhile (by this controller or someone else): nothing written.
    AlreadyExists,
}

impl<K> Written<K> {
    /// The object as the API server stored it, when something was written.
    fn object(&self) -> Option<&K> {
        match self {
            Written::Created(k) | Written::Applied(k) => Some(k),
            Written::Unchanged | Written::AlreadyExists => None,
        }
    }
}

/// Writes a child this controller owns or is about to create: nothing when `cached` holds what is desired,
/// a server-side apply when it `exists` (its ownership checked before), a create otherwise. What is written
/// is noted in the child's `cache`, so that the watch event of the write wakes no one.
///
/// `R` is what is read back of the stored object: `K`, or `PartialObjectMeta<K>` when only its metadata is
/// read (decoding an answer the caller drops took more of the controller's CPU than sending the write).
pub async fn write<K, R, C>(
    api: &Api<K>,
    desired: &K,
    cached: Option<&K>,
    exists: bool,
    cache: &Cache<C>,
) -> Result<Written<R>, kube::Error>
where
    K: Resource + Clone + Serialize + Debug,
    R: Resource + DeserializeOwned,
    C: Resource<DynamicType = ()> + 'static,
{
    if cached.is_some_and(|cached| up_to_date(desired, cached)) {
        return Ok(Written::Unchanged);
    }
    let written = if exists {
        let mut desired = desired.clone();
        if let Some(uid) = cached.and_then(|c| c.meta().uid.clone()) {
            desired.meta_mut().uid = Some(uid);
        }
        Written::Applied(apply(api, &desired).await?)
    } else {
        match create(api, desired).await? {
            Created::Created(k) => Written::Created(k),
            Created::AlreadyExists => Written::AlreadyExists,
        }
    };
    if let Some(object) = written.object() {
        cache.note_written(object);
    }
    Ok(written)
}

/// Creates `desired`; `AlreadyExists` on 409. Its fields are recorded under the field manager's `Update`
/// operation; the first [`apply`] that follows hands them to server-side apply.
/// `R` as in [`write`].
pub async fn create<K, R>(api: &Api<K>, desired: &K) -> Result<Created<R>, kube::Error>
where
    K: Resource + Clone + Serialize + Debug,
    R: DeserializeOwned,
{
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    let body = serde_json::to_vec(desired).map_err(kube::Error::SerdeError)?;
    match send(api, Request::new(api.resource_url()).create(&params, body), "create").await {
        Ok(created) => Ok(Created::Created(created)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Created::AlreadyExists),
        Err(e) => Err(e),
    }
}

/// The managedFields of `object` with the field manager's `Update` entry (left by [`create`]) turned into an
/// `Apply` entry, or `None` when it has none.
fn fields_handed_to_apply<K: Resource>(object: &K) -> Option<Vec<ManagedFieldsEntry>> {
    let mut entries = object.meta().managed_fields.clone().unwrap_or_default();
    let mut converted = false;
    for e in entries.iter_mut() {
        if e.manager.as_deref() == Some(FIELD_MANAGER)
            && e.operation.as_deref() == Some("Update")
            && e.subresource.is_none()
        {
            e.operation = Some("Apply".into());
            converted = true;
        }
    }
    converted.then_some(entries)
}

/// Server-side applies `desired` (a child this controller owns) and returns the object as stored. The first
/// apply after a [`create`] hands the created fields to server-side apply (a merge patch of managedFields,
/// guarded by resourceVersion, tried again on a conflict) and applies again, so that fields `desired` no
/// longer sets are removed; a created child that is never updated costs no second write.
/// `R` as in [`write`].
pub async fn apply<K, R>(api: &Api<K>, desired: &K) -> Result<R, kube::Error>
where
    K: Resource + Clone + Serialize + Debug,
    R: Resource + DeserializeOwned,
{
    let name = desired.name_any();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let apply =
        || send::<K, R>(api, Request::new(api.resource_url()).patch(&name, &params, &Patch::Apply(desired)), "patch");
    let mut applied = apply().await?;
    for _ in 0..HANDOVER_ATTEMPTS {
        let Some(entries) = fields_handed_to_apply(&applied) else { return Ok(applied) };
        // a merge patch replaces the list; the resourceVersion makes it fail if the object changed meanwhile
        let patch = Patch::Merge(
            serde_json::json!({"metadata": {"resourceVersion": applied.resource_version(), "managedFields": entries}}),
        );
        let handover = Request::new(api.resource_url()).patch(&name, &PatchParams::default(), &patch);
        match send::<K, PartialObjectMeta<K>>(api, handover, "patch").await {
            Ok(_) => return apply().await,
            // changed meanwhile: apply again (a no-op but for the new resourceVersion) and retry
            Err(kube::Error::Api(e)) if e.code == 409 => applied = apply().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(applied)
}

/// Sends a write `request` built for `api` (what `Api`'s own methods do), reading back an `R` of the answer.
async fn send<K, R: DeserializeOwned>(
    api: &Api<K>,
    request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    verb: &'static str,
) -> Result<R, kube::Error>
where
    K: Resource + Clone,
{
    let mut request = request.map_err(kube::Error::BuildRequest)?;
    request.extensions_mut().insert(verb);
    api.clone().into_client().request::<R>(request).await
}

/// How many times [`apply`] tries to hand created fields to server-side apply while others write the object.
const HANDOVER_ATTEMPTS: usize = 3;

/// Deletes the object `name` only if it is still the one with `uid`; gone already, or replaced by another
/// object of that name, is not an error.
pub async fn delete<K>(api: &Api<K>, name: &str, uid: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Why writing or deleting a child failed. The verb and the child's kind name the reconcile's step
/// ([`ChildError::step`]: `CreateDeployment`, `ApplyService`, `DeleteKanary`), its metric label and log field.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("creating {0} {1:?}: {2}")]
    Create(&'static str, String, #[source] kube::Error),
    #[error("applying {0} {1:?}: {2}")]
    Apply(&'static str, String, #[source] kube::Error),
    #[error("deleting {0} {1:?}: {2}")]
    Delete(&'static str, String, #[source] kube::Error),
    /// Absent from the cache but taken meanwhile (by this controller or someone else): retried once the
    /// cache has it (then applied if it is ours, or reported).
    #[error("{0} {1:?} exists but is not in the cache yet: retrying")]
    NotCachedYet(&'static str, String),
}

impl ChildError {
    /// The step that failed: the verb and the kind.
    pub fn step(&self) -> String {
        match self {
            ChildError::Create(kind, ..) => format!("Create{kind}"),
            ChildError::Apply(kind, ..) => format!("Apply{kind}"),
            ChildError::Delete(kind, ..) => format!("Delete{kind}"),
            ChildError::NotCachedYet(..) => "NotCachedYet".into(),
        }
    }

    /// A write raced the cache: retried without a warning.
    pub fn waits_for_cache(&self) -> bool {
        matches!(self, ChildError::NotCachedYet(..))
    }

    /// The API server's answer when it refused the object itself (400, 422): a problem of the spec.
    pub fn refused(&self) -> Option<&str> {
        match self {
            ChildError::Create(_, _, kube::Error::Api(e)) | ChildError::Apply(_, _, kube::Error::Api(e))
                if e.code == 400 || e.code == 422 =>
            {
                Some(&e.message)
            }
            _ => None,
        }
    }
}

/// [`write`] of a child of `kind`: the error names the kind and what was tried, and a name taken meanwhile
/// is [`ChildError::NotCachedYet`].
pub async fn write_child<K, R, C>(
    kind: &'static str,
    api: &Api<K>,
    desired: &K,
    cached: Option<&K>,
    exists: bool,
    cache: &Cache<C>,
) -> Result<Written<R>, ChildError>
where
    K: Resource + Clone + Serialize + Debug,
    R: Resource + DeserializeOwned,
    C: Resource<DynamicType = ()> + 'static,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    match write(api, desired, cached, exists, cache).await {
        Ok(Written::AlreadyExists) => Err(ChildError::NotCachedYet(kind, name)),
        Ok(written) => Ok(written),
        Err(e) if exists => Err(ChildError::Apply(kind, name, e)),
        Err(e) => Err(ChildError::Create(kind, name, e)),
    }
}

/// [`write_child`] of a child cached as metadata only (`cached`: its cached form): nothing when the cache
/// shows it as desired (see [`metadata_up_to_date`]); only the metadata of what was stored is read back.
pub async fn write_metadata_cached<K, C>(
    kind: &'static str,
    api: &Api<K>,
    desired: &K,
    cached: Option<&C>,
    cache: &Cache<C>,
) -> Result<(), ChildError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
    C: CachedForm + 'static,
{
    if cached.is_some_and(|c| metadata_up_to_date(desired.meta(), &c.full_metadata())) {
        return Ok(());
    }
    write_child::<K, PartialObjectMeta<K>, C>(kind, api, desired, None, cached.is_some(), cache).await.map(|_| ())
}

/// [`delete`] of a child of `kind`; whether it went.
pub async fn delete_child<K>(kind: &'static str, api: &Api<K>, name: &str, uid: &str) -> Result<bool, ChildError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    delete(api, name, uid).await.map_err(|e| ChildError::Delete(kind, name.to_string(), e))
}

/// Is `obj` controlled by the object with `uid`?
pub fn owned_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.meta().owner_references.iter().flatten().any(|r| r.controller == Some(true) && r.uid == uid)
}

/// `desired`, annotated with a hash of itself.
pub fn with_desired_hash<K: Resource + Serialize>(mut desired: K) -> K {
    use sha2::Digest;
    let json = serde_json::to_vec(&desired).unwrap_or_default();
    let hash = format!("{:x}", sha2::Sha256::digest(&json));
    desired.meta_mut().annotations.get_or_insert_with(Default::default).insert(DESIRED_HASH_ANNOTATION.into(), hash);
    desired
}

/// The desired hash an object carries (see [`with_desired_hash`]).
pub fn desired_hash(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations.as_ref()?.get(DESIRED_HASH_ANNOTATION).map(String::as_str)
}

/// Whether `cached` already holds every field `desired` sets, with the same value (the server may have
/// added defaults; lists must have the same length). With [`with_desired_hash`], a field the controller
/// stopped setting shows as a changed hash.
pub fn up_to_date<K: Serialize>(desired: &K, cached: &K) -> bool {
    match (serde_json::to_value(desired), serde_json::to_value(cached)) {
        (Ok(desired), Ok(cached)) => holds(&desired, &cached),
        _ => false,
    }
}

/// Whether a child cached as metadata only is as desired: its metadata holds the desired metadata (whose
/// hash annotation stands for the rest) and nobody else wrote to it (every managedFields entry is ours).
pub fn metadata_up_to_date(desired: &ObjectMeta, cached: &ObjectMeta) -> bool {
    let ours = cached.managed_fields.as_ref().is_some_and(|entries| {
        !entries.is_empty() && entries.iter().all(|e| e.manager.as_deref() == Some(FIELD_MANAGER))
    });
    ours && up_to_date(&ObjectMeta { managed_fields: None, ..desired.clone() }, cached)
}

fn holds(desired: &serde_json::Value, cached: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (desired, cached) {
        (Value::Object(d), Value::Object(c)) => {
            d.iter().all(|(k, v)| v.is_null() || c.get(k).is_some_and(|cv| holds(v, cv)))
        }
        (Value::Array(d), Value::Array(c)) => d.len() == c.len() && d.iter().zip(c).all(|(dv, cv)| holds(dv, cv)),
        (d, c) => d == c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_child_is_up_to_date_when_the_cache_holds_what_is_desired() {
        let desired = with_desired_hash(service(json!({"metadata": {"name": "s", "labels": {"a": "1"}},
            "spec": {"selector": {"app": "x"}, "ports": [{"port": 80, "targetPort": "proxy"}]}})));
        let mut cached = serde_json::to_value(&desired).unwrap();
        // what the server adds does not matter
        cached["metadata"]["uid"] = json!("u");
        cached["spec"]["ports"][0]["protocol"] = json!("TCP");
        cached["spec"]["type"] = json!("ClusterIP");
        assert!(up_to_date(&desired, &service(cached.clone())));

        // a value changed by hand, an item removed, or a desired field removed: written again
        let mut changed = cached.clone();
        changed["spec"]["selector"]["app"] = json!("elsewhere");
        assert!(!up_to_date(&desired, &service(changed)));
        let mut shorter = cached.clone();
        shorter["spec"]["ports"] = json!([]);
        assert!(!up_to_date(&desired, &service(shorter)));
        let fewer_labels =
            with_desired_hash(service(json!({"metadata": {"name": "s"}, "spec": {"selector": {"app": "x"},
            "ports": [{"port": 80, "targetPort": "proxy"}]}})));
        assert!(!up_to_date(&fewer_labels, &service(cached)), "the hash changed");
    }
}
