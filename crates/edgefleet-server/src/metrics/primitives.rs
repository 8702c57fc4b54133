//! Counters, gauges and histograms on atomics: updated from any task without locks,
//! read at scrape time into `exposition` values.
//!
//! A histogram keeps one count per bucket (not cumulative) and its sum as `f64` bits; a
//! scrape may see an observation's bucket before its sum, which Prometheus tolerates, and
//! `exposition` derives `_count` from the buckets so the two always agree.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::exposition::{HistogramSnapshot, Value};

/// A monotonic count. Wraps at 2^64, which no counter of this server reaches.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Follows a total kept elsewhere (never going down).
    pub fn raise_to(&self, total: u64) {
        self.0.fetch_max(total, Ordering::Relaxed);
    }

    pub fn value(&self) -> Value {
        Value::Unsigned(self.get())
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn value(&self) -> Value {
        Value::Signed(self.get())
    }
}

/// Observations counted into buckets with fixed upper bounds (`le`).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `counts[i]` for `(bounds[i-1], bounds[i]]`; the last one for above every bound.
    counts: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
}

impl Histogram {
    /// `bounds` must be sorted ascending (checked by the tests of every bucket set).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Counts `value`; NaN is ignored (it belongs in no bucket).
    pub fn observe(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        let index = self.bounds.partition_point(|bound| *bound < value);
        if let Some(count) = self.counts.get(index) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        // A compare-and-swap loop: there is no atomic float add.
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
        }
    }
}

/// Whether bucket bounds are usable: finite and strictly ascending.
#[cfg(test)]
pub fn bounds_are_valid(bounds: &[f64]) -> bool {
    bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|pair| pair[0] < pair[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    static BOUNDS: [f64; 3] = [0.1, 1.0, 10.0];

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_is_not_below_them() {
        let histogram = Histogram::new(&BOUNDS);
        for value in [0.0, 0.1, 0.100_001, 1.0, 5.0, 10.0, 10.5, 1e9, f64::NAN] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        // le=0.1: 0.0, 0.1; le=1: 0.100001, 1.0; le=10: 5, 10; above: 10.5, 1e9; NaN ignored.
        assert_eq!(snapshot.counts, vec![2, 2, 2, 2]);
        assert!(
            (snapshot.sum - (0.0 + 0.1 + 0.100_001 + 1.0 + 5.0 + 10.0 + 10.5 + 1e9)).abs() < 1e-6
        );
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let histogram = std::sync::Arc::new(Histogram::new(&BOUNDS));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let histogram = histogram.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        histogram.observe(0.5);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.counts, vec![0, 40_000, 0, 0]);
        assert_eq!(snapshot.sum, 20_000.0);
    }

    #[test]
    fn counters_and_gauges() {
        let counter = Counter::default();
        counter.add(2);
        counter.add(3);
        assert_eq!(counter.value(), Value::Unsigned(5));
        let gauge = Gauge::default();
        gauge.add(2);
        gauge.add(-5);
        assert_eq!(gauge.value(), Value::Signed(-3));
        gauge.set(7);
        assert_eq!(gauge.get(), 7);
    }

    #[test]
    fn bounds_validation() {
        assert!(bounds_are_valid(&BOUNDS));
        assert!(!bounds_are_valid(&[1.0, 1.0]));
        assert!(!bounds_are_valid(&[2.0, 1.0]));
        assert!(!bounds_are_valid(&[1.0, f64::INFINITY]));
    }
}
