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

/// A Warning event when condition `type_` of `after` is bad and its reason is not the one `before` had: an
/// event on each transition, never on every reconcile. `reason` is the condition's reason as a static string
/// (the reasons a controller sets are constants).
pub fn warn_on_transition(
    before: &[Condition],
    after: &[Condition],
    type_: &str,
    bad: Option<&'static str>,
) -> Option<crate::report::Note> {
    let reason = bad?;
    let now = after.iter().find(|c| c.type_ == type_ && c.reason == reason)?;
    (reason_of(before, type_) != Some(reason)).then(|| crate::report::Note::warning(reason, now.message.clone()))
}
