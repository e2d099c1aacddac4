//! WebSocket close codes the gateway sends, and the reconnect advice each carries.
//!
//! Codes in 1000-1015 keep their RFC 6455 meaning; 4000-4099 are shardcast's own.
//! A close reason may end in `retry_ms=<n>`: the earliest moment, in milliseconds,
//! at which the client should reconnect (a drain spreads these so a fleet does not
//! reconnect in one burst).

/// Normal closure, after the client's own close.
pub const NORMAL: u16 = 1000;
/// The gateway is shutting down or draining: reconnect (to another instance) after the hint.
pub const GOING_AWAY: u16 = 1001;
/// The client broke RFC 6455 framing (unmasked frame, bad opcode, bad continuation).
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text frame that is not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Policy violation (for example an auth failure); do not reconnect without a change.
pub const POLICY_VIOLATION: u16 = 1008;
/// A client message above the gateway's maximum message size.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// An unexpected failure on the gateway; reconnect with backoff.
pub const INTERNAL_ERROR: u16 = 1011;
/// The gateway is overloaded; reconnect with backoff, no sooner than the hint.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// The client did not read fast enough and its outbound queue overflowed.
pub const SLOW_CONSUMER: u16 = 4000;
/// Nothing was received from the client (not even a pong) within the idle timeout.
pub const IDLE_TIMEOUT: u16 = 4001;
/// The connection's token expired without a refresh: fetch a new token, then reconnect.
pub const TOKEN_EXPIRED: u16 = 4002;
/// No token where one is required, or the token (or its refresh) was refused: do not
/// reconnect with the same token.
pub const UNAUTHORIZED: u16 = 4003;
/// An operator disconnected this user: do not reconnect.
pub const DISCONNECTED: u16 = 4004;
/// The user already holds the maximum number of connections: reconnect with backoff.
pub const TOO_MANY_CONNECTIONS: u16 = 4005;

/// Whether a client should reconnect automatically after this close code.
pub fn should_reconnect(code: u16) -> bool {
    !matches!(
        code,
        POLICY_VIOLATION | PROTOCOL_ERROR | INVALID_PAYLOAD | MESSAGE_TOO_BIG | UNAUTHORIZED | DISCONNECTED
    )
}

/// Builds a close reason carrying a retry hint, e.g. `going away; retry_ms=1500`.
pub fn reason_with_retry(text: &str, retry_ms: u64) -> String {
    format!("{text}; retry_ms={retry_ms}")
}

/// Reads the retry hint out of a close reason, if it has one.
pub fn retry_ms(reason: &str) -> Option<u64> {
    let (_, tail) = reason.rsplit_once("retry_ms=")?;
    tail.trim().parse().ok()
}
