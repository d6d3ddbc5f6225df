//! The release of a Canary with `traffic`, as a pure state machine: from the spec, the release status the
//! previous reconcile wrote, and what the cluster shows now ([`Inputs`]), [`advance`] decides the next
//! release status, the events, and when to look again. Everything it needs to resume lives in that status
//! (step, its start, the analysis window's start and counters), so a controller restart or a leader change
//! resumes at the same step with the same timers. No client in scope; the reconcile does the IO.
//!
//! Steps: `setWeight` moves on once every proxy pod serves the weight; `pause` waits its duration (or for a
//! `resume`/`promote` request); `analysis` measures one `interval` of the proxy's counters at the current
//! weight and judges it ([`judge`]): passed moves on, failed is measured again until `failureLimit` is
//! exceeded (then rollback: weight 0, canary scaled to 0), too little traffic pauses (inconclusive never
//! promotes). After the last step the target is updated to the canary's images (by the controller with
//! `promotion.updateTarget`, else by the user), then all traffic goes to it and the canary is scaled to 0.
//!
//! Requests (annotation [`REQUEST_ANNOTATION`], acted on once per value): `resume`, `promote`, `abort`,
//! `retry`. `spec.paused` holds a progressing release where it is.
//!
//! This module is the machine (the steps, requests, pauses, rollbacks); `settings` reads the spec with its
//! defaults; `judging` judges a window.

mod judging;
mod settings;

pub use judging::*;
pub use settings::*;

use super::statistics;
use crate::api::canary::{
    Analysis, CanarySpec, Compare, ComparisonResult, Counters, Evidence, Metric, MetricCheck, MetricResult, OnMarginal,
    OnNoData, OnWebhookFailure, Phase, ReleaseStatus, ReleaseStep, RouteCounters, RouteRequestSummary,
    StableComparison, Verdict, Window, WindowRequests, Worse as ApiWorse,
};
use crate::names::REQUEST_ANNOTATION;
use crate::names::canary::reasons;
use crate::report::{Note, bounded};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;
use std::time::Duration;

/// Judged windows kept in the status.
pub const EVIDENCE_KEPT: usize = 20;
/// The longest analysis window (the schema's maximum too).
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// How often a release that waits on the cluster (proxies, rollouts) looks again.
const POLL: Duration = Duration::from_secs(1);
/// How often a release that waits on people looks again (their requests wake it at once).
const IDLE: Duration = Duration::from_secs(600);
/// How often an open HTTP analysis window's requests so far are read into the status.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What the cluster shows now.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The Canary's name and namespace (for webhook calls).
    pub name: &'a str,
    pub namespace: &'a str,
    /// The images the Canary's spec asks for (see [`revision`]).
    pub revision: String,
    /// The target Deployment's containers run those images.
    pub target_runs_revision: bool,
    /// The target Deployment's rollout is complete (every replica updated and available).
    pub target_rolled_out: bool,
    pub canary_ready: bool,
    /// The canary weight every proxy pod serves, when the proxies are in sync with the Kanary.
    pub served_weight: Option<i32>,
    /// The proxy pods' counters now, when the caller read them.
    pub stats: Option<&'a BTreeMap<String, RouteCounters>>,
    /// The answers of the checks' PromQL queries (by the check's index), when the caller ran them.
    pub queried: Option<&'a [Option<Queried>]>,
    /// The answer of a webhook step, when the caller called it: used only by the step it was called for.
    pub called: Option<&'a Called>,
    /// The routes' request latencies over the window that ends, when the caller read them (HTTP traffic).
    pub latencies: Option<&'a WindowLatencies>,
    /// The value of the request annotation.
    pub request: Option<&'a str>,
    pub paused: bool,
    pub now: &'a Time,
}

/// What [`advance`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub release: ReleaseStatus,
    pub notes: Vec<Note>,
    /// When to look again (a timer of the release, or a poll of what it waits for).
    pub requeue: Duration,
    /// What the release needs to know before it can go on: gather it and advance again with it.
    pub need: Option<Need>,
    /// The verdicts of the windows judged by this move.
    pub judged: Vec<Verdict>,
    /// Set the target Deployment's images to the canary's.
    pub update_target: bool,
}

/// Evidence a release asks for (gathered off the reconcile, see `canary::evidence`).
#[derive(Debug, Clone, PartialEq)]
pub enum Need {
    /// The proxies' counters now, to start a window.
    Counters,
    /// The proxies' counters and the answers of the checks' PromQL queries, to judge a window.
    CountersAndQueries,
    /// The proxies' counters and the requests' latencies so far, to show an open HTTP window's progress
    /// (`window.requests`); nothing is judged on them.
    Progress,
    /// The answer of the current step's webhook.
    Webhook(Call),
}

impl Decision {
    /// Whether the release asks for the proxies' counters.
    pub fn wants_stats(&self) -> bool {
        matches!(self.need, Some(Need::Counters | Need::CountersAndQueries | Need::Progress))
    }

    /// Whether the release asks for PromQL answers (with the counters).
    pub fn wants_queries(&self) -> bool {
        matches!(self.need, Some(Need::CountersAndQueries))
    }

    /// The webhook call the release asks for.
    pub fn wants_call(&self) -> Option<&Call> {
        match &self.need {
            Some(Need::Webhook(call)) => Some(call),
            _ => None,
        }
    }

    /// Replicas the canary runs: none once the release is over.
    pub fn canary_scaled_down(&self) -> bool {
        self.release.phase.is_final()
    }
}

/// The images of a spec's `targetContainers`: `name=image`, sorted, comma separated.
pub fn revision(spec: &CanarySpec) -> String {
    let mut pairs: Vec<String> = spec.target_containers.iter().map(|c| format!("{}={}", c.name, c.image)).collect();
    pairs.sort();
    pairs.join(",")
}

fn elapsed(from: &Time, now: &Time) -> Duration {
    let d = now.0.duration_since(from.0);
    if d.is_negative() { Duration::ZERO } else { Duration::from_millis(d.as_millis() as u64) }
}

fn note(notes: &mut Vec<Note>, reason: &'static str, message: String) {
    notes.push(Note::normal(reason, message));
}

fn warn(notes: &mut Vec<Note>, reason: &'static str, message: String) {
    notes.push(Note::warning(reason, message));
}

/// The request action of an annotation value (`retry:2` is `retry`).
fn action(request: &str) -> &str {
    request.split(':').next().unwrap_or_default().trim()
}

/// Where the release goes next; see the module documentation.
pub fn advance(spec: &CanarySpec, previous: Option<&ReleaseStatus>, inputs: &Inputs) -> Decision {
    let settings = Settings::of(spec);
    let steps = &settings.steps;
    let now = inputs.now;
    let mut notes = vec![];
    let mut release = match previous {
        Some(p) if p.revision == inputs.revision => p.clone(),
        _ => start(previous, inputs, &mut notes),
    };
    if let Some(request) = inputs.request
        && release.handled_request.as_deref() != Some(request)
    {
        release.handled_request = Some(request.to_string());
        handle_request(&mut release, action(request), steps, now, &mut notes);
    }
    if inputs.paused && release.phase == Phase::Progressing {
        pause(&mut release, format!("{HELD_BY_SPEC}: set it to false to go on"), &mut notes);
    } else if !inputs.paused && release.phase == Phase::Paused && release.message.starts_with(HELD_BY_SPEC) {
        resume(&mut release, &mut notes);
    }

    let mut decision = Decision { release, notes, requeue: IDLE, need: None, judged: vec![], update_target: false };
    // a reconcile takes the release through as many steps as what the cluster shows allows
    for _ in 0..=steps.len() + 1 {
        if !progress(&mut decision, &settings, inputs) {
            break;
        }
    }
    let release = &mut decision.release;
    if release.phase.is_final() {
        release.weight = 0;
        release.window = None;
    }
    release.step_description = match release.phase {
        Phase::Progressing | Phase::Paused => step_description(steps, release.step),
        _ => "done".into(),
    };
    release.message = bounded(&release.message, MAX_MESSAGE);
    decision
}

/// The longest `status.release.message` written, in bytes.
pub const MAX_MESSAGE: usize = 2048;
/// The longest text of a check's evidence (the query as run, why there was no data), in bytes: the status
/// stays far under the API server's limit with [`EVIDENCE_KEPT`] windows of 16 checks.
pub const MAX_EVIDENCE_TEXT: usize = 512;

/// A number for the status: the API stores no NaN or infinity (serialized as `null`, refused by the schema),
/// so those are written as 0 (NaN) or the largest finite value of their sign. Values judged are finite
/// before this (non-finite ones are no data); this keeps any other number writable.
pub fn finite(value: f64) -> f64 {
    match value {
        v if v.is_finite() => v,
        v if v.is_nan() => 0.0,
        v if v > 0.0 => f64::MAX,
        _ => f64::MIN,
    }
}

/// How the message of a release held by `spec.paused` begins (and nothing else holds it).
pub const HELD_BY_SPEC: &str = "held by spec.paused";

/// A new release (new images): it starts at the first step, unless the target already runs those images.
/// A request made before there was any release (none in the status: a new Canary, or `traffic` added back)
/// is taken as handled: it was meant for no release, and an old one must not act on this one.
fn start(previous: Option<&ReleaseStatus>, inputs: &Inputs, notes: &mut Vec<Note>) -> ReleaseStatus {
    let handled_request = match previous {
        Some(p) => p.handled_request.clone(),
        None => inputs.request.map(str::to_string),
    };
    let mut release = ReleaseStatus {
        revision: inputs.revision.clone(),
        handled_request,
        step_started_at: Some(inputs.now.clone()),
        ..Default::default()
    };
    if inputs.target_runs_revision {
        release.phase = Phase::Succeeded;
        release.message = "the target already runs these images: nothing to release".into();
    } else {
        release.phase = Phase::Progressing;
        release.message = "release started".into();
        note(notes, reasons::STARTED, format!("release of {} started", inputs.revision));
    }
    release
}

fn pause(release: &mut ReleaseStatus, message: String, notes: &mut Vec<Note>) {
    release.phase = Phase::Paused;
    release.window = None;
    note(notes, reasons::PAUSED, message.clone());
    release.message = message;
}

fn resume(release: &mut ReleaseStatus, notes: &mut Vec<Note>) {
    release.phase = Phase::Progressing;
    release.message = "resumed".into();
    note(notes, reasons::RESUMED, format!("release resumed at step {}", release.step + 1));
}

fn next_step(release: &mut ReleaseStatus, now: &Time) {
    release.step += 1;
    release.step_started_at = Some(now.clone());
    release.window = None;
    release.last_call_at = None;
    release.extended_windows = 0;
}

/// How many marginal windows a step measures again (`onMarginal: Extend`) before the release pauses.
pub const MAX_EXTENDED_WINDOWS: i32 = 3;

/// How often a webhook step with `onFailure: Retry` calls again.
const WEBHOOK_RETRY: Duration = Duration::from_secs(5);
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// A webhook call to make: `POST url` with `body` (JSON), within `timeout`, for step `step` (0-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub step: i32,
    pub url: String,
    pub body: serde_json::Value,
    pub timeout: Duration,
}

/// The answer of a webhook step's call: what it answered (`HTTP 200`), or why it did not pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Called {
    /// The step (0-based) and the URL it was called for: each webhook step is judged by its own answer.
    pub step: i32,
    pub url: String,
    pub answer: Result<String, String>,
}

fn roll_back(release: &mut ReleaseStatus, phase: Phase, message: String, notes: &mut Vec<Note>) {
    release.phase = phase;
    release.weight = 0;
    release.window = None;
    let reason = if phase == Phase::Aborted { reasons::ABORTED } else { reasons::ROLLED_BACK };
    warn(notes, reason, format!("{message}: no traffic to the canary, canary scaled to 0"));
    release.message = message;
}

fn handle_request(release: &mut ReleaseStatus, action: &str, steps: &[ReleaseStep], now: &Time, notes: &mut Vec<Note>) {
    let final_phase = release.phase.is_final();
    match action {
        "resume" if release.phase == Phase::Paused => {
            let at_pause_step = steps.get(release.step as usize).is_some_and(|s| s.pause.is_some());
            if at_pause_step {
                next_step(release, now);
            }
            resume(release, notes);
        }
        "promote" if !final_phase && release.phase != Phase::Promoting => {
            release.phase = Phase::Promoting;
            release.window = None;
            release.step = steps.len() as i32;
            release.message = "promoted by request: remaining steps skipped".into();
            note(notes, reasons::PROMOTING, "promotion requested: remaining steps skipped".into());
        }
        "abort" if !final_phase => roll_back(release, Phase::Aborted, "aborted by request".into(), notes),
        "retry" if matches!(release.phase, Phase::RolledBack | Phase::Aborted) => {
            release.phase = Phase::Progressing;
            release.step = 0;
            release.step_started_at = Some(now.clone());
            release.failed_windows = 0;
            release.message = "retried by request".into();
            note(notes, reasons::RETRIED, format!("release of {} started again", release.revision));
        }
        "resume" | "promote" | "abort" | "retry" => note(
            notes,
            reasons::UNKNOWN_REQUEST,
            format!("request {action:?} ignored: the release is {:?}", release.phase),
        ),
        other => warn(
            notes,
            reasons::UNKNOWN_REQUEST,
            format!("annotation {REQUEST_ANNOTATION}: unknown request {other:?}: use resume, promote, abort or retry"),
        ),
    }
}

/// One move of the release; false when it has to wait.
fn progress(decision: &mut Decision, settings: &Settings, inputs: &Inputs) -> bool {
    let now = inputs.now;
    let release = &mut decision.release;
    let notes = &mut decision.notes;
    match release.phase {
        Phase::Progressing => {}
        Phase::Promoting => {
            decision.update_target = settings.update_target && !inputs.target_runs_revision;
            if inputs.target_runs_revision && inputs.target_rolled_out {
                release.phase = Phase::Succeeded;
                release.message = "the target runs the canary's images: all traffic to it, canary scaled to 0".into();
                note(notes, reasons::SUCCEEDED, format!("release of {} succeeded", release.revision));
                return false;
            }
            release.message = match (inputs.target_runs_revision, settings.update_target) {
                (true, _) => "waiting for the target's rollout to complete".into(),
                (false, true) => "updating the target Deployment to the canary's images".into(),
                (false, false) => format!(
                    "waiting for the target Deployment to run {} (promotion.updateTarget is off: update it)",
                    release.revision
                ),
            };
            decision.requeue = POLL;
            return false;
        }
        _ => return false,
    }
    if !inputs.canary_ready {
        release.message = "waiting for the canary Deployment to be ready".into();
        decision.requeue = POLL;
        return false;
    }
    let Some(step) = settings.steps.get(release.step as usize) else {
        release.phase = Phase::Promoting;
        release.window = None;
        note(notes, reasons::PROMOTING, "every step passed: promoting".into());
        return true;
    };
    if let Some(weight) = step.set_weight {
        if release.weight != weight {
            release.weight = weight;
            note(notes, reasons::WEIGHT_SET, format!("canary weight {weight}%"));
        }
        if inputs.served_weight == Some(weight) {
            next_step(release, now);
            return true;
        }
        release.message = format!("waiting for every proxy pod to serve weight {weight}");
        decision.requeue = POLL;
        return false;
    }
    if let Some(p) = &step.pause {
        let started = release.step_started_at.clone().unwrap_or_else(|| now.clone());
        let Some(length) = p.duration.as_deref().and_then(duration) else {
            pause(release, format!("pause step {}: resume or promote to go on", release.step + 1), notes);
            return false;
        };
        let gone = elapsed(&started, now);
        if gone >= length {
            next_step(release, now);
            return true;
        }
        release.message = format!("pause step {} for {}", release.step + 1, p.duration.as_deref().unwrap_or_default());
        decision.requeue = length - gone;
        return false;
    }
    if let Some(hook) = &step.webhook {
        let on_failure = hook.on_failure.unwrap_or(OnWebhookFailure::Pause);
        let own_answer = inputs.called.filter(|c| c.step == release.step && c.url == hook.url);
        let Some(Called { answer, .. }) = own_answer else {
            let since = release.last_call_at.as_ref().map(|t| elapsed(t, now));
            match since.filter(|s| on_failure == OnWebhookFailure::Retry && *s < WEBHOOK_RETRY) {
                Some(since) => decision.requeue = WEBHOOK_RETRY - since,
                None => {
                    let body = serde_json::json!({"canary": inputs.name, "namespace": inputs.namespace,
                        "revision": release.revision, "step": release.step + 1, "weight": release.weight,
                        "phase": release.phase});
                    let timeout = hook.timeout.as_deref().and_then(duration).unwrap_or(WEBHOOK_TIMEOUT);
                    let step = release.step;
                    decision.need = Some(Need::Webhook(Call { step, url: hook.url.clone(), body, timeout }));
                    decision.requeue = POLL;
                }
            }
            return false;
        };
        let first_call = release.last_call_at.is_none();
        release.last_call_at = Some(now.clone());
        let step_number = release.step + 1;
        return match answer {
            Ok(answered) => {
                note(notes, reasons::WEBHOOK_PASSED, format!("step {step_number}: {} answered {answered}", hook.url));
                next_step(release, now);
                true
            }
            Err(why) => {
                let failed = format!("step {step_number}: webhook {} did not pass: {why}", hook.url);
                match on_failure {
                    OnWebhookFailure::Pause => pause(release, format!("{failed}: resume to call it again"), notes),
                    OnWebhookFailure::Fail => roll_back(release, Phase::RolledBack, failed, notes),
                    OnWebhookFailure::Retry => {
                        if first_call {
                            warn(notes, reasons::WEBHOOK_FAILED, format!("{failed}: calling it again every 5s"));
                        }
                        release.message = format!("{failed}: calling it again every 5s");
                        decision.requeue = WEBHOOK_RETRY;
                    }
                }
                false
            }
        };
    }
    // an analysis step
    if inputs.served_weight != Some(release.weight) {
        release.message = format!("waiting for every proxy pod to serve weight {}", release.weight);
        decision.requeue = POLL;
        return false;
    }
    let Some(stats) = inputs.stats else {
        let window_over = release.window.as_ref().is_none_or(|w| elapsed(&w.started_at, now) >= settings.interval);
        if window_over {
            let queries = release.window.is_some() && settings.checks.iter().any(|c| c.prometheus.is_some());
            decision.need = Some(if queries { Need::CountersAndQueries } else { Need::Counters });
            decision.requeue = POLL;
        } else {
            let window = release.window.as_ref().expect("a window");
            decision.requeue = settings.interval - elapsed(&window.started_at, now);
            // an HTTP window's progress, read every PROGRESS_EVERY while it is measured
            if settings.http {
                let since = elapsed(window.measured_at.as_ref().unwrap_or(&window.started_at), now);
                match PROGRESS_EVERY.checked_sub(since) {
                    Some(wait) if !wait.is_zero() => decision.requeue = decision.requeue.min(wait),
                    _ => {
                        decision.need = Some(Need::Progress);
                        decision.requeue = decision.requeue.min(PROGRESS_EVERY);
                    }
                }
            }
        }
        return false;
    };
    let Some(window) = release.window.clone() else {
        release.window =
            Some(Window { started_at: now.clone(), counters: stats.clone(), requests: None, measured_at: None });
        release.message = format!("analysis window of {:?} at weight {}", settings.interval, release.weight);
        note(notes, reasons::ANALYSIS_STARTED, release.message.clone());
        decision.requeue = if settings.http { settings.interval.min(PROGRESS_EVERY) } else { settings.interval };
        return false;
    };
    let gone = elapsed(&window.started_at, now);
    if gone < settings.interval {
        // read before the window is over: its progress so far
        decision.requeue = settings.interval - gone;
        if settings.http {
            let canary = window_counters(&window.counters, stats, |r| &r.canary);
            let stable = window_counters(&window.counters, stats, |r| &r.stable);
            let sorted = inputs.latencies.map(WindowLatencies::sorted);
            let open = release.window.as_mut().expect("a window");
            open.requests = Some(window_requests(&canary, &stable, sorted.as_ref(), gone.as_secs_f64()));
            open.measured_at = Some(now.clone());
            decision.requeue = decision.requeue.min(PROGRESS_EVERY);
        }
        return false;
    }
    let evidence = judge(settings, release, &window, stats, inputs.queried, inputs.latencies, now);
    let verdict = evidence.verdict;
    decision.judged.push(verdict);
    let summary = summarize(&evidence);
    release.evidence.push(evidence);
    let excess = release.evidence.len().saturating_sub(EVIDENCE_KEPT);
    release.evidence.drain(..excess);
    release.window = None;
    match verdict {
        Verdict::Passed => {
            note(notes, reasons::ANALYSIS_PASSED, format!("step {} passed: {summary}", release.step + 1));
            next_step(release, now);
            true
        }
        Verdict::Failed => {
            release.failed_windows += 1;
            if release.failed_windows > settings.failure_limit {
                let message = format!("step {} failed: {summary}", release.step + 1);
                warn(notes, reasons::ANALYSIS_FAILED, message.clone());
                roll_back(release, Phase::RolledBack, message, notes);
                return false;
            }
            warn(
                notes,
                reasons::ANALYSIS_FAILED,
                format!(
                    "step {} failed ({} of {} failures allowed), measuring again: {summary}",
                    release.step + 1,
                    release.failed_windows,
                    settings.failure_limit
                ),
            );
            true
        }
        Verdict::Marginal if release.extended_windows < MAX_EXTENDED_WINDOWS => {
            release.extended_windows += 1;
            let message = format!(
                "step {} marginal ({} of {MAX_EXTENDED_WINDOWS} extra windows), measuring again: {summary}",
                release.step + 1,
                release.extended_windows
            );
            note(notes, reasons::EXTENDED, message.clone());
            release.message = message;
            true
        }
        Verdict::Marginal => {
            let message = format!(
                "step {} still marginal after {MAX_EXTENDED_WINDOWS} extra windows: {summary}: resume to measure again, \
                 or promote",
                release.step + 1
            );
            warn(notes, reasons::INCONCLUSIVE, message.clone());
            release.phase = Phase::Paused;
            release.extended_windows = 0;
            release.message = message;
            false
        }
        Verdict::Inconclusive => {
            let canary_sessions = release.evidence.last().map(|e| e.canary_sessions).unwrap_or(0);
            let why = if canary_sessions < settings.min_samples {
                format!("fewer than {} canary connections", settings.min_samples)
            } else {
                "a check had no data".into()
            };
            let message = format!(
                "step {} inconclusive: {summary}; {why}: resume to measure again, or promote",
                release.step + 1
            );
            warn(notes, reasons::INCONCLUSIVE, message.clone());
            release.phase = Phase::Paused;
            release.message = message;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::canary::{Compare, Pause, PrometheusMetric, Promotion, TargetContainer, WebhookStep};
    use proptest::prelude::*;
    use serde_json::json;

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + second).unwrap())
    }

    fn spec(steps: Vec<ReleaseStep>) -> CanarySpec {
        CanarySpec {
            target_deployment_name: "app".into(),
            target_containers: vec![TargetContainer { name: "app".into(), image: "app:v2".into() }],
            replicas: None,
            traffic: None,
            steps,
            analysis: Some(Analysis { interval: Some("30s".into()), min_samples: Some(10), ..Default::default() }),
            promotion: None,
            paused: false,
        }
    }

    fn weight(w: i32) -> ReleaseStep {
        ReleaseStep { set_weight: Some(w), ..Default::default() }
    }

    fn analysis() -> ReleaseStep {
        ReleaseStep { analysis: Some(Default::default()), ..Default::default() }
    }

    fn counters(stable: (u64, u64), canary: (u64, u64)) -> BTreeMap<String, RouteCounters> {
        let c = |(sessions, errors): (u64, u64)| Counters { sessions, errors, ..Default::default() };
        [("proxy-1".to_string(), RouteCounters { stable: c(stable), canary: c(canary) })].into()
    }

    /// The cluster as a release sees it: ready canary, proxies serving `served`, the target not updated.
    fn inputs<'a>(
        now: &'a Time,
        served: Option<i32>,
        stats: Option<&'a BTreeMap<String, RouteCounters>>,
    ) -> Inputs<'a> {
        Inputs {
            name: "web",
            namespace: "ns",
            revision: "app=app:v2".into(),
            target_runs_revision: false,
            target_rolled_out: true,
            canary_ready: true,
            served_weight: served,
            stats,
            queried: None,
            called: None,
            latencies: None,
            request: None,
            paused: false,
            now,
        }
    }

    /// Advances `spec` from `previous`, and again with `stats` when it asks for them.
    fn step(
        spec: &CanarySpec,
        previous: Option<&ReleaseStatus>,
        now: &Time,
        served: Option<i32>,
        stats: &BTreeMap<String, RouteCounters>,
    ) -> Decision {
        let first = advance(spec, previous, &inputs(now, served, None));
        if first.wants_stats() { advance(spec, previous, &inputs(now, served, Some(stats))) } else { first }
    }

    fn reasons_of(d: &Decision) -> Vec<&'static str> {
        d.notes.iter().map(|n| n.reason).collect()
    }

    #[test]
    fn the_example_release_reads_as_written() {
        let text = include_str!("../../../../../examples/release.yml");
        let canary: crate::api::canary::Canary = serde_saphyr::from_str(text).unwrap();
        let settings = Settings::of(&canary.spec);
        let weights: Vec<_> = settings.steps.iter().filter_map(|s| s.set_weight).collect();
        assert_eq!(weights, [20, 50]);
        assert_eq!((settings.interval, settings.min_samples), (Duration::from_secs(30), 50));
        assert!(settings.update_target);
        assert_eq!(settings.checks.len(), 2);
    }

    /// An HTTP window shows its progress: every PROGRESS_EVERY while it is open the machine asks for the
    /// proxies' counts and latencies so far and writes each route's requests into `window.requests`, judging
    /// nothing; the window is judged at its end as always. A TCP window asks for nothing before its end.
    #[test]
    fn an_open_http_window_shows_its_requests_so_far_and_is_judged_only_at_its_end() {
        let mut s = spec(vec![weight(10), analysis()]);
        let http = json!({"service": "app", "frontService": "app-front", "protocol": "http"});
        s.traffic = Some(serde_json::from_value(http).unwrap());
        let requests = |stable: u64, canary: u64| -> BTreeMap<String, RouteCounters> {
            let c = |n: u64| Counters { sessions: n, requests: n, ..Default::default() };
            [("proxy-1".to_string(), RouteCounters { stable: c(stable), canary: c(canary) })].into()
        };
        let d = step(&s, None, &at(0), Some(0), &requests(0, 0));
        let started = step(&s, Some(&d.release), &at(1), Some(10), &requests(0, 0));
        assert_eq!(started.release.window.as_ref().unwrap().started_at, at(1));
        assert_eq!(started.requeue, PROGRESS_EVERY, "looked at again for its progress, not at its end");
        let early = advance(&s, Some(&started.release), &inputs(&at(5), Some(10), None));
        assert_eq!((early.need.as_ref(), early.requeue), (None, Duration::from_secs(6)));
        let tick = advance(&s, Some(&started.release), &inputs(&at(11), Some(10), None));
        assert_eq!(tick.need, Some(Need::Progress));
        // the answer: counts and latencies so far
        let latencies = WindowLatencies { stable: vec![1.0; 900], canary: vec![2.0; 100] };
        let (t11, now) = (at(11), requests(900, 100));
        let read = Inputs { latencies: Some(&latencies), ..inputs(&t11, Some(10), Some(&now)) };
        let progress = advance(&s, Some(&started.release), &read);
        assert!(progress.judged.is_empty() && progress.release.evidence.is_empty() && progress.need.is_none());
        let window = progress.release.window.as_ref().unwrap();
        assert_eq!((&window.started_at, &window.counters), (&at(1), &requests(0, 0)), "the window itself unchanged");
        assert_eq!(window.measured_at, Some(at(11)));
        let so_far = window.requests.as_ref().unwrap();
        assert_eq!((so_far.canary.requests, so_far.canary.rate, so_far.canary.p99_ms), (100, 10.0, Some(2.0)));
        assert_eq!((so_far.stable.requests, so_far.stable.success_rate), (900, Some(100.0)));
        assert_eq!(progress.requeue, PROGRESS_EVERY);
        // the next read 10 s after this one; the end judged as always
        let soon = advance(&s, Some(&progress.release), &inputs(&at(15), Some(10), None));
        assert_eq!((soon.need.as_ref(), soon.requeue), (None, Duration::from_secs(6)));
        let end = advance(&s, Some(&progress.release), &inputs(&at(31), Some(10), None));
        assert_eq!(end.need, Some(Need::Counters));
        let judged = step(&s, Some(&progress.release), &at(31), Some(10), &requests(2700, 300));
        assert_eq!(judged.judged, [Verdict::Passed]);
        assert_eq!(judged.release.evidence[0].requests.as_ref().unwrap().canary.requests, 300);
        // a TCP window asks for nothing before its end
        s.traffic = Some(serde_json::from_value(json!({"service": "app", "frontService": "app-front"})).unwrap());
        let tcp = step(&s, Some(&d.release), &at(1), Some(10), &requests(0, 0));
        assert_eq!(tcp.requeue, Duration::from_secs(30));
        assert_eq!(advance(&s, Some(&tcp.release), &inputs(&at(11), Some(10), None)).need, None);
    }

    /// HTTP checks: the success rate from the agents' request counts, a latency percentile from the window's
    /// requests; each against a bound or against stable; no request measured is never a pass.
    #[test]
    fn request_checks_judge_success_rate_and_latency_percentiles_against_stable() {
        let mut s = spec(vec![analysis()]);
        let success = MetricCheck { max_below_stable: Some(1.0), ..check(Metric::RequestSuccessRate) };
        let p99 = MetricCheck { max_over_stable: Some(10.0), percentile: Some(99.0), ..check(Metric::RequestDuration) };
        s.analysis.as_mut().unwrap().metrics = vec![success, p99];
        let settings = Settings::of(&s);
        let requests = |(requests, request_errors): (u64, u64)| Counters {
            sessions: requests,
            requests,
            request_errors,
            ..Default::default()
        };
        let pod = |stable, canary| -> BTreeMap<String, RouteCounters> {
            [("proxy-1".to_string(), RouteCounters { stable: requests(stable), canary: requests(canary) })].into()
        };
        let window = Window { started_at: at(0), counters: pod((0, 0), (0, 0)), requests: None, measured_at: None };
        let release = ReleaseStatus { weight: 20, ..Default::default() };
        let fast: Vec<f64> = (0..1000).map(|i| 1.0 + (i % 10) as f64 / 10.0).collect();
        let slow: Vec<f64> = fast.iter().map(|ms| ms + 30.0).collect();
        let judge_with = |stable, canary, latencies: Option<&WindowLatencies>| {
            judge(&settings, &release, &window, &pod(stable, canary), None, latencies, &at(30))
        };
        let healthy = WindowLatencies { stable: fast.clone(), canary: fast.clone() };
        let passed = judge_with((4000, 0), (1000, 3), Some(&healthy));
        assert_eq!(passed.verdict, Verdict::Passed, "{passed:#?}");
        assert_eq!((passed.metrics[0].value, passed.metrics[0].stable_value), (99.7, Some(100.0)));
        assert_eq!(passed.metrics[1].value, 1.9, "p99 of the canary's requests, in ms");
        // 2 % of the canary's requests fail, none of stable's: 2 points below stable
        let erroring = judge_with((4000, 0), (1000, 20), Some(&healthy));
        assert_eq!((erroring.verdict, erroring.metrics[0].verdict), (Verdict::Failed, Verdict::Failed));
        assert_eq!(erroring.metrics[0].bound, "maxBelowStable 1");
        // 30 ms slower at p99
        let slower = WindowLatencies { stable: fast.clone(), canary: slow };
        let slower = &slower;
        let judged = judge_with((4000, 0), (1000, 0), Some(slower));
        assert_eq!((judged.verdict, judged.metrics[1].verdict), (Verdict::Failed, Verdict::Failed), "{judged:#?}");
        assert_eq!(judged.metrics[1].stable_value, Some(1.9));
        // the latencies were not read: no data, never a pass
        let unread = judge_with((4000, 0), (1000, 0), None);
        assert_eq!(unread.metrics[1].verdict, Verdict::Inconclusive);
        assert!(unread.metrics[1].no_data.is_some(), "{unread:#?}");
        // too few canary requests
        assert_eq!(judge_with((4000, 0), (5, 0), Some(&healthy)).verdict, Verdict::Inconclusive);
        // Mann-Whitney on the requests' latencies: the slower canary fails, the same one passes
        let mut s = spec(vec![analysis()]);
        let compared = MetricCheck { compare_to_stable: Some(Default::default()), ..check(Metric::RequestDuration) };
        s.analysis.as_mut().unwrap().metrics = vec![compared];
        let settings = Settings::of(&s);
        let judge_with = |latencies: Option<&WindowLatencies>| {
            judge(&settings, &release, &window, &pod((4000, 0), (1000, 0)), None, latencies, &at(30))
        };
        let slower = judge_with(Some(slower));
        let comparison = slower.metrics[0].comparison.as_ref().expect("a comparison");
        assert_eq!((slower.verdict, comparison.baseline_query.as_str()), (Verdict::Failed, STABLE_LATENCIES));
        assert!(comparison.downsampled_from.is_none() && comparison.canary_samples == 1000, "{comparison:?}");
        assert_eq!(judge_with(Some(&healthy)).verdict, Verdict::Passed);
        assert_eq!(judge_with(None).metrics[0].verdict, Verdict::Inconclusive, "latencies not read: no data");
        let sorted = WindowLatencies { canary: vec![f64::NAN, 3.0, 1.0, 2.0], stable: vec![] }.sorted();
        assert_eq!(percentile(&sorted.canary, 50.0), Some(2.0), "NaN is no latency");
        assert_eq!(percentile(&sorted.stable, 50.0), None);
    }

    #[test]
    fn the_http_example_reads_as_written() {
        let text = include_str!("../../../../../examples/http-release.yml");
        let canary: crate::api::canary::Canary = serde_saphyr::from_str(text).unwrap();
        let traffic = canary.spec.traffic.as_ref().unwrap();
        assert_eq!(
            (traffic.protocol, traffic.header.as_deref(), traffic.sticky),
            (crate::api::kanary::Protocol::Http, Some("x-canary"), true)
        );
        let checks = Settings::of(&canary.spec).checks;
        assert_eq!(checks[0].metric, Some(Metric::RequestSuccessRate));
        assert_eq!((checks[1].metric, checks[1].percentile), (Some(Metric::RequestDuration), Some(99.0)));
    }

    #[test]
    fn the_short_form_raises_the_weight_by_step_up_to_max() {
        let mut s = spec(vec![]);
        s.analysis.as_mut().unwrap().step_weight = Some(20);
        s.analysis.as_mut().unwrap().max_weight = Some(50);
        let weights: Vec<_> = Settings::of(&s).steps.iter().filter_map(|s| s.set_weight).collect();
        assert_eq!(weights, [20, 40, 50]);
        assert_eq!(Settings::of(&s).steps.len(), 6, "each weight is followed by an analysis");
    }

    #[test]
    fn a_healthy_canary_walks_every_step_and_is_promoted_once_the_target_runs_its_images() {
        let s = spec(vec![weight(10), analysis(), weight(50), analysis()]);
        let t0 = at(0);
        let d = step(&s, None, &t0, Some(0), &counters((0, 0), (0, 0)));
        assert_eq!((d.release.phase, d.release.weight, d.release.step), (Phase::Progressing, 10, 0));
        assert_eq!(reasons_of(&d), [reasons::STARTED, reasons::WEIGHT_SET]);
        // the proxies serve 10: the analysis window starts with the counters of now
        let d = step(&s, Some(&d.release), &at(1), Some(10), &counters((100, 1), (10, 0)));
        assert_eq!(d.release.step, 1);
        assert_eq!(d.release.window.as_ref().unwrap().started_at, at(1));
        assert_eq!(d.requeue, Duration::from_secs(30));
        // before the window is over nothing moves, and the counters are not read
        let early = advance(&s, Some(&d.release), &inputs(&at(20), Some(10), None));
        assert!(!early.wants_stats());
        assert_eq!((early.release.step, early.requeue), (1, Duration::from_secs(11)));
        // over: 90 canary connections, 1 error: passed, next weight
        let d = step(&s, Some(&d.release), &at(31), Some(10), &counters((1000, 1), (100, 1)));
        assert_eq!((d.release.step, d.release.weight), (2, 50));
        assert_eq!(d.release.evidence[0].verdict, Verdict::Passed);
        assert_eq!(d.release.evidence[0].canary_sessions, 90);
        let d = step(&s, Some(&d.release), &at(32), Some(50), &counters((1000, 1), (100, 1)));
        let d = step(&s, Some(&d.release), &at(62), Some(50), &counters((1500, 1), (600, 2)));
        assert_eq!(d.release.phase, Phase::Promoting);
        assert!(!d.update_target, "promotion.updateTarget is off: the user updates the target");
        assert!(d.release.message.contains("update it"), "{}", d.release.message);
        let t70 = at(70);
        let mut done = inputs(&t70, Some(50), None);
        done.target_runs_revision = true;
        let d = advance(&s, Some(&d.release), &done);
        assert_eq!((d.release.phase, d.release.weight), (Phase::Succeeded, 0));
        assert!(d.canary_scaled_down());
    }

    #[test]
    fn with_update_target_the_controller_updates_the_target_then_waits_for_its_rollout() {
        let mut s = spec(vec![weight(10)]);
        s.promotion = Some(Promotion { update_target: true });
        let d = step(&s, None, &at(0), Some(10), &counters((0, 0), (0, 0)));
        assert_eq!(d.release.phase, Phase::Promoting);
        assert!(d.update_target);
        let t1 = at(1);
        let mut rolling = inputs(&t1, Some(10), None);
        (rolling.target_runs_revision, rolling.target_rolled_out) = (true, false);
        let d = advance(&s, Some(&d.release), &rolling);
        assert_eq!(d.release.phase, Phase::Promoting);
        assert!(!d.update_target, "already updated");
        rolling.target_rolled_out = true;
        assert_eq!(advance(&s, Some(&d.release), &rolling).release.phase, Phase::Succeeded);
    }

    #[test]
    fn a_failing_canary_is_rolled_back_after_failure_limit_failed_windows() {
        let mut s = spec(vec![weight(20), analysis()]);
        s.analysis.as_mut().unwrap().failure_limit = Some(1);
        let d = step(&s, None, &at(0), Some(20), &counters((0, 0), (0, 0)));
        assert!(d.release.window.is_some());
        // 20 % of the canary's connections fail
        let d = step(&s, Some(&d.release), &at(30), Some(20), &counters((400, 0), (100, 20)));
        assert_eq!((d.release.phase, d.release.failed_windows), (Phase::Progressing, 1));
        assert_eq!(d.release.window.as_ref().unwrap().started_at, at(30), "measured again at once");
        let d = step(&s, Some(&d.release), &at(60), Some(20), &counters((800, 0), (200, 40)));
        assert_eq!((d.release.phase, d.release.weight), (Phase::RolledBack, 0));
        assert!(d.canary_scaled_down());
        assert_eq!(d.judged, [Verdict::Failed]);
        let evidence = d.release.evidence.last().unwrap();
        assert_eq!(evidence.metrics[0].value, 0.2);
        assert_eq!(evidence.metrics[0].verdict, Verdict::Failed);
        assert!(
            d.notes
                .iter()
                .any(|n| n.reason == reasons::ROLLED_BACK && n.type_ == kube::runtime::events::EventType::Warning)
        );
        assert!(d.release.message.contains("ErrorRate 0.2"), "{}", d.release.message);
    }

    #[test]
    fn too_little_traffic_pauses_as_inconclusive_and_never_promotes() {
        let s = spec(vec![weight(20), analysis()]);
        let d = step(&s, None, &at(0), Some(20), &counters((0, 0), (0, 0)));
        let d = step(&s, Some(&d.release), &at(30), Some(20), &counters((5, 0), (2, 0)));
        assert_eq!(d.release.phase, Phase::Paused);
        assert_eq!(d.release.evidence[0].verdict, Verdict::Inconclusive);
        // time passes: still paused
        let later = step(&s, Some(&d.release), &at(3000), Some(20), &counters((5, 0), (2, 0)));
        assert_eq!(later.release.phase, Phase::Paused);
        // resume measures again
        let t3001 = at(3001);
        let mut resumed = inputs(&t3001, Some(20), None);
        resumed.request = Some("resume");
        let d = advance(&s, Some(&later.release), &resumed);
        assert_eq!((d.release.phase, d.release.step), (Phase::Progressing, 1));
        assert!(d.wants_stats());
    }

    fn check(metric: Metric) -> MetricCheck {
        MetricCheck {
            metric: Some(metric),
            prometheus: None,
            on_no_data: None,
            max: None,
            min: None,
            max_over_stable: None,
            max_below_stable: None,
            percentile: None,
            compare_to_stable: None,
        }
    }

    #[test]
    fn promql_checks_are_queried_when_a_window_is_judged_and_no_data_never_passes() {
        let query = PrometheusMetric {
            query: "sum(rate(errors[{{ interval }}]))".into(),
            address: None,
            token_secret_ref: None,
            timeout: None,
            compare: None,
        };
        let promql = MetricCheck { metric: None, prometheus: Some(query), max: Some(1.0), ..check(Metric::ErrorRate) };
        let mut s = spec(vec![weight(20), analysis()]);
        s.analysis.as_mut().unwrap().metrics = vec![check(Metric::ErrorRate), promql.clone()];
        s.analysis.as_mut().unwrap().metrics[0].max = Some(0.05);
        let started = step(&s, None, &at(0), Some(20), &counters((0, 0), (0, 0)));
        assert!(started.release.window.is_some());
        let first = advance(&s, Some(&started.release), &inputs(&at(0), Some(20), None));
        assert!(!first.wants_queries(), "not when a window starts");
        let stats = counters((100, 0), (50, 0));
        let ending = advance(&s, Some(&started.release), &inputs(&at(30), Some(20), None));
        assert!(ending.wants_stats() && ending.wants_queries(), "the window is judged: counters and queries");
        let judged = |value: Result<f64, String>, on_no_data: Option<OnNoData>| {
            let mut s = s.clone();
            s.analysis.as_mut().unwrap().metrics[1].on_no_data = on_no_data;
            let answers = [None, Some(Queried { query: "sum(rate(errors[30s]))".into(), value, samples: None })];
            let now = at(30);
            let i = Inputs { stats: Some(&stats), queried: Some(&answers), ..inputs(&now, Some(20), None) };
            advance(&s, Some(&started.release), &i).release
        };
        let passed = judged(Ok(0.5), None);
        assert_eq!(passed.phase, Phase::Promoting, "{passed:#?}");
        let failed = judged(Ok(2.0), None);
        assert_eq!(failed.phase, Phase::RolledBack, "{failed:#?}");
        let result = &failed.evidence[0].metrics[1];
        assert_eq!((result.metric, result.query.as_deref(), result.value), (None, Some("sum(rate(errors[30s]))"), 2.0));
        let no_data = judged(Err("the query returned NaN".into()), None);
        assert_eq!(no_data.phase, Phase::Paused, "inconclusive: {no_data:#?}");
        assert!(no_data.message.contains("no data") && no_data.message.contains("NaN"), "{}", no_data.message);
        assert_eq!(judged(Err("unreachable".into()), Some(OnNoData::Fail)).phase, Phase::RolledBack);
    }

    #[test]
    fn a_webhook_step_goes_on_at_2xx_and_pauses_retries_or_rolls_back_otherwise() {
        let hook = |on_failure| ReleaseStep {
            webhook: Some(WebhookStep { url: "http://gate/".into(), timeout: None, on_failure }),
            ..Default::default()
        };
        let with_answer = |s: &CanarySpec, previous: &ReleaseStatus, second: i64, answer: Result<String, String>| {
            let now = at(second);
            let called = Called { step: 0, url: "http://gate/".into(), answer };
            advance(s, Some(previous), &Inputs { called: Some(&called), ..inputs(&now, Some(0), None) })
        };
        // the call is asked for, with what names the release
        let s = spec(vec![hook(None), weight(10)]);
        let d = advance(&s, None, &inputs(&at(0), Some(0), None));
        let call = d.wants_call().cloned().expect("a call");
        assert_eq!(
            (call.url.as_str(), &call.body["canary"], &call.body["step"]),
            ("http://gate/", &json!("web"), &json!(1))
        );
        let passed = with_answer(&s, &d.release, 1, Ok("HTTP 200".into()));
        assert_eq!((passed.release.step, passed.release.weight), (1, 10), "{passed:#?}");
        assert!(reasons_of(&passed).contains(&reasons::WEBHOOK_PASSED));
        // Pause (default): paused; resume calls again at once
        let paused = with_answer(&s, &d.release, 1, Err("HTTP 503: closed".into()));
        assert_eq!((paused.release.phase, paused.release.step), (Phase::Paused, 0));
        assert!(paused.release.message.contains("HTTP 503"), "{}", paused.release.message);
        let two = at(2);
        let mut resumed = inputs(&two, Some(0), None);
        resumed.request = Some("resume");
        assert!(advance(&s, Some(&paused.release), &resumed).wants_call().is_some());
        // Fail: rolled back
        let s = spec(vec![hook(Some(OnWebhookFailure::Fail)), weight(10)]);
        assert_eq!(with_answer(&s, &d.release, 1, Err("refused".into())).release.phase, Phase::RolledBack);
        // Retry: waits 5 s between calls, then goes on when it passes
        let s = spec(vec![hook(Some(OnWebhookFailure::Retry)), weight(10)]);
        let waiting = with_answer(&s, &d.release, 1, Err("HTTP 503".into()));
        assert_eq!((waiting.release.phase, waiting.requeue), (Phase::Progressing, WEBHOOK_RETRY));
        assert!(advance(&s, Some(&waiting.release), &inputs(&at(3), Some(0), None)).wants_call().is_none());
        assert!(advance(&s, Some(&waiting.release), &inputs(&at(6), Some(0), None)).wants_call().is_some());
        assert_eq!(with_answer(&s, &waiting.release, 6, Ok("HTTP 204".into())).release.step, 1);
    }

    #[test]
    fn each_webhook_step_is_called_and_judged_by_its_own_answer() {
        // issue: one answer was taken for every webhook step reached in the same pass, so the approval gate
        // after a load test was never called and the release went on to promotion
        let hook = |url: &str| ReleaseStep {
            webhook: Some(WebhookStep { url: url.into(), timeout: None, on_failure: None }),
            ..Default::default()
        };
        let s = spec(vec![hook("http://loadtest/"), hook("http://approval/")]);
        let d = advance(&s, None, &inputs(&at(0), Some(0), None));
        assert_eq!(d.wants_call().map(|c| (c.step, c.url.as_str())), Some((0, "http://loadtest/")));
        let now = at(1);
        let loadtest = Called { step: 0, url: "http://loadtest/".into(), answer: Ok("HTTP 200".into()) };
        let d = advance(&s, Some(&d.release), &Inputs { called: Some(&loadtest), ..inputs(&now, Some(0), None) });
        assert_eq!((d.release.phase, d.release.step), (Phase::Progressing, 1), "{:#?}", d.release);
        assert_eq!(
            d.wants_call().map(|c| (c.step, c.url.as_str())),
            Some((1, "http://approval/")),
            "the approval gate is called in its turn"
        );
        // an answer of another step is not this step's answer
        let d2 = advance(&s, Some(&d.release), &Inputs { called: Some(&loadtest), ..inputs(&at(2), Some(0), None) });
        assert_eq!((d2.release.phase, d2.release.step), (Phase::Progressing, 1), "{:#?}", d2.release);
        let no = Called { step: 1, url: "http://approval/".into(), answer: Err("HTTP 403: not yet".into()) };
        let d3 = advance(&s, Some(&d.release), &Inputs { called: Some(&no), ..inputs(&at(3), Some(0), None) });
        assert_eq!((d3.release.phase, d3.release.step), (Phase::Paused, 1), "{:#?}", d3.release);
    }

    /// A check of PromQL `query` bounded by `max` (and `min`).
    fn promql_check(query: &str, max: f64, min: Option<f64>) -> MetricCheck {
        let prometheus = PrometheusMetric {
            query: query.into(),
            address: None,
            token_secret_ref: None,
            timeout: None,
            compare: None,
        };
        MetricCheck { metric: None, prometheus: Some(prometheus), max: Some(max), min, ..check(Metric::ErrorRate) }
    }

    #[test]
    fn infinite_query_values_are_no_data_and_every_number_written_is_finite() {
        // issue: +Inf passed as a value and reached the status as null, which the API server refuses
        let mut s = spec(vec![weight(20), analysis()]);
        s.analysis.as_mut().unwrap().metrics = vec![promql_check("q", 1.0, Some(-1.0))];
        let started = step(&s, None, &at(0), Some(20), &counters((0, 0), (0, 0)));
        let stats = counters((100, 0), (50, 0));
        for value in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            let answers = [Some(Queried { query: "q".into(), value: Ok(value), samples: None })];
            let now = at(30);
            let i = Inputs { stats: Some(&stats), queried: Some(&answers), ..inputs(&now, Some(20), None) };
            let judged = advance(&s, Some(&started.release), &i).release;
            assert_eq!(judged.phase, Phase::Paused, "{value}: inconclusive, never a pass: {judged:#?}");
            let result = &judged.evidence[0].metrics[0];
            assert!(result.no_data.as_deref().unwrap_or_default().contains("not a measurement"), "{result:?}");
            let written = serde_json::to_string(&judged).unwrap();
            assert!(!written.contains("null"), "{written}");
        }
        assert_eq!((finite(f64::INFINITY), finite(f64::NEG_INFINITY), finite(f64::NAN)), (f64::MAX, f64::MIN, 0.0));
    }

    #[test]
    fn texts_from_outside_are_bounded_in_the_status() {
        let mut s = spec(vec![weight(20), analysis()]);
        s.analysis.as_mut().unwrap().metrics = vec![promql_check(&"q".repeat(10_000), 1.0, None); 16];
        let mut release = step(&s, None, &at(0), Some(20), &counters((0, 0), (0, 0))).release;
        // every other move starts a window, the next one judges it
        for k in 1..=50u64 {
            let answers: Vec<Option<Queried>> = (0..16)
                .map(|_| Some(Queried { query: "q".repeat(10_000), value: Err("e".repeat(100_000)), samples: None }))
                .collect();
            let stats = counters((100 * k, 0), (50 * k, 0));
            let now = at(30 * k as i64);
            let i = Inputs { stats: Some(&stats), queried: Some(&answers), ..inputs(&now, Some(20), None) };
            let mut judged = advance(&s, Some(&release), &i).release;
            judged.phase = Phase::Progressing; // measure again and again
            release = judged;
        }
        assert_eq!(release.evidence.len(), EVIDENCE_KEPT);
        let size = serde_json::to_vec(&release).unwrap().len();
        assert!(size < 512 * 1024, "{size} bytes of release status");
        assert!(release.message.len() <= MAX_MESSAGE);
    }

    /// A spec of `steps` whose one check compares query `c` with baseline query `b` (tolerance 0.1).
    fn compare_spec(steps: Vec<ReleaseStep>, on_marginal: Option<OnMarginal>) -> CanarySpec {
        let compare =
            Compare { baseline_query: "b".into(), worse: None, tolerance: Some(0.1), alpha: None, on_marginal };
        let query = PrometheusMetric {
            query: "c".into(),
            address: None,
            token_secret_ref: None,
            timeout: None,
            compare: Some(compare),
        };
        let mut s = spec(steps);
        s.analysis.as_mut().unwrap().metrics =
            vec![MetricCheck { prometheus: Some(query), ..check(Metric::ErrorRate) }];
        s.analysis.as_mut().unwrap().metrics[0].metric = None;
        s
    }

    #[test]
    fn a_compare_check_judges_the_canary_samples_against_the_baseline() {
        let s = compare_spec(vec![weight(20), analysis()], None);
        let started = step(&s, None, &at(0), Some(20), &counters((0, 0), (0, 0)));
        let stats = counters((100, 0), (50, 0));
        let baseline: Vec<f64> = (0..30).map(|i| 100.0 + (i % 7) as f64).collect();
        let judged = |canary: Vec<f64>| {
            let answers = [Some(Queried {
                query: "c".into(),
                value: Ok(0.0),
                samples: Some(Samples { baseline_query: "b".into(), values: Ok((canary, baseline.clone())) }),
            })];
            let now = at(30);
            let i = Inputs { stats: Some(&stats), queried: Some(&answers), ..inputs(&now, Some(20), None) };
            advance(&s, Some(&started.release), &i).release
        };
        let worse = judged(baseline.iter().map(|v| v * 1.5).collect());
        assert_eq!(worse.phase, Phase::RolledBack, "{worse:#?}");
        let comparison = worse.evidence[0].metrics[0].comparison.clone().unwrap();
        assert_eq!((comparison.canary_samples, comparison.judgement.as_str()), (30, "Fail"), "{comparison:?}");
        assert!(comparison.p_value < 0.001 && (comparison.effect - 0.5).abs() < 0.05, "{comparison:?}");
        assert_eq!(judged(baseline.clone()).phase, Phase::Promoting, "the same: passes");
        let marginal = judged(baseline.iter().map(|v| v + 3.0).collect());
        assert_eq!(marginal.phase, Phase::Paused, "marginal pauses by default: {marginal:#?}");
        let none = judged(vec![]);
        assert_eq!(none.phase, Phase::Paused, "no samples: inconclusive");
        assert!(none.evidence[0].metrics[0].no_data.as_deref().unwrap_or_default().contains("no samples"));
        // a query that could not be asked (its token unreadable): its reason is the evidence
        let why = "prometheus.tokenSecretRef: Secret \"t\" not found".to_string();
        let answers = [Some(Queried { query: "c".into(), value: Err(why.clone()), samples: None })];
        let now = at(30);
        let i = Inputs { stats: Some(&stats), queried: Some(&answers), ..inputs(&now, Some(20), None) };
        let unasked = advance(&s, Some(&started.release), &i).release;
        assert_eq!(unasked.phase, Phase::Paused, "{unasked:#?}");
        assert_eq!(unasked.evidence[0].metrics[0].no_data.as_deref(), Some(why.as_str()));
    }

    #[test]
    fn a_marginal_comparison_with_extend_is_measured_again_three_times_then_pauses() {
        let s = compare_spec(vec![weight(20), analysis(), weight(40)], Some(OnMarginal::Extend));
        let baseline: Vec<f64> = (0..30).map(|i| 100.0 + (i % 7) as f64).collect();
        let answers = |canary: Vec<f64>| {
            let values = Ok((canary, baseline.clone()));
            [Some(Queried {
                query: "c".into(),
                value: Ok(0.0),
                samples: Some(Samples { baseline_query: "b".into(), values }),
            })]
        };
        let marginal = answers(baseline.iter().map(|v| v + 3.0).collect());
        let mut release = step(&s, None, &at(0), Some(20), &counters((0, 0), (0, 0))).release;
        let s = &s;
        let window = |k: u64| {
            let stats = counters((100 * k, 0), (50 * k, 0));
            let now = at(30 * k as i64);
            move |release: &ReleaseStatus, queried: &[Option<Queried>]| {
                let i = Inputs { stats: Some(&stats), queried: Some(queried), ..inputs(&now, Some(20), None) };
                advance(s, Some(release), &i)
            }
        };
        for k in 1..=MAX_EXTENDED_WINDOWS as u64 {
            let judged = window(k)(&release, &marginal);
            release = judged.release.clone();
            assert_eq!(
                (release.phase, release.step, release.extended_windows),
                (Phase::Progressing, 1, k as i32),
                "{release:#?}"
            );
            assert!(reasons_of(&judged).contains(&reasons::EXTENDED), "{:?}", judged.notes);
            assert_eq!(release.evidence.last().unwrap().verdict, Verdict::Marginal);
            assert!(release.window.is_some(), "the next window starts at once");
        }
        let paused = window(4)(&release, &marginal).release;
        assert_eq!((paused.phase, paused.step), (Phase::Paused, 1), "marginal a fourth time: {paused:#?}");
        // a window that decides ends the extension: the next step starts afresh
        let passed = window(4)(&release, &answers(baseline.clone())).release;
        assert_eq!((passed.phase, passed.step, passed.extended_windows), (Phase::Progressing, 2, 0), "{passed:#?}");
    }

    #[test]
    fn relative_checks_compare_with_the_stable_route_over_the_same_window() {
        let mut s = spec(vec![weight(50), analysis()]);
        s.analysis.as_mut().unwrap().metrics =
            vec![MetricCheck { max_over_stable: Some(0.02), ..check(Metric::ErrorRate) }];
        let d = step(&s, None, &at(0), Some(50), &counters((0, 0), (0, 0)));
        // both routes fail 10 %: the canary is no worse than stable
        let d = step(&s, Some(&d.release), &at(30), Some(50), &counters((100, 10), (100, 10)));
        assert_eq!(d.release.phase, Phase::Promoting);
        assert_eq!(d.release.evidence[0].metrics[0].stable_value, Some(0.1));
    }

    #[test]
    fn counters_of_a_restarted_proxy_count_from_zero_and_new_proxies_count_whole() {
        let before = counters((100, 0), (50, 0));
        let mut after = counters((10, 0), (5, 0));
        after.insert("proxy-2".into(), counters((7, 0), (3, 0)).remove("proxy-1").unwrap());
        let canary = window_counters(&before, &after, |r| &r.canary);
        assert_eq!(canary.sessions, 8);
    }

    #[test]
    fn requests_pause_promote_abort_and_retry_once_per_value() {
        let s = spec(vec![weight(10), ReleaseStep { pause: Some(Pause { duration: None }), ..Default::default() }]);
        let d = step(&s, None, &at(0), Some(10), &counters((0, 0), (0, 0)));
        assert_eq!((d.release.phase, d.release.step), (Phase::Paused, 1), "a pause without duration holds");
        let with = |request: &'static str, previous: &ReleaseStatus, second: i64| {
            let now = at(second);
            let mut i = inputs(&now, Some(previous.weight), None);
            i.request = Some(request);
            advance(&s, Some(previous), &i)
        };
        let d = with("abort", &d.release, 1);
        assert_eq!((d.release.phase, d.release.weight), (Phase::Aborted, 0));
        // the same value again changes nothing
        let again = with("abort", &d.release, 2);
        assert_eq!(again.release, d.release);
        assert!(again.notes.is_empty());
        let d = with("retry", &d.release, 3);
        assert_eq!((d.release.phase, d.release.step, d.release.weight), (Phase::Progressing, 0, 10));
        let d = with("promote", &d.release, 4);
        assert_eq!(d.release.phase, Phase::Promoting);
        let d = with("dance", &d.release, 5);
        assert!(d.notes.iter().any(|n| n.reason == reasons::UNKNOWN_REQUEST && n.message.contains("dance")));
        // a request left on the Canary from before its release existed (traffic removed and added back) is not
        // acted on by the new release
        let now = at(6);
        let stale = Inputs { request: Some("abort:1"), ..inputs(&now, Some(0), None) };
        let fresh = advance(&s, None, &stale);
        assert_eq!(
            (fresh.release.phase, fresh.release.handled_request.as_deref()),
            (Phase::Progressing, Some("abort:1"))
        );
    }

    #[test]
    fn spec_paused_holds_the_release_and_unpausing_resumes_it() {
        let mut s = spec(vec![weight(10), analysis()]);
        let d = step(&s, None, &at(0), Some(10), &counters((0, 0), (0, 0)));
        s.paused = true;
        let t100 = at(100);
        let mut i = inputs(&t100, Some(10), None);
        i.paused = true;
        let d = advance(&s, Some(&d.release), &i);
        assert_eq!((d.release.phase, d.release.window.as_ref()), (Phase::Paused, None));
        s.paused = false;
        let d = advance(&s, Some(&d.release), &inputs(&at(200), Some(10), None));
        assert_eq!(d.release.phase, Phase::Progressing);
        assert!(d.wants_stats(), "a new window starts");
    }

    #[test]
    fn new_images_start_a_new_release_and_a_target_already_running_them_needs_none() {
        let s = spec(vec![weight(10)]);
        let d = step(&s, None, &at(0), Some(0), &counters((0, 0), (0, 0)));
        let mut moved = d.release.clone();
        moved.revision = "app=app:v1".into();
        moved.phase = Phase::RolledBack;
        let d = advance(&s, Some(&moved), &inputs(&at(1), Some(0), None));
        assert_eq!((d.release.phase, d.release.step), (Phase::Progressing, 0));
        let t2 = at(2);
        let mut same = inputs(&t2, Some(0), None);
        same.target_runs_revision = true;
        assert_eq!(advance(&s, None, &same).release.phase, Phase::Succeeded);
    }

    #[test]
    fn the_state_resumes_from_the_status_alone() {
        // a controller restarted mid-window reads the window from the status and keeps its timer
        let s = spec(vec![weight(10), analysis()]);
        let d = step(&s, None, &at(0), Some(10), &counters((0, 0), (0, 0)));
        let stored: ReleaseStatus = serde_json::from_value(serde_json::to_value(&d.release).unwrap()).unwrap();
        let resumed = advance(&s, Some(&stored), &inputs(&at(10), Some(10), None));
        assert_eq!((resumed.release.step, resumed.requeue), (1, Duration::from_secs(20)));
        assert!(resumed.notes.is_empty());
    }

    /// One reconcile's worth of what the world shows, for the property test.
    #[derive(Debug, Clone)]
    struct Move {
        seconds: i64,
        served: bool,
        ready: bool,
        sessions: u64,
        errors: u64,
        proxy_restarted: bool,
        value: f64,
        webhook_ok: bool,
        webhook_step_off: i32,
        request: Option<&'static str>,
        write_fails: bool,
        runs_revision: bool,
    }

    fn a_move() -> impl Strategy<Value = Move> {
        let value = prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MAX),
            Just(-1e300),
            Just(0.0),
            Just(0.5),
            -10.0f64..10.0,
        ];
        let request = prop_oneof![
            6 => Just(None),
            1 => Just(Some("resume")),
            1 => Just(Some("promote")),
            1 => Just(Some("abort")),
            1 => Just(Some("retry")),
            1 => Just(Some("dance")),
        ];
        (
            (0i64..90, any::<bool>(), prop::bool::weighted(0.9), 0u64..400, 0u64..100, prop::bool::weighted(0.05)),
            (value, any::<bool>(), prop_oneof![8 => Just(0), 1 => Just(1), 1 => Just(-1)], request),
            (prop::bool::weighted(0.2), prop::bool::weighted(0.1)),
        )
            .prop_map(
                |((seconds, served, ready, sessions, errors, proxy_restarted), b, (write_fails, runs_revision))| {
                    let (value, webhook_ok, webhook_step_off, request) = b;
                    Move {
                        seconds,
                        served,
                        ready,
                        sessions,
                        errors,
                        proxy_restarted,
                        value,
                        webhook_ok,
                        webhook_step_off,
                        request,
                        write_fails,
                        runs_revision,
                    }
                },
            )
    }

    fn any_null(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::Null => true,
            serde_json::Value::Array(a) => a.iter().any(any_null),
            serde_json::Value::Object(o) => o.values().any(any_null),
            _ => false,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Random worlds (counters that grow or restart, query answers of every kind of number, webhook
        /// answers for the right and the wrong step, requests, status writes that fail, proxies out of
        /// sync): the machine never raises the weight of a rolled back or aborted release (only `retry`
        /// starts it again), never promotes past a step without its own evidence (a passed window, a 2xx of
        /// its own webhook) unless promotion was requested, and always writes a status the schema accepts.
        #[test]
        fn a_rollback_stays_a_rollback_and_no_gate_is_skipped(moves in prop::collection::vec(a_move(), 1..60)) {
            let hook = |url: &str| ReleaseStep {
                webhook: Some(WebhookStep { url: url.into(), timeout: None, on_failure: Some(OnWebhookFailure::Retry) }),
                ..Default::default()
            };
            let mut s = spec(vec![hook("http://loadtest/"), hook("http://approval/"), weight(10), analysis(), weight(40), analysis()]);
            let promql = promql_check("q", 1.0, Some(-1.0));
            s.analysis.as_mut().unwrap().metrics = vec![MetricCheck { max: Some(0.1), ..check(Metric::ErrorRate) }, promql];
            let gates: Vec<usize> = s.steps.iter().enumerate().filter(|(_, st)| st.set_weight.is_none() && st.pause.is_none()).map(|(i, _)| i).collect();
            let mut recorded: Option<ReleaseStatus> = None;
            let (mut clock, mut sessions, mut errors) = (0i64, 0u64, 0u64);
            let mut earned: std::collections::BTreeSet<i32> = Default::default();
            for m in moves {
                clock += m.seconds;
                if m.proxy_restarted { sessions = 0; errors = 0; }
                sessions += m.sessions;
                // mostly healthy windows, so that releases get far; some bad ones
                errors += if m.errors > 80 { m.errors.min(m.sessions) } else { 0 };
                let now = at(clock);
                let previous = recorded.clone();
                let served = if m.served { previous.as_ref().map(|r| r.weight) } else { None };
                let stats = counters((sessions, 0), (sessions, errors));
                let answers = [None, Some(Queried { query: "q".into(), value: Ok(m.value), samples: None })];
                let mut i = inputs(&now, served, None);
                i.canary_ready = m.ready;
                i.target_runs_revision = m.runs_revision;
                i.request = m.request;
                let first = advance(&s, previous.as_ref(), &i);
                let called;
                let mut passed_call = None;
                let decision = if first.wants_stats() {
                    advance(&s, previous.as_ref(), &Inputs { stats: Some(&stats), queried: Some(&answers), ..i.clone() })
                } else if let Some(call) = first.wants_call() {
                    let answer = if m.webhook_ok { Ok("HTTP 200".to_string()) } else { Err("HTTP 503".to_string()) };
                    called = Called { step: call.step + m.webhook_step_off, url: call.url.clone(), answer };
                    if m.webhook_ok && m.webhook_step_off == 0 {
                        passed_call = Some(call.step);
                    }
                    advance(&s, previous.as_ref(), &Inputs { called: Some(&called), ..i.clone() })
                } else {
                    first
                };
                let release = &decision.release;
                let requested = m.request.map(action);
                let new_request = m.request.is_some() && previous.as_ref().and_then(|p| p.handled_request.as_deref()) != m.request;
                let retried = new_request && requested == Some("retry")
                    && previous.as_ref().is_some_and(|p| matches!(p.phase, Phase::RolledBack | Phase::Aborted));
                if retried {
                    earned.clear();
                }
                // what was earned by this move: a passed window, or a 2xx of a step's own webhook
                for e in release.evidence.iter().filter(|e| e.verdict == Verdict::Passed) {
                    earned.insert(e.step);
                }
                earned.extend(passed_call);
                // 1. after a recorded rollback or abort, the weight stays 0 until a retry (or new images)
                if let Some(p) = &previous
                    && matches!(p.phase, Phase::RolledBack | Phase::Aborted)
                    && !retried
                {
                    prop_assert_eq!(release.weight, 0, "raised after {:?}: {:#?}", p.phase, release);
                    prop_assert!(decision.canary_scaled_down(), "the canary scaled up again: {:#?}", release);
                }
                // 2. no gate passed without its own evidence: a passed window, a 2xx of its own webhook
                let moved_past = |gate: i32| previous.as_ref().is_some_and(|p| p.step <= gate && p.revision == release.revision) && release.step > gate;
                if !(new_request && requested == Some("promote")) {
                    for gate in &gates {
                        if moved_past(*gate as i32) {
                            prop_assert!(earned.contains(&(*gate as i32)), "step {} passed without its evidence: {:#?}", gate, release);
                        }
                    }
                }
                // 3. promotion only with every gate's evidence, or by request
                let promoting = matches!(release.phase, Phase::Promoting | Phase::Succeeded);
                let was_promoting = previous.as_ref().is_some_and(|p| matches!(p.phase, Phase::Promoting | Phase::Succeeded));
                let by_request = new_request && requested == Some("promote");
                if promoting && !was_promoting && !by_request && !m.runs_revision {
                    for gate in &gates {
                        prop_assert!(earned.contains(&(*gate as i32)), "step {} skipped: {:#?}", gate, release);
                    }
                }
                // 4. a status the schema accepts: every number finite (no null), texts bounded
                let written = serde_json::to_value(release).unwrap();
                prop_assert!(!any_null(&written), "{}", written);
                prop_assert!(release.message.len() <= MAX_MESSAGE);
                prop_assert!(release.evidence.len() <= EVIDENCE_KEPT);
                prop_assert!((0..=100).contains(&release.weight));
                // the status write may fail: the next move then works from the last recorded release
                if !m.write_fails {
                    recorded = Some(release.clone());
                }
                if recorded.as_ref().is_some_and(|r| r.phase == Phase::Progressing && r.step == 0) && previous.as_ref().is_none_or(|p| p.revision != release.revision) {
                    earned.clear();
                }
            }
        }
    }
}
