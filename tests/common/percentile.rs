//! Percentiles of measured durations (fault tests state their bounds on them).

use std::time::Duration;

/// Percentile (0-100) of a set of durations, by nearest rank.
pub fn percentile(samples: &mut [Duration], pct: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((pct / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}
