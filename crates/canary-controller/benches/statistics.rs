//! The canary-versus-baseline statistics at window sizes no release reaches (a window's samples are capped at
//! `statistics::MAX_SAMPLES`), to show they stay bounded in time and memory for any sample sizes: Hodges-Lehmann
//! without the n x m differences, the exact Mann-Whitney distribution from the Gaussian binomial.
//! `cargo bench --bench statistics`; prints time and peak heap per case, and the same for the capped size as
//! the baseline of the run.

use canary_controller::canary::statistics::{self, Worse};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Counts the heap in use and its peak.
struct Counting;
static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Latency-like samples: a spread with ties, deterministic.
fn samples(n: usize, seed: usize, shift: f64) -> Vec<f64> {
    (0..n).map(|i| 100.0 + shift + ((i * 7919 + seed * 104729) % 1000) as f64 / 10.0).collect()
}

fn measure(name: &str, canary: Vec<f64>, baseline: Vec<f64>) -> (f64, usize) {
    let before = IN_USE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let started = Instant::now();
    let judged = statistics::compare(&canary, &baseline, Worse::Higher, 0.05, 0.1).expect("judged");
    let seconds = started.elapsed().as_secs_f64();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    println!(
        "{name:<34} {:>9.1} ms {:>10.2} MiB   p {:.3e} ({:?}), effect {:+.4}",
        seconds * 1e3,
        peak as f64 / (1 << 20) as f64,
        judged.test.p_value,
        judged.test.method,
        judged.effect
    );
    (seconds, peak)
}

fn main() {
    println!("statistics::compare (Mann-Whitney U and Hodges-Lehmann), time and peak heap beyond the inputs\n");
    let cap = statistics::MAX_SAMPLES;
    let (base_time, base_peak) =
        measure(&format!("{cap} x {cap} (the cap: baseline)"), samples(cap, 1, 3.0), samples(cap, 2, 0.0));
    let (big_time, big_peak) =
        measure("10,800 x 10,800 (3 h at 1/s)", samples(10_800, 1, 3.0), samples(10_800, 2, 0.0));
    let (exact_time, exact_peak) = measure(
        "8 x 20,000 (exact distribution)",
        (0..8).map(|i| 10_000.25 + i as f64 * 1_000.0).collect(),
        (0..20_000).map(|i| i as f64 + 0.5).collect(),
    );
    println!(
        "\nagainst the cap: 10,800 x 10,800 takes {:.1}x the time and {:.1}x the memory; 8 x 20,000 {:.1}x and {:.1}x",
        big_time / base_time,
        big_peak as f64 / base_peak as f64,
        exact_time / base_time,
        exact_peak as f64 / base_peak as f64
    );
    println!("(materialized, 10,800 x 10,800 differences would be {} MiB)", (10_800u64 * 10_800 * 8) >> 20);
}
