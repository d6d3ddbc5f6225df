//! How the controllers speak for themselves: the one field manager of every write, and events (best
//! effort: a failure to record one is logged, never fails a reconcile).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// The field manager of everything the controllers write (server-side apply).
pub const FIELD_MANAGER: &str = "canary-controller";

/// The event recorder of this process (its pod name, when set, tells replicas apart).
pub fn recorder(client: kube::Client) -> Recorder {
    Recorder::new(client, Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() })
}

pub async fn publish(recorder: &Recorder, about: &ObjectReference, type_: EventType, reason: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = recorder.publish(&event, about).await {
        tracing::warn!(object = ?about.name, %reason, error = %e, "cannot record event");
    }
}
