//! The reconnect policy: exponential backoff with full jitter, capped, combined
//! with the gateway's close code, its `retry_ms` close-reason hint and an HTTP
//! `Retry-After`, as section 12 of proto/PROTOCOL.md describes. Pure functions
//! over an injected uniform draw, so the policy is tested without sockets or clocks.

use std::time::Duration;

use shardcast_proto::close;

/// How the client spaces its reconnect attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// Reconnect automatically at all (default true).
    pub enabled: bool,
    /// The backoff ceiling for the first retry (the protocol's `base`, default 500 ms).
    pub initial_delay: Duration,
    /// The largest backoff ceiling (the protocol's `cap`, default 30 s). A connection that
    /// stays up this long resets the attempt count.
    pub max_delay: Duration,
    /// Growth factor of the ceiling per failed attempt (default 2; values below 1 count as 1).
    pub multiplier: f64,
    /// Stop after this many consecutive failed attempts (default: never).
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            enabled: true,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            max_attempts: None,
        }
    }
}

/// What to do after a connection closed or a connect attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ReconnectDecision {
    /// Do not reconnect.
    Stop(StopReason),
    /// Reconnect after `delay`, which already includes any hint.
    Retry {
        /// How long to wait before the next attempt.
        delay: Duration,
        /// The gateway's hint (close-reason `retry_ms` or HTTP `Retry-After`), if there was one.
        hint: Option<Duration>,
    },
}

/// Why the policy said not to reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Reconnecting is turned off.
    Disabled,
    /// The close code means the client is at fault (`should_reconnect` is false).
    CloseCode,
    /// `max_attempts` consecutive attempts failed.
    MaxAttempts,
}

impl ReconnectPolicy {
    /// A policy that never reconnects.
    pub fn disabled() -> Self {
        ReconnectPolicy {
            enabled: false,
            ..ReconnectPolicy::default()
        }
    }

    /// The upper bound of the jittered delay before retry number `attempt` (1 for the
    /// first retry after a loss, which the protocol text calls n = 0):
    /// `min(max_delay, initial_delay × multiplier^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(i32::MAX as u32) as i32;
        let growth = self.multiplier.max(1.0).powi(exponent);
        let ceiling = self.initial_delay.as_secs_f64() * growth;
        let max = self.max_delay.as_secs_f64();
        // A huge exponent overflows to infinity; the cap covers that case too.
        if !ceiling.is_finite() || ceiling >= max {
            self.max_delay
        } else {
            Duration::from_secs_f64(ceiling.max(0.0))
        }
    }

    /// The full-jitter backoff before retry number `attempt`: `unit × ceiling(attempt)`,
    /// where `unit` is a uniform draw from [0, 1). Spreading a fleet that lost the same
    /// gateway over the whole window is the point of full jitter.
    pub fn backoff_delay(&self, attempt: u32, unit: f64) -> Duration {
        let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
        self.ceiling(attempt).mul_f64(unit)
    }

    /// Decides whether and when to reconnect after a close with `code` and `reason`
    /// (1006 and a description for a failed attempt), for retry number `attempt`.
    /// `retry_after` is the HTTP `Retry-After` of a refused upgrade, if any.
    ///
    /// The delay is `max(backoff, retry_ms hint, Retry-After)`: a hint is a floor the
    /// gateway asks for, never a replacement for the jitter.
    pub fn decide(
        &self,
        code: u16,
        reason: &str,
        retry_after: Option<Duration>,
        attempt: u32,
        unit: f64,
    ) -> ReconnectDecision {
        if !self.enabled {
            return ReconnectDecision::Stop(StopReason::Disabled);
        }
        if !close::should_reconnect(code) {
            return ReconnectDecision::Stop(StopReason::CloseCode);
        }
        if self.max_attempts.is_some_and(|max| attempt > max) {
            return ReconnectDecision::Stop(StopReason::MaxAttempts);
        }
        let close_hint = close::retry_ms(reason).map(Duration::from_millis);
        let hint = match (close_hint, retry_after) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let backoff = self.backoff_delay(attempt, unit);
        ReconnectDecision::Retry {
            delay: backoff.max(hint.unwrap_or_default()),
            hint,
        }
    }
}

/// Reads an HTTP `Retry-After` value in its delay-seconds form. The HTTP-date form
/// is not used by the gateway and yields `None` (the backoff alone applies then).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// HTTP statuses of a refused upgrade after which the protocol says not to retry:
/// the request itself is wrong (section 12, step 4).
pub const FATAL_HANDSHAKE_STATUSES: [u16; 5] = [400, 404, 405, 426, 431];

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy::default()
    }

    #[test]
    fn ceiling_doubles_from_the_base_and_stops_at_the_cap() {
        let p = policy();
        assert_eq!(p.ceiling(0), Duration::from_millis(500));
        assert_eq!(p.ceiling(1), Duration::from_millis(500));
        assert_eq!(p.ceiling(2), Duration::from_millis(1000));
        assert_eq!(p.ceiling(3), Duration::from_millis(2000));
        assert_eq!(p.ceiling(7), Duration::from_millis(30_000)); // 32 s capped
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_zero_and_the_ceiling() {
        let p = policy();
        for attempt in 1..40 {
            let ceiling = p.ceiling(attempt);
            assert_eq!(p.backoff_delay(attempt, 0.0), Duration::ZERO);
            let top = p.backoff_delay(attempt, 0.999_999);
            assert!(
                top <= ceiling && top >= ceiling.mul_f64(0.999),
                "{attempt}: {top:?} vs {ceiling:?}"
            );
            for _ in 0..200 {
                let d = p.backoff_delay(attempt, fastrand::f64());
                assert!(d <= ceiling, "{attempt}: {d:?} > {ceiling:?}");
            }
        }
        // Out-of-range draws cannot escape the window either.
        assert_eq!(p.backoff_delay(1, 7.0), Duration::from_millis(500));
        assert_eq!(p.backoff_delay(1, -1.0), Duration::ZERO);
        assert_eq!(p.backoff_delay(1, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn jitter_spreads_over_the_window() {
        let p = policy();
        let draws: Vec<Duration> = (0..1000).map(|_| p.backoff_delay(3, fastrand::f64())).collect();
        let low = draws.iter().filter(|d| **d < Duration::from_millis(500)).count();
        let high = draws.iter().filter(|d| **d > Duration::from_millis(1500)).count();
        // Each quarter of the 2 s window should get roughly 250 draws.
        assert!(low > 150 && high > 150, "low {low}, high {high}");
    }

    #[test]
    fn odd_multipliers_and_tiny_caps_behave() {
        let p = ReconnectPolicy {
            multiplier: 0.5,
            ..policy()
        };
        assert_eq!(
            p.ceiling(5),
            Duration::from_millis(500),
            "a shrinking factor counts as 1"
        );
        let p = ReconnectPolicy {
            initial_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(1),
            ..policy()
        };
        assert_eq!(p.ceiling(1), Duration::from_secs(1), "the cap wins over the base");
    }

    #[test]
    fn retry_hint_is_a_floor_over_the_backoff() {
        let p = policy();
        // Backoff draw 0 → the hint alone decides.
        assert_eq!(
            p.decide(1001, "going away; retry_ms=700", None, 1, 0.0),
            ReconnectDecision::Retry {
                delay: Duration::from_millis(700),
                hint: Some(Duration::from_millis(700))
            }
        );
        // A backoff longer than the hint wins.
        assert_eq!(
            p.decide(1001, "going away; retry_ms=10", None, 3, 0.5),
            ReconnectDecision::Retry {
                delay: Duration::from_millis(1000),
                hint: Some(Duration::from_millis(10))
            }
        );
        // Any close code may carry the hint; the last occurrence counts.
        assert_eq!(
            p.decide(1013, "busy retry_ms=1; retry_ms=2500", None, 1, 0.1),
            ReconnectDecision::Retry {
                delay: Duration::from_millis(2500),
                hint: Some(Duration::from_millis(2500))
            }
        );
        // Malformed hints are no hints.
        assert_eq!(
            p.decide(1001, "going away; retry_ms=soon", None, 1, 0.0),
            ReconnectDecision::Retry {
                delay: Duration::ZERO,
                hint: None
            }
        );
    }

    #[test]
    fn retry_after_of_a_refused_upgrade_is_a_floor_too() {
        let p = policy();
        assert_eq!(
            p.decide(1006, "HTTP 503", Some(Duration::from_secs(2)), 1, 0.9),
            ReconnectDecision::Retry {
                delay: Duration::from_secs(2),
                hint: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(parse_retry_after(" 5 "), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn stops_after_codes_that_blame_the_client() {
        let p = policy();
        for code in [1002, 1007, 1008, 1009] {
            assert_eq!(
                p.decide(code, "", None, 1, 0.5),
                ReconnectDecision::Stop(StopReason::CloseCode)
            );
        }
        for code in [1001, 1006, 1011, 1013, 4000, 4001, 4999, 3000] {
            assert!(matches!(
                p.decide(code, "", None, 1, 0.5),
                ReconnectDecision::Retry { .. }
            ));
        }
    }

    #[test]
    fn reconnect_decision_matches_the_close_code_vectors() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../../../proto/vectors/close_codes.json")).expect("vector JSON");
        let entries = vectors.as_array().expect("array of close codes");
        assert!(!entries.is_empty());
        for entry in entries {
            let code = entry["code"].as_u64().expect("code") as u16;
            let reconnect = entry["reconnect"].as_bool().expect("reconnect");
            let decision = policy().decide(code, "", None, 1, 0.5);
            assert_eq!(
                matches!(decision, ReconnectDecision::Retry { .. }),
                reconnect,
                "close code {code} ({})",
                entry["name"]
            );
        }
    }

    #[test]
    fn disabled_and_max_attempts_stop() {
        assert_eq!(
            ReconnectPolicy::disabled().decide(1001, "", None, 1, 0.5),
            ReconnectDecision::Stop(StopReason::Disabled)
        );
        let p = ReconnectPolicy {
            max_attempts: Some(2),
            ..policy()
        };
        assert!(matches!(
            p.decide(1006, "", None, 2, 0.5),
            ReconnectDecision::Retry { .. }
        ));
        assert_eq!(
            p.decide(1006, "", None, 3, 0.5),
            ReconnectDecision::Stop(StopReason::MaxAttempts)
        );
    }
}
