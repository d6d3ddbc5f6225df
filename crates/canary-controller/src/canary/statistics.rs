//! Canary-versus-baseline statistics, pure: the Mann-Whitney U test (two-sided; exact for small samples
//! without ties, else the normal approximation with tie and continuity corrections, as scipy's
//! `mannwhitneyu`), the Hodges-Lehmann estimate of the shift between two samples, and the judgement of a
//! canary's samples against a baseline's (Kayenta's idea, built in): a difference that is both significant
//! and larger than a tolerance fails, a significant one within the tolerance is marginal, anything else
//! passes. Tested against scipy's values for fixed samples (`fixtures/mannwhitney.json`, written by
//! `scripts/mannwhitney-fixtures.py`).

/// How a p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The exact distribution of U (small samples without ties).
    Exact,
    /// The normal approximation, corrected for ties and for continuity.
    Asymptotic,
}

/// The result of a two-sided Mann-Whitney U test of `x` against `y`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U of `x`: the pairs (x, y) with x > y, ties counted half.
    pub u: f64,
    pub p_value: f64,
    pub method: Method,
}

/// Samples at most this large (the smaller one) without ties get the exact distribution, as scipy's `auto`.
const EXACT_UP_TO: usize = 8;

/// The two-sided Mann-Whitney U test of `x` against `y`, with the method scipy's `auto` picks; `None` when a
/// sample is empty or holds a value that is not a number.
pub fn mann_whitney(x: &[f64], y: &[f64]) -> Option<MannWhitney> {
    let ranked = Ranked::of(x, y)?;
    let small = x.len().min(y.len()) <= EXACT_UP_TO;
    let method = if small && !ranked.has_ties { Method::Exact } else { Method::Asymptotic };
    Some(ranked.test(method))
}

/// The test with a given method (the exact one is only right without ties).
pub fn mann_whitney_with(x: &[f64], y: &[f64], method: Method) -> Option<MannWhitney> {
    Some(Ranked::of(x, y)?.test(method))
}

/// Both samples ranked together.
struct Ranked {
    n1: usize,
    n2: usize,
    /// U of the first sample.
    u1: f64,
    /// Σ (t³ - t) over groups of t tied values.
    tie_term: f64,
    has_ties: bool,
}

impl Ranked {
    fn of(x: &[f64], y: &[f64]) -> Option<Ranked> {
        if x.is_empty() || y.is_empty() || x.iter().chain(y).any(|v| v.is_nan()) {
            return None;
        }
        let mut all: Vec<(f64, bool)> = x.iter().map(|v| (*v, true)).chain(y.iter().map(|v| (*v, false))).collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut rank_sum, mut tie_term, mut start) = (0.0, 0.0, 0);
        while start < all.len() {
            let end = start + all[start..].iter().take_while(|(v, _)| *v == all[start].0).count();
            // ranks start..end (1-based: start+1 ..= end) share their average
            let average = (start + 1 + end) as f64 / 2.0;
            rank_sum += average * all[start..end].iter().filter(|(_, first)| *first).count() as f64;
            let t = (end - start) as f64;
            tie_term += t * t * t - t;
            start = end;
        }
        let n1 = x.len();
        let u1 = rank_sum - (n1 * (n1 + 1)) as f64 / 2.0;
        Some(Ranked { n1, n2: y.len(), u1, tie_term, has_ties: tie_term > 0.0 })
    }

    fn test(&self, method: Method) -> MannWhitney {
        let (n1, n2) = (self.n1 as f64, self.n2 as f64);
        let u = self.u1.max(n1 * n2 - self.u1);
        let p_value = match method {
            Method::Exact => 2.0 * exact_upper_tail(self.n1, self.n2, u.round() as usize),
            Method::Asymptotic => {
                let n = n1 + n2;
                let variance = n1 * n2 / 12.0 * ((n + 1.0) - self.tie_term / (n * (n - 1.0)));
                if variance <= 0.0 {
                    1.0 // every value equal: no evidence of a difference
                } else {
                    let z = (u - n1 * n2 / 2.0 - 0.5) / variance.sqrt();
                    2.0 * normal_upper_tail(z)
                }
            }
        };
        MannWhitney { u: self.u1, p_value: p_value.clamp(0.0, 1.0), method }
    }
}

/// P(Z >= z) for a standard normal Z.
fn normal_upper_tail(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// P(U >= u) under the null hypothesis, samples of `n1` and `n2` values without ties: the share of the
/// arrangements of the two samples whose U is at least `u`.
fn exact_upper_tail(n1: usize, n2: usize, u: usize) -> f64 {
    // counts[k][u], for m values of the first sample among k of the second: the arrangements whose U is u.
    // The largest value is the first sample's (it beats all k: U of m-1 among k, plus k) or the second's
    // (U of m among k-1). No value of the second sample: U = 0, one arrangement.
    let max_u = n1 * n2;
    let mut previous: Vec<Vec<f64>> = vec![vec![1.0]; n2 + 1]; // m = 0
    for m in 1..=n1 {
        let mut current: Vec<Vec<f64>> = vec![vec![1.0]; n2 + 1];
        for k in 1..=n2 {
            let mut counts = vec![0.0; m * k + 1];
            for (value, count) in previous[k].iter().enumerate() {
                counts[value + k] += count;
            }
            for (value, count) in current[k - 1].iter().enumerate() {
                counts[value] += count;
            }
            current[k] = counts;
        }
        previous = current;
    }
    let counts = &previous[n2];
    let total: f64 = counts.iter().sum();
    let tail: f64 = counts.iter().skip(u.min(max_u + 1)).sum();
    tail / total
}

/// The Hodges-Lehmann estimate of how much `x` is shifted from `y`: the median of every difference x - y.
pub fn hodges_lehmann(x: &[f64], y: &[f64]) -> Option<f64> {
    let mut differences: Vec<f64> = x.iter().flat_map(|a| y.iter().map(move |b| a - b)).collect();
    median(&mut differences)
}

/// The median; `None` for no value.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[middle] } else { (values[middle - 1] + values[middle]) / 2.0 })
}

/// Which way a metric gets worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worse {
    /// Errors, latency.
    Higher,
    /// Throughput, successes.
    Lower,
}

/// The verdict of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    Pass,
    /// Significantly worse, but within the tolerance.
    Marginal,
    /// Significantly worse, by more than the tolerance.
    Fail,
}

/// A canary's samples judged against a baseline's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub test: MannWhitney,
    /// How far the canary is from the baseline (Hodges-Lehmann), in the metric's unit.
    pub shift: f64,
    /// The shift relative to the baseline's median (`shift` itself when that median is 0): the effect size.
    pub effect: f64,
    pub judgement: Judgement,
}

/// Judges `canary` against `baseline`: worse (in the `worse` direction) with a p-value under `alpha` and an
/// effect larger than `tolerance` fails; significantly worse within the tolerance is marginal; anything
/// else passes. `None` when a sample is empty or not a number.
pub fn compare(canary: &[f64], baseline: &[f64], worse: Worse, alpha: f64, tolerance: f64) -> Option<Comparison> {
    let test = mann_whitney(canary, baseline)?;
    let shift = hodges_lehmann(canary, baseline)?;
    let base = median(&mut baseline.to_vec())?;
    let effect = if base == 0.0 { shift } else { shift / base.abs() };
    let harmful = match worse {
        Worse::Higher => effect > 0.0,
        Worse::Lower => effect < 0.0,
    };
    let judgement = match (test.p_value < alpha && harmful, effect.abs() > tolerance) {
        (false, _) => Judgement::Pass,
        (true, false) => Judgement::Marginal,
        (true, true) => Judgement::Fail,
    };
    Some(Comparison { test, shift, effect, judgement })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(serde::Deserialize)]
    struct Fixtures {
        generator: String,
        cases: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        x: Vec<f64>,
        y: Vec<f64>,
        method: String,
        u: f64,
        p: f64,
    }

    #[test]
    fn matches_scipy_on_the_reference_samples() {
        let fixtures: Fixtures = serde_json::from_str(include_str!("fixtures/mannwhitney.json")).unwrap();
        assert!(fixtures.generator.starts_with("scipy"), "{}", fixtures.generator);
        for case in &fixtures.cases {
            let method = if case.method == "exact" { Method::Exact } else { Method::Asymptotic };
            let got = mann_whitney_with(&case.x, &case.y, method).unwrap();
            assert_eq!(got.u, case.u, "{}: U", case.name);
            let error = (got.p_value - case.p).abs() / case.p.max(1e-300);
            assert!(error < 1e-9, "{}: p {} against scipy's {}", case.name, got.p_value, case.p);
        }
    }

    #[test]
    fn the_automatic_method_is_exact_for_small_samples_without_ties_only() {
        assert_eq!(mann_whitney(&[1.0, 2.0], &[3.0, 4.0, 5.0]).unwrap().method, Method::Exact);
        assert_eq!(mann_whitney(&[1.0, 3.0], &[3.0, 4.0, 5.0]).unwrap().method, Method::Asymptotic);
        let big: Vec<f64> = (0..20).map(f64::from).collect();
        assert_eq!(
            mann_whitney(&big, &big.iter().map(|v| v + 0.5).collect::<Vec<_>>()).unwrap().method,
            Method::Asymptotic
        );
        assert_eq!(mann_whitney(&[], &[1.0]), None);
        assert_eq!(mann_whitney(&[f64::NAN], &[1.0]), None);
    }

    #[test]
    fn a_canary_clearly_worse_fails_a_slightly_worse_one_is_marginal_a_better_one_passes() {
        let baseline: Vec<f64> = (0..40).map(|i| 100.0 + (i % 10) as f64).collect();
        let slower: Vec<f64> = baseline.iter().map(|v| v * 1.5).collect();
        let a_bit_slower: Vec<f64> = baseline.iter().map(|v| v + 3.0).collect();
        let faster: Vec<f64> = baseline.iter().map(|v| v * 0.5).collect();
        let judge = |canary: &[f64]| compare(canary, &baseline, Worse::Higher, 0.05, 0.1).unwrap();
        assert_eq!(judge(&slower).judgement, Judgement::Fail, "{:?}", judge(&slower));
        assert_eq!(judge(&a_bit_slower).judgement, Judgement::Marginal, "{:?}", judge(&a_bit_slower));
        assert_eq!(judge(&faster).judgement, Judgement::Pass, "{:?}", judge(&faster));
        assert_eq!(judge(&baseline).judgement, Judgement::Pass);
        // for a metric that gets worse when it drops, the faster one fails
        let lower = compare(&faster, &baseline, Worse::Lower, 0.05, 0.1).unwrap();
        assert_eq!(lower.judgement, Judgement::Fail, "{lower:?}");
        assert!((judge(&slower).effect - 0.5).abs() < 0.05, "{:?}", judge(&slower));
    }

    fn sample() -> impl Strategy<Value = Vec<f64>> {
        // small integers: ties happen
        prop::collection::vec((0u8..20).prop_map(f64::from), 1..30)
    }

    proptest! {
        #[test]
        fn u_of_both_samples_adds_up_and_the_p_value_is_symmetric(x in sample(), y in sample()) {
            let xy = mann_whitney(&x, &y).unwrap();
            let yx = mann_whitney(&y, &x).unwrap();
            prop_assert_eq!(xy.u + yx.u, (x.len() * y.len()) as f64);
            prop_assert!((xy.p_value - yx.p_value).abs() < 1e-12);
            prop_assert!((0.0..=1.0).contains(&xy.p_value));
        }

        #[test]
        fn a_sample_against_itself_shows_no_difference(x in sample()) {
            let test = mann_whitney(&x, &x).unwrap();
            prop_assert!(test.p_value > 0.9, "{:?}", test);
            prop_assert_eq!(hodges_lehmann(&x, &x), Some(0.0));
        }
    }
}
