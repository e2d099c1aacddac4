//! Publish-to-delivery latency: the `LatencyRecorder` each load-generator process
//! keeps, the compact form it sends to the parent, and the percentiles reported.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency tracked (60 s, in nanoseconds); anything later is clamped here.
const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// An HDR histogram of latencies in nanoseconds, 3 significant digits.
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        // Constant bounds (1 ns .. 60 s, 3 digits) that hdrhistogram accepts; they
        // never depend on input, so this cannot fail at run time.
        let histogram = Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3).expect("constant histogram bounds are valid");
        LatencyRecorder { histogram }
    }

    /// Records one latency.
    pub fn record(&mut self, nanos: u64) {
        self.histogram.saturating_record(nanos.clamp(1, MAX_TRACKED_NS));
    }

    /// Forgets everything recorded (between warm-up and measurement).
    pub fn reset(&mut self) {
        self.histogram.reset();
    }

    /// The compact form sent from a worker to the parent.
    pub fn to_buckets(&self) -> LatencyBuckets {
        LatencyBuckets {
            buckets: self
                .histogram
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        }
    }

    /// Adds another recorder's buckets into this one.
    pub fn merge(&mut self, other: &LatencyBuckets) {
        for &(value, count) in &other.buckets {
            let _ = self.histogram.record_n(value.clamp(1, MAX_TRACKED_NS), count);
        }
    }

    /// The percentiles reported.
    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        let ms = |ns: u64| ns as f64 / 1e6;
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1e6,
        }
    }
}

/// Non-empty histogram buckets as (highest value in bucket, count) pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencyBuckets {
    /// The pairs, ascending by value.
    pub buckets: Vec<(u64, u64)>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Latencies recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_counts_and_percentiles() {
        let mut a = LatencyRecorder::new();
        let mut b = LatencyRecorder::new();
        for i in 1..=1000u64 {
            a.record(i * 1_000);
            b.record(i * 1_000_000);
        }
        let mut total = LatencyRecorder::new();
        total.merge(&a.to_buckets());
        total.merge(&b.to_buckets());
        let s = total.summary();
        assert_eq!(s.count, 2000);
        assert!((s.max_ms - 1000.0).abs() / 1000.0 < 0.01, "{s:?}");
        assert!(s.p50_ms <= 1.01, "{s:?}");
    }
}
