//! How the controllers speak for themselves: the one field manager of every write, status writes (with a
//! timeout), and events (best effort: a failure to record one is logged, never fails a reconcile).

use crate::names::FIELD_MANAGER;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The event recorder of this process (its pod name, when set, tells replicas apart).
pub fn recorder(client: kube::Client) -> Recorder {
    Recorder::new(client, Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() })
}

/// An event a reconcile decided to record about its object.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub type_: EventType,
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    pub fn normal(reason: &'static str, message: String) -> Note {
        Note { type_: EventType::Normal, reason, message }
    }

    pub fn warning(reason: &'static str, message: String) -> Note {
        Note { type_: EventType::Warning, reason, message }
    }
}

/// The longest event note written, in bytes (the API server refuses notes over 1 KiB).
pub const MAX_NOTE_BYTES: usize = 1000;

/// At most `max` bytes of `text`, cut at a character boundary (`…` marks a cut).
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Records an event. kube's recorder counts an event again (a series) when one of the same type, reason and
/// action was recorded before, keeping the first one's note: each step of a release would then show only the
/// first step's message. So the action names the note too ([`action_of`]): events merge only when they say
/// the same thing, as client-go's do.
pub async fn publish(recorder: &Recorder, about: &ObjectReference, type_: EventType, reason: &str, note: String) {
    let note = bounded(&note, MAX_NOTE_BYTES);
    let action = action_of(reason, &note);
    let event = Event { type_, reason: reason.into(), note: Some(note), action, secondary: None };
    if let Err(e) = recorder.publish(&event, about).await {
        tracing::warn!(object = ?about.name, %reason, error = %e, "cannot record event");
    }
}

/// The event's action: its reason and a digest of its note (FNV-1a, stable across processes and versions),
/// e.g. `WeightSet-5f0c2a91`.
pub fn action_of(reason: &str, note: &str) -> String {
    let digest = note.bytes().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193));
    format!("{reason}-{digest:08x}")
}

/// How long a status write may take before the reconcile fails (and is retried with backoff).
pub const STATUS_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a status write failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusWriteError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("no answer within {STATUS_WRITE_TIMEOUT:?}")]
    Timeout,
}

impl StatusWriteError {
    /// Whether the object changed since it was read (a write with a resourceVersion precondition).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StatusWriteError::Api(kube::Error::Api(e)) if e.code == 409)
    }

    /// Whether the API server refused what was written (invalid, malformed or too large): writing it again
    /// cannot succeed.
    pub fn is_refused(&self) -> bool {
        matches!(self, StatusWriteError::Api(kube::Error::Api(e)) if matches!(e.code, 400 | 413 | 422))
    }
}

/// Server-side applies `status` as the status of object `name` (of `api_version`/`kind`) as field manager
/// `manager` (it owns only the fields it applies; [`FIELD_MANAGER`] for the controllers' status), within
/// [`STATUS_WRITE_TIMEOUT`]; with `resource_version`, only over that version of the object (409 Conflict
/// otherwise: the decision was made on a stale read). Returns the object's new resourceVersion.
pub async fn write_status<K>(
    manager: &str,
    api: &kube::Api<K>,
    name: &str,
    api_version: &str,
    kind: &str,
    status: &impl serde::Serialize,
    resource_version: Option<&str>,
) -> Result<Option<String>, StatusWriteError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut body = serde_json::json!({"apiVersion": api_version, "kind": kind, "status": status});
    if let Some(rv) = resource_version {
        body["metadata"] = serde_json::json!({"resourceVersion": rv});
    }
    let params = kube::api::PatchParams::apply(manager).force();
    let patch = kube::api::Patch::Apply(body);
    let write = api.patch_status(name, &params, &patch);
    let written = tokio::time::timeout(STATUS_WRITE_TIMEOUT, write).await.map_err(|_| StatusWriteError::Timeout)??;
    Ok(written.meta().resource_version.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_one_reason_are_told_apart_by_their_note() {
        let (twenty, fifty) =
            (action_of("WeightSet", "canary weight 20%"), action_of("WeightSet", "canary weight 50%"));
        assert_ne!(twenty, fifty, "two steps, two events");
        assert_eq!(twenty, action_of("WeightSet", "canary weight 20%"), "the same note: one event, counted");
        assert!(twenty.starts_with("WeightSet-") && twenty.len() == "WeightSet-".len() + 8, "{twenty}");
    }
}
