//! Status conditions shared by the controllers: one place that keeps `lastTransitionTime` while a
//! condition's status does not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// What a controller observed for one condition type.
pub struct Observed<'a> {
    pub type_: &'a str,
    pub ok: bool,
    pub reason: &'a str,
    pub message: String,
}

/// Builds a condition, keeping the previous transition time when the status is unchanged.
pub fn condition(observed: Observed, generation: Option<i64>, previous: &[Condition], now: &Time) -> Condition {
    let status = if observed.ok { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == observed.type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: observed.type_.into(),
        status,
        reason: observed.reason.into(),
        message: observed.message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The reason of a condition type in a list of conditions.
pub fn reason_of<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions.iter().find(|c| c.type_ == type_).map(|c| c.reason.as_str())
}
