//! Judging an analysis window: the proxy's counters over the window per route, each check's value against
//! its bound or against the stable route, PromQL answers (a value, or canary and baseline samples compared by
//! Mann-Whitney and Hodges-Lehmann), and the window's verdict with its evidence. Pure.

use super::*;

pub(crate) fn summarize(evidence: &Evidence) -> String {
    let metrics: Vec<String> = evidence
        .metrics
        .iter()
        .map(|m| match &m.no_data {
            Some(why) => format!("{} no data ({why}: {:?})", metric_name(m), m.verdict),
            None => format!("{} {} ({}: {:?})", metric_name(m), round(m.value), m.bound, m.verdict),
        })
        .collect();
    format!(
        "{} canary / {} stable connections; {}",
        evidence.canary_sessions,
        evidence.stable_sessions,
        if metrics.is_empty() { "no checks".into() } else { metrics.join(", ") }
    )
}

/// A `compare` check's samples judged (Mann-Whitney U and the Hodges-Lehmann shift, see [`statistics`]):
/// the result for the status and its verdict (a marginal one as `onMarginal` says); an error when there are
/// no samples to judge.
pub(crate) fn compare_samples(
    compare: &Compare,
    samples: Option<&Samples>,
) -> Result<(ComparisonResult, Verdict), String> {
    let Some(Samples { baseline_query, values }) = samples else { return Err("Prometheus was not queried".into()) };
    let (canary_all, baseline_all) = values.as_ref().map_err(Clone::clone)?;
    let finite_only = |values: &[f64]| values.iter().copied().filter(|v| v.is_finite()).collect::<Vec<f64>>();
    let (canary_all, baseline_all) = (finite_only(canary_all), finite_only(baseline_all));
    let canary = &statistics::downsample(&canary_all, statistics::MAX_SAMPLES);
    let baseline = &statistics::downsample(&baseline_all, statistics::MAX_SAMPLES);
    let downsampled_from = (canary.len() < canary_all.len() || baseline.len() < baseline_all.len())
        .then(|| format!("canary {}, baseline {}", canary_all.len(), baseline_all.len()));
    let worse = match compare.worse {
        Some(ApiWorse::Lower) => statistics::Worse::Lower,
        _ => statistics::Worse::Higher,
    };
    let (alpha, tolerance) = (compare.alpha.unwrap_or(0.05), compare.tolerance.unwrap_or(0.1));
    let c = statistics::compare(canary, baseline, worse, alpha, tolerance).ok_or_else(|| {
        format!("no samples to compare ({} of the canary, {} of the baseline)", canary.len(), baseline.len())
    })?;
    let verdict = match (c.judgement, compare.on_marginal) {
        (statistics::Judgement::Pass, _) | (statistics::Judgement::Marginal, Some(OnMarginal::Pass)) => Verdict::Passed,
        (statistics::Judgement::Fail, _) | (statistics::Judgement::Marginal, Some(OnMarginal::Fail)) => Verdict::Failed,
        (statistics::Judgement::Marginal, Some(OnMarginal::Extend)) => Verdict::Marginal,
        (statistics::Judgement::Marginal, _) => Verdict::Inconclusive,
    };
    let result = ComparisonResult {
        baseline_query: bounded(baseline_query, MAX_EVIDENCE_TEXT),
        canary_samples: canary.len() as u32,
        baseline_samples: baseline.len() as u32,
        u: finite(c.test.u),
        p_value: finite(c.test.p_value),
        effect: finite(round(c.effect)),
        judgement: format!("{:?}", c.judgement),
        downsampled_from,
    };
    Ok((result, verdict))
}

/// What names the stable route's latencies where a comparison names its baseline.
pub const STABLE_LATENCIES: &str = "the stable route's request latencies";

/// A `compareToStable` check as a comparison of samples: the canary's request latencies (higher is worse)
/// against stable's over the window; none when they were not read.
fn stable_comparison(against: &StableComparison, latencies: Option<&WindowLatencies>) -> (Compare, Option<Samples>) {
    let compare = Compare {
        baseline_query: STABLE_LATENCIES.into(),
        worse: Some(ApiWorse::Higher),
        tolerance: against.tolerance,
        alpha: against.alpha,
        on_marginal: against.on_marginal,
    };
    let samples = latencies
        .map(|l| Samples { baseline_query: STABLE_LATENCIES.into(), values: Ok((l.canary.clone(), l.stable.clone())) });
    (compare, samples)
}

/// How a check's result is named for people: the proxy's metric, or `query`.
pub fn metric_name(result: &MetricResult) -> String {
    result.metric.map(|m| format!("{m:?}")).unwrap_or_else(|| "query".into())
}

/// The answer of a check's PromQL query at the end of a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Queried {
    /// The query as run (variables replaced).
    pub query: String,
    /// Its value, or why there is none (no sample, NaN, Prometheus unreachable or refusing).
    pub value: Result<f64, String>,
    /// For a `compare` check: both queries' samples over the window.
    pub samples: Option<Samples>,
}

/// A `compare` check's samples over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    /// The baseline's query as run.
    pub baseline_query: String,
    /// The canary's and the baseline's samples, or why there are none.
    pub values: Result<(Vec<f64>, Vec<f64>), String>,
}

pub(crate) fn round(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

/// What happened between two readings of a counter (a proxy restarted in between counts from 0).
pub(crate) fn delta(before: u64, after: u64) -> u64 {
    if after >= before { after - before } else { after }
}

/// A route's counters over a window, summed over the proxy pods; connect time weighted by connections.
pub(crate) fn window_counters(
    before: &BTreeMap<String, RouteCounters>,
    after: &BTreeMap<String, RouteCounters>,
    route: fn(&RouteCounters) -> &Counters,
) -> Counters {
    let mut sum = Counters::default();
    let mut weighted_connect = 0u128;
    for (pod, now) in after {
        let then = before.get(pod).map(route).copied().unwrap_or_default();
        let now = route(now);
        let sessions = delta(then.sessions, now.sessions);
        sum.sessions = sum.sessions.saturating_add(sessions);
        sum.errors = sum.errors.saturating_add(delta(then.errors, now.errors));
        sum.check_failures = sum.check_failures.saturating_add(delta(then.check_failures, now.check_failures));
        sum.requests = sum.requests.saturating_add(delta(then.requests, now.requests));
        sum.request_errors = sum.request_errors.saturating_add(delta(then.request_errors, now.request_errors));
        weighted_connect = weighted_connect.saturating_add(u128::from(sessions) * u128::from(now.connect_time_ms));
    }
    let connect = weighted_connect.checked_div(u128::from(sum.sessions)).unwrap_or(0);
    sum.connect_time_ms = u64::try_from(connect).unwrap_or(u64::MAX);
    // counts from outside, summed over the pods: no larger than a status holds
    sum.bounded()
}

/// The latencies of each route's HTTP requests over a window (milliseconds, at most
/// [`crate::dataplane::requests::MAX_LATENCIES`] per proxy pod, evenly spread), as the proxy agents measured
/// them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowLatencies {
    pub stable: Vec<f64>,
    pub canary: Vec<f64>,
}

impl WindowLatencies {
    /// Each route's finite latencies, sorted: what [`percentile`] takes, sorted once for every percentile of
    /// a window.
    pub fn sorted(&self) -> WindowLatencies {
        let sorted = |values: &[f64]| {
            let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
            sorted.sort_by(f64::total_cmp);
            sorted
        };
        WindowLatencies { stable: sorted(&self.stable), canary: sorted(&self.canary) }
    }
}

/// The `percentile` (0 to 100) of `sorted` (finite values in order, [`WindowLatencies::sorted`]): the
/// smallest value at least that share of them do not exceed.
pub(crate) fn percentile(sorted: &[f64], percentile: f64) -> Option<f64> {
    if sorted.is_empty() || !percentile.is_finite() {
        return None;
    }
    let rank = ((percentile.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The percent of a route's requests that succeeded; none without a request.
fn success_rate(c: &Counters) -> Option<f64> {
    (c.requests > 0).then(|| 100.0 * c.requests.saturating_sub(c.request_errors) as f64 / c.requests as f64)
}

/// The default percentile of `requestDuration`.
pub const DEFAULT_PERCENTILE: f64 = 99.0;

/// A metric's value for a route over a window: from its counters, or for `requestDuration` from its
/// requests' latencies (`sorted`, see [`WindowLatencies::sorted`]; none without one).
pub(crate) fn value_of(metric: Metric, c: &Counters, sorted: Option<&[f64]>, check: &MetricCheck) -> Option<f64> {
    Some(match metric {
        Metric::ErrorRate if c.sessions == 0 => 0.0,
        Metric::ErrorRate => c.errors as f64 / c.sessions as f64,
        Metric::ConnectTime => c.connect_time_ms as f64,
        Metric::HealthCheckFailures => c.check_failures as f64,
        Metric::Sessions => c.sessions as f64,
        Metric::RequestSuccessRate => success_rate(c)?,
        Metric::RequestDuration => percentile(sorted?, check.percentile.unwrap_or(DEFAULT_PERCENTILE))?,
    })
}

/// Why a request metric has no value over a window.
fn no_request_data(metric: Metric, latencies: Option<&WindowLatencies>) -> String {
    match (metric, latencies) {
        (Metric::RequestDuration, None) => "the proxy's request latencies were not read".into(),
        _ => "no HTTP request measured (is traffic.protocol http?)".into(),
    }
}

/// Judges a window: inconclusive when the canary took fewer than `min_samples` connections (or a check
/// against the stable route has too few stable ones, or a query had no data and `onNoData` is not `Fail`),
/// failed when a check fails, else passed. `queried`: the checks' PromQL answers, by index.
pub fn judge(
    settings: &Settings,
    release: &ReleaseStatus,
    window: &Window,
    now_counters: &BTreeMap<String, RouteCounters>,
    queried: Option<&[Option<Queried>]>,
    latencies: Option<&WindowLatencies>,
    now: &Time,
) -> Evidence {
    let canary = window_counters(&window.counters, now_counters, |r| &r.canary);
    let stable = window_counters(&window.counters, now_counters, |r| &r.stable);
    let enough = |c: &Counters| c.sessions >= settings.min_samples;
    // each route's latencies sorted once, for every percentile taken of them
    let sorted = latencies.map(WindowLatencies::sorted);
    let metrics: Vec<MetricResult> = settings
        .checks
        .iter()
        .enumerate()
        .map(|(i, check)| {
            let answer = queried.and_then(|q| q.get(i)).and_then(Option::as_ref);
            let (value, query, mut no_data) = match (check.metric, &check.prometheus, answer) {
                (_, Some(p), Some(q)) if p.compare.is_some() && q.value.is_ok() => (0.0, Some(q.query.clone()), None),
                (_, Some(_), Some(Queried { query, value: Ok(v), .. })) if !v.is_finite() => {
                    (0.0, Some(query.clone()), Some(format!("the query returned {v}: not a measurement")))
                }
                (_, Some(_), Some(Queried { query, value: Ok(v), .. })) => (*v, Some(query.clone()), None),
                (_, Some(_), Some(Queried { query, value: Err(why), .. })) => {
                    (0.0, Some(query.clone()), Some(why.clone()))
                }
                (_, Some(p), None) => (0.0, Some(p.query.clone()), Some("Prometheus was not queried".to_string())),
                (Some(metric), None, _) => {
                    match value_of(metric, &canary, sorted.as_ref().map(|l| l.canary.as_slice()), check) {
                        Some(value) => (value, None, None),
                        None => (0.0, None, Some(no_request_data(metric, latencies))),
                    }
                }
                (None, None, _) => (0.0, None, Some("the check names no metric and no query".to_string())),
            };
            // a canary-versus-baseline check: the samples' test decides
            let mut compared = None;
            if let Some(compare) =
                check.prometheus.as_ref().and_then(|p| p.compare.as_ref()).filter(|_| no_data.is_none())
            {
                match compare_samples(compare, answer.and_then(|q| q.samples.as_ref())) {
                    Ok(result) => compared = Some(result),
                    Err(why) => no_data = Some(why),
                }
            }
            // the canary's request latencies against stable's, the same test
            if let Some(against) = check.compare_to_stable.as_ref().filter(|_| no_data.is_none()) {
                let (compare, samples) = stable_comparison(against, latencies);
                match compare_samples(&compare, samples.as_ref()) {
                    Ok(result) => compared = Some(result),
                    Err(why) => no_data = Some(why),
                }
            }
            let against_stable = check.max_over_stable.is_some() || check.max_below_stable.is_some();
            let stable_value = check
                .metric
                .filter(|_| against_stable)
                .and_then(|m| value_of(m, &stable, sorted.as_ref().map(|l| l.stable.as_slice()), check));
            let mut bounds = vec![];
            let mut failed = false;
            if let Some(max) = check.max {
                bounds.push(format!("max {max}"));
                failed |= value > max;
            }
            if let Some(min) = check.min {
                bounds.push(format!("min {min}"));
                failed |= value < min;
            }
            let mut verdict = Verdict::Passed;
            if let Some(over) = check.max_over_stable {
                bounds.push(format!("maxOverStable {over}"));
                match stable_value.filter(|_| enough(&stable)) {
                    Some(stable_value) => failed |= value - stable_value > over,
                    None => verdict = Verdict::Inconclusive,
                }
            }
            if let Some(below) = check.max_below_stable {
                bounds.push(format!("maxBelowStable {below}"));
                match stable_value.filter(|_| enough(&stable)) {
                    Some(stable_value) => failed |= stable_value - value > below,
                    None => verdict = Verdict::Inconclusive,
                }
            }
            if let Some((_, judged)) = &compared {
                failed |= *judged == Verdict::Failed;
                if matches!(judged, Verdict::Inconclusive | Verdict::Marginal) {
                    verdict = *judged;
                }
            }
            if no_data.is_some() {
                // never a pass
                verdict = match check.on_no_data {
                    Some(OnNoData::Fail) => Verdict::Failed,
                    _ => Verdict::Inconclusive,
                };
            } else if !enough(&canary) {
                verdict = Verdict::Inconclusive;
            } else if failed {
                verdict = Verdict::Failed;
            }
            MetricResult {
                metric: check.metric.filter(|_| check.prometheus.is_none()),
                query: query.map(|q| bounded(&q, MAX_EVIDENCE_TEXT)),
                value: finite(round(compared.as_ref().map(|(c, _)| c.effect).unwrap_or(value))),
                no_data: no_data.map(|why| bounded(&why, MAX_EVIDENCE_TEXT)),
                comparison: compared.map(|(c, _)| c),
                stable_value: stable_value.map(|v| finite(round(v))),
                bound: bounds.join(", "),
                verdict,
            }
        })
        .collect();
    // with enough canary traffic, a failed check fails the window even when another one is inconclusive
    let verdict = if !enough(&canary) {
        Verdict::Inconclusive
    } else if metrics.iter().any(|m| m.verdict == Verdict::Failed) {
        Verdict::Failed
    } else if metrics.iter().any(|m| m.verdict == Verdict::Inconclusive) {
        Verdict::Inconclusive
    } else if metrics.iter().any(|m| m.verdict == Verdict::Marginal) {
        Verdict::Marginal
    } else {
        Verdict::Passed
    };
    let seconds = elapsed(&window.started_at, now).as_secs_f64();
    let requests = (canary.requests > 0 || stable.requests > 0 || latencies.is_some())
        .then(|| window_requests(&canary, &stable, sorted.as_ref(), seconds));
    Evidence {
        step: release.step,
        weight: release.weight,
        started_at: window.started_at.clone(),
        finished_at: now.clone(),
        canary_sessions: canary.sessions,
        stable_sessions: stable.sessions,
        verdict,
        metrics,
        requests,
    }
}

/// Both routes' requests over a window of `seconds`: their counters over it ([`window_counters`]) and their
/// latencies (`sorted`, see [`WindowLatencies::sorted`]).
pub(crate) fn window_requests(
    canary: &Counters,
    stable: &Counters,
    sorted: Option<&WindowLatencies>,
    seconds: f64,
) -> WindowRequests {
    WindowRequests {
        canary: summary(canary, sorted.map(|l| l.canary.as_slice()), seconds),
        stable: summary(stable, sorted.map(|l| l.stable.as_slice()), seconds),
    }
}

/// A route's requests over a window of `seconds`.
fn summary(c: &Counters, sorted: Option<&[f64]>, seconds: f64) -> RouteRequestSummary {
    let at = |p: f64| sorted.and_then(|l| percentile(l, p)).map(|ms| finite(round(ms)));
    RouteRequestSummary {
        requests: c.requests,
        rate: finite(round(if seconds > 0.0 { c.requests as f64 / seconds } else { 0.0 })),
        success_rate: success_rate(c).map(|v| finite(round(v))),
        p50_ms: at(50.0),
        p90_ms: at(90.0),
        p99_ms: at(99.0),
    }
}
