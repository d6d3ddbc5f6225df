//! Writes to the objects the controllers own, without ever taking over or deleting someone else's:
//! - an absent child is created with a create (POST): if the name was taken in between (by someone else, or
//!   by this controller's own earlier write the cache has not seen yet), the API server answers 409 and the
//!   caller retries once its cache holds the object, then applies it if it is its own or reports a Conflict;
//! - a child the controller owns is updated with server-side apply (one field manager, forced);
//! - a child is deleted with a uid precondition, so that an object that replaced it under the same name is
//!   never deleted.
//!
//! A create records its fields under the field manager's `Update` operation; so that later applies can
//! remove fields they stop setting, the entry is turned into an `Apply` entry at once (as `kubectl`'s
//! client-side to server-side apply upgrade does).

use crate::report::FIELD_MANAGER;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
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

/// Creates `desired`, owned by the field manager's `Apply` entry; `AlreadyExists` on 409.
pub async fn create<K>(api: &Api<K>, desired: &K) -> Result<Created<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    let created = match api.create(&params, desired).await {
        Ok(created) => created,
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Created::AlreadyExists),
        Err(e) => return Err(e),
    };
    Ok(Created::Created(adopt_fields_as_apply(api, created).await))
}

/// Turns the field manager's `Update` entry of a just-created object into an `Apply` entry. Best effort:
/// if the object changed meanwhile, the next apply still works (it only cannot remove those fields).
async fn adopt_fields_as_apply<K>(api: &Api<K>, created: K) -> K
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let mut entries = created.meta().managed_fields.clone().unwrap_or_default();
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
    if !converted {
        return created;
    }
    // a merge patch replaces the list; the resourceVersion makes it fail if the object changed meanwhile
    let patch =
        serde_json::json!({"metadata": {"resourceVersion": created.resource_version(), "managedFields": entries}});
    match api.patch(&created.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(patched) => patched,
        Err(e) => {
            tracing::debug!(name = %created.name_any(), error = %e, "could not hand the created fields to server-side apply");
            created
        }
    }
}

/// Server-side applies `desired` (a child this controller owns) and returns the object as stored.
pub async fn apply<K>(api: &Api<K>, desired: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    api.patch(&desired.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired)).await
}

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

/// Is `obj` controlled by the object with `uid`?
pub fn owned_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.meta().owner_references.iter().flatten().any(|r| r.controller == Some(true) && r.uid == uid)
}
