//! The apply step of the Canary controller: writes a [`Desired`] in its order (the release's Kanary, route
//! Services, stable EndpointSlices, baseline and the target's images; then the canary Deployment), each
//! child only when the cache does not show it as desired, then deletes the owned objects no longer wanted
//! (each delete carries the uid checked as ours). Returns the events of what changed.

use super::build::{Desired, Kind, Orphan, ReleaseChildren, Why};
use super::observe::Observed;
use super::validate::Problem;
use crate::api::canary::Canary;
use crate::api::kanary::release_resource;
use crate::names::PROMOTION_FIELD_MANAGER;
use crate::names::canary::reasons;
use crate::report::Note;
use crate::runtime::caches::{CachedForm, Caches};
use crate::runtime::children::{self, ChildError, Written, write_child};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Writing or deleting a child (the step is derived from the verb and the kind).
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error("setting the images of Deployment {0:?} (promotion): {1}")]
    UpdateTarget(String, #[source] kube::Error),
}

/// What an apply did.
pub struct Applied {
    pub notes: Vec<Note>,
    /// The canary Deployment as it is now.
    pub deployment: Option<Deployment>,
    /// The API server refused the canary Deployment: a problem of the Canary, reported in its status.
    pub rejected: Option<Problem>,
}

/// Writes `desired` for `canary` and deletes its orphans.
pub async fn apply(
    canary: &Canary,
    desired: &Desired,
    observed: &Observed,
    client: &Client,
    caches: &Caches,
) -> Result<Applied, ApplyError> {
    let ns = canary.namespace().unwrap_or_default();
    let mut applied = Applied { notes: vec![], deployment: None, rejected: None };
    if let Some(release) = &desired.release {
        apply_release(canary, release, observed, client, caches, &mut applied.notes).await?;
    }
    if let Some(deployment) = &desired.deployment {
        let cached = observed.existing.as_deref().map(|d| d.to_deployment());
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let name = deployment.name_any();
        let (exists, cache) = (cached.is_some(), &caches.deployments);
        match write_child("Deployment", &deployments, deployment, cached.as_ref(), exists, cache).await {
            Ok(Written::Unchanged) => applied.deployment = cached,
            Ok(Written::Created(d)) => {
                applied.notes.push(Note::normal(reasons::CANARY_CREATED, format!("created Deployment {name:?}")));
                applied.deployment = Some(d);
            }
            Ok(Written::Applied(d)) => {
                if cached.as_ref().and_then(|o| o.metadata.generation) != d.metadata.generation {
                    applied.notes.push(Note::normal(reasons::CANARY_UPDATED, format!("updated Deployment {name:?}")));
                }
                applied.deployment = Some(d);
            }
            Ok(Written::AlreadyExists) => return Err(ChildError::NotCachedYet("Deployment", name).into()),
            Err(e) => match e.refused() {
                // the API server refused it (a changed selector, immutable): a problem of the Canary
                Some(message) => {
                    applied.rejected = Some(Problem::ApplyRejected { name, message: message.to_string() });
                    applied.deployment = cached;
                }
                // or failed, or someone created it since the cache was written (NotCachedYet: once the cache
                // has it, the next reconcile applies it or reports whose it is)
                None => return Err(e.into()),
            },
        }
    }
    applied.notes.extend(delete_orphans(canary, &desired.orphans, client).await?);
    Ok(applied)
}

/// Writes a release's children in order: the Kanary first, so that a rollback takes traffic from the
/// canary before anything else changes.
async fn apply_release(
    canary: &Canary,
    release: &ReleaseChildren,
    observed: &Observed,
    client: &Client,
    caches: &Caches,
    notes: &mut Vec<Note>,
) -> Result<(), ApplyError> {
    let ns = canary.namespace().unwrap_or_default();
    let seen = &observed.release;
    let cached_kanary = seen.kanary.as_ref().and_then(|k| k.as_deref());
    let current = cached_kanary.and_then(|k| k.spec.as_ref());
    // the whole spec: routes and weights, and the protocol, cohorts and overrides the traffic asks for
    let as_desired = current.is_some_and(|c| *c == release.kanary_spec);
    if let (false, Some(cache)) = (as_desired, &caches.kanaries) {
        let resource = release_resource();
        let kanaries: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
        write_child::<_, PartialObjectMeta<DynamicObject>, _>(
            "Kanary",
            &kanaries,
            &release.kanary,
            None,
            cached_kanary.is_some(),
            cache,
        )
        .await?;
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let cached_services = [&seen.stable_service, &seen.canary_service, &seen.baseline_service];
    for (desired, cached) in release.services.iter().zip(cached_services) {
        let cached = cached.as_deref().map(|c| c.to_service());
        let exists = cached.is_some();
        write_child::<_, PartialObjectMeta<Service>, _>(
            "Service",
            &services,
            desired,
            cached.as_ref(),
            exists,
            &caches.services,
        )
        .await?;
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    for slice in &release.slices {
        let cached = [&seen.stable_slice, &seen.stable_slice_v6]
            .into_iter()
            .flatten()
            .find(|c| c.name_any() == slice.name_any());
        // the cache keeps a compact slice: compared here, then written as a child with no cached copy
        let current = cached.is_some_and(|c| {
            c.desired_hash() == children::desired_hash(&slice.metadata) && c.endpoints.len() == slice.endpoints.len()
        });
        if !current {
            let exists = cached.is_some();
            write_child::<_, PartialObjectMeta<EndpointSlice>, _>(
                "EndpointSlice",
                &slices,
                slice,
                None,
                exists,
                &caches.endpoint_slices,
            )
            .await?;
        }
    }
    if let Some(baseline) = &release.baseline {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let cached = seen.baseline.as_deref().map(|b| b.to_deployment());
        let written = write_child::<_, PartialObjectMeta<Deployment>, _>(
            "Deployment",
            &deployments,
            baseline,
            cached.as_ref(),
            cached.is_some(),
            &caches.deployments,
        )
        .await?;
        if matches!(written, Written::Created(_)) {
            let message = format!(
                "created Deployment {:?}: the target's pods, for canary-versus-baseline checks",
                baseline.name_any()
            );
            notes.push(Note::normal(reasons::BASELINE_CREATED, message));
        }
    }
    if let Some(patch) = &release.target_images {
        let target = &canary.spec.target_deployment_name;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        // server-side apply, forced: the promotion takes the images over (the one write to the user's object)
        let params = PatchParams::apply(PROMOTION_FIELD_MANAGER).force();
        let before = observed.target.as_deref().and_then(|t| t.metadata.generation);
        let after = deployments
            .patch(target, &params, &Patch::Apply(patch))
            .await
            .map_err(|e| ApplyError::UpdateTarget(target.clone(), e))?;
        if after.metadata.generation != before {
            let revision = super::release::revision(&canary.spec);
            notes.push(Note::normal(
                reasons::TARGET_UPDATED,
                format!("set the images of Deployment {target:?} to {revision}"),
            ));
        }
    }
    Ok(())
}

/// Deletes the orphans (each only that very object: the delete carries its uid); one event per reason.
async fn delete_orphans(canary: &Canary, orphans: &[Orphan], client: &Client) -> Result<Vec<Note>, ApplyError> {
    let ns = canary.namespace().unwrap_or_default();
    let mut deleted: Vec<(Why, String)> = vec![];
    for orphan in orphans {
        let gone = match orphan.kind {
            Kind::Deployment => delete::<Deployment>(Api::namespaced(client.clone(), &ns), orphan).await,
            Kind::Service => delete::<Service>(Api::namespaced(client.clone(), &ns), orphan).await,
            Kind::EndpointSlice => delete::<EndpointSlice>(Api::namespaced(client.clone(), &ns), orphan).await,
            Kind::Kanary => {
                delete::<DynamicObject>(Api::namespaced_with(client.clone(), &ns, &release_resource()), orphan).await
            }
        }?;
        if gone {
            deleted.push((orphan.why, format!("{} {:?}", orphan.kind, orphan.name)));
        }
    }
    let listed = |why: Why| deleted.iter().filter(|(w, _)| *w == why).map(|(_, o)| o.as_str()).collect::<Vec<_>>();
    let mut notes = vec![];
    for old in listed(Why::PreviousTarget) {
        let target = &canary.spec.target_deployment_name;
        let message = format!("deleted {old}: this Canary now targets {target:?}");
        notes.push(Note::normal(reasons::PREVIOUS_CANARY_DELETED, message));
    }
    let removed = listed(Why::TrafficRemoved);
    if !removed.is_empty() {
        let message =
            format!("spec.traffic removed: deleted {}; the canary runs without a release", removed.join(", "));
        notes.push(Note::normal(reasons::RELEASE_REMOVED, message));
    }
    let removed = listed(Why::BaselineUnset);
    if !removed.is_empty() {
        let message = format!("spec.traffic.baseline unset: deleted {}", removed.join(", "));
        notes.push(Note::normal(reasons::BASELINE_REMOVED, message));
    }
    Ok(notes)
}

async fn delete<K>(api: Api<K>, orphan: &Orphan) -> Result<bool, ApplyError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    Ok(children::delete_child(orphan.kind.as_str(), &api, &orphan.name, &orphan.uid).await?)
}
