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
/// arrangements of the two samples whose U is at least `u`. The arrangements by U are the coefficients of the
/// Gaussian binomial [n1 + n2 choose k]_q, k the smaller sample: the product over i = 1..=k of
/// (1 - q^(n + i)) / (1 - q^i), n the larger one: O(k² n) time and O(k n) memory (8 x 20,000 is 160,001
/// coefficients), summed on the lower side of the symmetric distribution, where they are most exact.
fn exact_upper_tail(n1: usize, n2: usize, u: usize) -> f64 {
    let (k, n) = (n1.min(n2), n1.max(n2));
    let max_u = k * n;
    if u > max_u {
        return 0.0;
    }
    let mut counts = vec![0.0f64; max_u + 1];
    counts[0] = 1.0;
    for i in 1..=k {
        // times (1 - q^(n + i)): from the top down, so that each coefficient is read before it changes
        for degree in (n + i..=max_u).rev() {
            counts[degree] -= counts[degree - n - i];
        }
        // divided by (1 - q^i): a running sum with stride i
        for degree in i..=max_u {
            counts[degree] += counts[degree - i];
        }
    }
    let total: f64 = counts.iter().sum();
    // P(U >= u) = P(U <= max_u - u), by symmetry
    let tail: f64 = counts[..=max_u - u].iter().sum();
    (tail / total).clamp(0.0, 1.0)
}

/// The Hodges-Lehmann estimate of how much `x` is shifted from `y`: the median of every difference x - y,
/// found without building the n x m differences: each order statistic is the smallest value `d` with at
/// least that many differences `<= d`, counted in O(n + m) over the sorted samples and bisected over the
/// 64-bit order of floating-point values (at most 64 counts): O((n + m) log(n + m)) time, O(n + m) memory.
/// `None` for an empty sample or one that holds a value that is not a number.
pub fn hodges_lehmann(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.is_empty() || y.is_empty() || x.iter().chain(y).any(|v| v.is_nan()) {
        return None;
    }
    let mut x = x.to_vec();
    let mut y = y.to_vec();
    x.sort_by(f64::total_cmp);
    y.sort_by(f64::total_cmp);
    let total = x.len() as u128 * y.len() as u128;
    let middle = total / 2;
    let kth = |k: u128| kth_difference(&x, &y, k);
    Some(if total % 2 == 1 { kth(middle + 1) } else { kth(middle) / 2.0 + kth(middle + 1) / 2.0 })
}

/// How many differences `a - b` (a of `x`, b of `y`, both sorted) are at most `d`.
fn differences_at_most(x: &[f64], y: &[f64], d: f64) -> u128 {
    // for each a (ascending), the b with a - b <= d are a suffix of y starting where the last one started
    // or later (a - b only grows with a and falls with b, rounding included)
    let (mut count, mut start) = (0u128, 0usize);
    for a in x {
        while start < y.len() && a - y[start] > d {
            start += 1;
        }
        count += (y.len() - start) as u128;
    }
    count
}

/// The `k`-th smallest (1-based) difference `a - b` of sorted `x` and `y`.
fn kth_difference(x: &[f64], y: &[f64], k: u128) -> f64 {
    // floating-point values in the order of unsigned integers (negative ones reversed)
    let key = |v: f64| {
        let bits = v.to_bits();
        if bits >> 63 == 1 { !bits } else { bits | 1 << 63 }
    };
    let value = |key: u64| if key >> 63 == 1 { f64::from_bits(key & !(1 << 63)) } else { f64::from_bits(!key) };
    let (mut low, mut high) = (key(x[0] - y[y.len() - 1]), key(x[x.len() - 1] - y[0]));
    // invariant: fewer than k differences are below value(low), at least k are at most value(high)
    while low < high {
        let middle = low + (high - low) / 2;
        if differences_at_most(x, y, value(middle)) >= k {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    value(low)
}

/// The most samples of each side a comparison judges: more (a long window) are thinned evenly to this many
/// ([`downsample`]), which the evidence says.
pub const MAX_SAMPLES: usize = 2_000;

/// At most `max` of `values`, evenly spaced over them (all of them when there are no more).
pub fn downsample(values: &[f64], max: usize) -> Vec<f64> {
    if values.len() <= max {
        return values.to_vec();
    }
    (0..max).map(|i| values[i * values.len() / max]).collect()
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
    // differences beyond the floating-point range can make a median of +inf and -inf: no judgement
    if effect.is_nan() || test.p_value.is_nan() {
        return None;
    }
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
    fn large_samples_are_judged_in_bounded_time_and_memory() {
        // 7,200 x 7,200 values would have been 51 million differences (400 MB) and 8 x 20,000 an exact
        // distribution of 1.6 billion counts: both are now linear in the samples
        let canary: Vec<f64> = (0..7_200).map(|i| 100.0 + ((i * 37) % 101) as f64).collect();
        let baseline: Vec<f64> = (0..7_200).map(|i| 100.0 + ((i * 53) % 97) as f64).collect();
        let c = compare(&canary, &baseline, Worse::Higher, 0.05, 0.1).unwrap();
        assert!(c.shift.abs() < 5.0, "{c:?}");
        let small: Vec<f64> = (0..8).map(|i| i as f64 + 0.5).collect();
        let large: Vec<f64> = (0..20_000).map(f64::from).collect();
        let test = mann_whitney(&small, &large).unwrap();
        assert_eq!(test.method, Method::Exact);
        assert!(test.p_value > 0.0 && test.p_value <= 1.0, "{test:?}");
        assert_eq!(downsample(&large, MAX_SAMPLES).len(), MAX_SAMPLES);
        assert_eq!(downsample(&large, MAX_SAMPLES)[1], 10.0);
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
        fn hodges_lehmann_is_the_median_of_every_difference(
            x in prop::collection::vec(-1e6f64..1e6, 1..25),
            y in prop::collection::vec(-1e6f64..1e6, 1..25),
        ) {
            let mut all: Vec<f64> = x.iter().flat_map(|a| y.iter().map(move |b| a - b)).collect();
            let expected = median(&mut all).unwrap();
            let got = hodges_lehmann(&x, &y).unwrap();
            prop_assert!((got - expected).abs() <= 1e-9 * expected.abs().max(1.0), "{} against {}", got, expected);
        }

        #[test]
        fn the_exact_tail_is_the_count_of_arrangements(n1 in 1usize..7, n2 in 1usize..9, u in 0usize..70) {
            // every arrangement of n1 + n2 distinct values, counted by brute force
            let n = n1 + n2;
            let (mut at_least, mut all) = (0u64, 0u64);
            for mask in 0u32..(1 << n) {
                if mask.count_ones() as usize != n1 {
                    continue;
                }
                // U of the first sample: for each of its values (bit set), the second's values below it
                let mut big_u = 0usize;
                let mut below = 0usize;
                for bit in 0..n {
                    if mask & (1 << bit) != 0 { big_u += below } else { below += 1 }
                }
                all += 1;
                at_least += (big_u >= u) as u64;
            }
            let expected = at_least as f64 / all as f64;
            prop_assert!((exact_upper_tail(n1, n2, u) - expected).abs() < 1e-12);
        }

        #[test]
        fn a_sample_against_itself_shows_no_difference(x in sample()) {
            let test = mann_whitney(&x, &x).unwrap();
            prop_assert!(test.p_value > 0.9, "{:?}", test);
            prop_assert_eq!(hodges_lehmann(&x, &x), Some(0.0));
        }
    }
}
