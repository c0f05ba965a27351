//! Distributions, written once: percentiles and histograms of durations for results
//! and the report.
//!
//! Two kinds, for two needs:
//! - [`Exact`]: the samples themselves, sorted. Results' staleness figures (p50, p99,
//!   p99.9, max, the shares fresh within a limit, the staleness histogram) are exact
//!   nearest-rank figures from these, as `results.json` has always given them.
//! - [`Latency`]: a mergeable histogram of latencies in quarter-octave buckets from
//!   1 µs (each bucket's upper bound is 2^¼ ≈ 1.19 times the previous one), kept in an
//!   [`hdrhistogram`] of bucket numbers, for the report's latency charts, where a
//!   figure to within a bucket is all a chart can show. Its quantiles are nearest-rank
//!   too, over the buckets: the upper bound of the bucket that holds the sample of
//!   that rank.

use hdrhistogram::Histogram;

/// The nearest-rank position (from 1) of quantile `q` among `n` samples.
fn rank(q: f64, n: u64) -> u64 {
    ((q * n as f64).ceil() as u64).clamp(1, n.max(1))
}

/// Samples kept whole and sorted: exact nearest-rank percentiles and counts.
#[derive(Debug, Clone, Default)]
pub struct Exact {
    sorted: Vec<u64>,
}

impl Exact {
    /// Sorts `samples`.
    pub fn new(mut samples: Vec<u64>) -> Exact {
        samples.sort_unstable();
        Exact { sorted: samples }
    }

    /// How many samples.
    pub fn len(&self) -> u64 {
        self.sorted.len() as u64
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The nearest-rank `q` quantile (`0.99`: the 99th percentile); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.sorted.is_empty() {
            return 0;
        }
        self.sorted[rank(q, self.len()) as usize - 1]
    }

    /// The largest sample; 0 when empty.
    pub fn max(&self) -> u64 {
        self.sorted.last().copied().unwrap_or(0)
    }

    /// How many samples are at most `limit`.
    pub fn at_most(&self, limit: u64) -> u64 {
        self.sorted.partition_point(|&s| s <= limit) as u64
    }

    /// How many samples fall in each bucket of `bounds` (ascending upper bounds,
    /// inclusive): the first holds those up to `bounds[0]`, each later one those above
    /// the previous bound up to its own.
    pub fn buckets(&self, bounds: &[u64]) -> Vec<u64> {
        let mut below = 0;
        bounds
            .iter()
            .map(|&le| {
                let upto = self.at_most(le);
                let count = upto - below;
                below = upto;
                count
            })
            .collect()
    }
}

/// How many quarter-octave buckets a [`Latency`] has: from 1 µs up to about 3.6 h.
pub const LATENCY_BUCKETS: u64 = 128;

/// A histogram of latencies (ns) in quarter octaves from 1 µs: mergeable, and as
/// precise as a bucket.
#[derive(Debug, Clone)]
pub struct Latency {
    /// Counts by bucket number, each recorded exactly (numbers below 256 are exact at
    /// two significant figures).
    buckets: Histogram<u32>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        Latency {
            buckets: Histogram::new_with_max(LATENCY_BUCKETS - 1, 2).expect("fixed, valid bounds"),
        }
    }

    /// The upper bound (ns) of bucket `b`.
    pub fn bound(b: u64) -> f64 {
        1_000.0 * 2f64.powf(b as f64 / 4.0)
    }

    /// The bucket of a latency: the first whose bound holds it (the last for anything
    /// longer).
    pub fn bucket(ns: u64) -> u64 {
        if ns <= 1_000 {
            0
        } else {
            (((ns as f64 / 1_000.0).log2() * 4.0).ceil() as u64).min(LATENCY_BUCKETS - 1)
        }
    }

    /// Counts one latency.
    pub fn record(&mut self, ns: u64) {
        self.buckets
            .record(Latency::bucket(ns))
            .expect("bucket numbers are within the histogram's range");
    }

    /// Adds another histogram's counts.
    pub fn add(&mut self, other: &Latency) {
        self.buckets
            .add(&other.buckets)
            .expect("histograms of one shape");
    }

    /// How many latencies were counted.
    pub fn len(&self) -> u64 {
        self.buckets.len()
    }

    /// True when none was.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The nearest-rank `q` quantile, as the upper bound (ns) of the bucket that holds
    /// it; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.is_empty() {
            return None;
        }
        // The histogram's own quantile is nearest-rank (`ceil(q × n)`, at least the
        // first), and exact here since every bucket number is recorded exactly.
        Some(Latency::bound(self.buckets.value_at_quantile(q)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest rank by definition: the smallest sample with at least `q × n` samples at
    /// or below it.
    fn nearest_rank(samples: &[u64], q: f64) -> u64 {
        let mut s = samples.to_vec();
        s.sort_unstable();
        *s.iter()
            .find(|&&x| s.iter().filter(|&&y| y <= x).count() as f64 >= q * s.len() as f64)
            .unwrap()
    }

    #[test]
    fn exact_quantiles_are_nearest_rank() {
        let samples: Vec<u64> = (0..1000u64).map(|i| (i * 7919) % 1013).collect();
        let e = Exact::new(samples.clone());
        for q in [0.0, 0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let want = if q == 0.0 {
                *samples.iter().min().unwrap()
            } else {
                nearest_rank(&samples, q)
            };
            assert_eq!(e.quantile(q), want, "q {q}");
        }
        assert_eq!(e.max(), 1012);
        assert_eq!(Exact::default().quantile(0.5), 0);
        assert_eq!(e.at_most(0), 1);
        assert_eq!(e.buckets(&[0, 10, 2000]).iter().sum::<u64>(), 1000);
    }

    #[test]
    fn latency_quantiles_are_nearest_rank_over_buckets() {
        // Latencies across the whole range, in every order of magnitude.
        let samples: Vec<u64> = (0..5000u64)
            .map(|i| (i * 2_654_435_761) % (1 << (i % 40)))
            .collect();
        let mut parts = [Latency::new(), Latency::new()];
        for (i, &s) in samples.iter().enumerate() {
            parts[i % 2].record(s);
        }
        let [mut all, other] = parts;
        all.add(&other);
        assert_eq!(all.len(), 5000);
        let buckets: Vec<u64> = samples.iter().map(|&s| Latency::bucket(s)).collect();
        for q in [0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                all.quantile(q),
                Some(Latency::bound(nearest_rank(&buckets, q))),
                "q {q}"
            );
        }
        assert_eq!(Latency::new().quantile(0.5), None);
        assert_eq!(Latency::bucket(u64::MAX), LATENCY_BUCKETS - 1);
        let mut longest = Latency::new();
        longest.record(u64::MAX);
        assert_eq!(
            longest.quantile(0.5),
            Some(Latency::bound(LATENCY_BUCKETS - 1))
        );
    }
}
