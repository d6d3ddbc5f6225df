//! A release's settings: the spec's steps (or the short form `analysis.stepWeight` up to `maxWeight`), its
//! analysis interval, sample floor, failure limit and checks, with the defaults applied; and how a step reads
//! for people. Pure.

use super::*;

pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_STEP_WEIGHT: i32 = 10;
pub(crate) const DEFAULT_MAX_WEIGHT: i32 = 50;
pub(crate) const DEFAULT_MIN_SAMPLES: u64 = 20;

/// The release settings of a spec, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub steps: Vec<ReleaseStep>,
    pub interval: Duration,
    pub min_samples: u64,
    pub failure_limit: i32,
    pub checks: Vec<MetricCheck>,
    pub update_target: bool,
    /// The traffic is HTTP (`traffic.protocol: http`): an open window's requests are read as it goes.
    pub http: bool,
}

pub fn duration(text: &str) -> Option<Duration> {
    crate::api::kanary::duration_ms(text).map(Duration::from_millis)
}

impl Settings {
    pub fn of(spec: &CanarySpec) -> Settings {
        let analysis = spec.analysis.clone().unwrap_or_default();
        let checks = if analysis.metrics.is_empty() {
            vec![MetricCheck {
                metric: Some(Metric::ErrorRate),
                prometheus: None,
                on_no_data: None,
                max: Some(0.05),
                min: None,
                max_over_stable: None,
                max_below_stable: None,
                percentile: None,
                compare_to_stable: None,
            }]
        } else {
            analysis.metrics.clone()
        };
        Settings {
            steps: if spec.steps.is_empty() { short_form(&analysis) } else { spec.steps.clone() },
            interval: analysis.interval.as_deref().and_then(duration).unwrap_or(DEFAULT_INTERVAL).min(MAX_INTERVAL),
            min_samples: analysis.min_samples.map_or(DEFAULT_MIN_SAMPLES, |m| m.max(1) as u64),
            failure_limit: analysis.failure_limit.unwrap_or(0).max(0),
            checks,
            update_target: spec.promotion.as_ref().is_some_and(|p| p.update_target),
            http: spec.traffic.as_ref().is_some_and(|t| t.protocol == crate::api::kanary::Protocol::Http),
        }
    }
}

/// The steps of the short form: `setWeight` then `analysis`, from `stepWeight` up to `maxWeight`.
pub(crate) fn short_form(analysis: &Analysis) -> Vec<ReleaseStep> {
    let step = analysis.step_weight.unwrap_or(DEFAULT_STEP_WEIGHT).clamp(1, 100);
    let max = analysis.max_weight.unwrap_or(DEFAULT_MAX_WEIGHT).clamp(1, 100);
    let mut weights: Vec<i32> = (1..).map(|i| i * step).take_while(|w| *w <= max).collect();
    if weights.last() != Some(&max) {
        weights.push(max);
    }
    weights
        .into_iter()
        .flat_map(|w| {
            [
                ReleaseStep { set_weight: Some(w), ..Default::default() },
                ReleaseStep { analysis: Some(Default::default()), ..Default::default() },
            ]
        })
        .collect()
}

/// A step for people: `setWeight 25`, `pause 5m`, `analysis`, `webhook`.
pub fn describe(step: &ReleaseStep) -> String {
    match (step.set_weight, &step.pause, &step.webhook) {
        (Some(w), _, _) => format!("setWeight {w}"),
        (_, Some(p), _) => format!("pause {}", p.duration.as_deref().unwrap_or("until resumed")),
        (_, _, Some(_)) => "webhook".into(),
        _ => "analysis".into(),
    }
}

/// `2/6 setWeight 25`, or `done` after the last step.
pub(crate) fn step_description(steps: &[ReleaseStep], index: i32) -> String {
    match steps.get(index as usize) {
        Some(step) => format!("{}/{} {}", index + 1, steps.len(), describe(step)),
        None => "done".into(),
    }
}
