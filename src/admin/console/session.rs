//! Console sign-in: the sessions a correct API key opens, their CSRF tokens, and
//! the per-address limit on wrong keys.
//!
//! A session is identified by 32 random bytes (ring's CSPRNG) sent only in an
//! HttpOnly, SameSite=Strict cookie; the store keeps their SHA-256 digests, so
//! the table itself holds nothing a cookie could be made from. Each session has
//! its own CSRF token, which the page reads from `/console/session` (same origin
//! only: no CORS) and sends back in a header on every state-changing request.
//! Everything lives in memory and ends with the process or the session's expiry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

/// The cookie that carries a session id.
pub const COOKIE: &str = "shardcast_console";
/// The request header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts from sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(3600);
/// Wrong keys one source address may send per [`FAILURE_WINDOW`] before every
/// attempt from it is refused until the window ends.
pub const MAX_FAILURES: u32 = 5;
/// The window wrong keys are counted over.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Most sessions kept at once; the oldest goes when a sign-in would exceed it.
const MAX_SESSIONS: usize = 1024;
/// Most source addresses whose failures are remembered at once.
const MAX_TRACKED_ADDRESSES: usize = 16_384;

/// One signed-in browser.
struct Session {
    csrf: String,
    expires: Instant,
}

/// What a sign-in attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum SignIn {
    /// The key was right: the new session's id, for the cookie.
    Opened(String),
    /// The key was wrong.
    WrongKey,
    /// Too many wrong keys from this address lately: not even checked.
    RateLimited {
        /// Seconds until attempts are taken again.
        retry_after: u64,
    },
}

/// A session a request proved it holds.
#[derive(Debug, Clone)]
pub struct SessionGrant {
    /// Its CSRF token.
    pub csrf: String,
}

/// Sign-in outcomes, as `shardcast_console_logins_total{result}`.
struct LoginCounters {
    ok: IntCounter,
    wrong_key: IntCounter,
    rate_limited: IntCounter,
}

/// Sessions and wrong-key counts of the console.
pub struct SessionStore {
    rng: SystemRandom,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    counters: LoginCounters,
    /// [`SESSION_LIFETIME`]; shorter in tests.
    lifetime: Duration,
}

impl SessionStore {
    /// An empty store whose counters are registered in `registry`.
    pub fn new(registry: &Registry) -> Result<SessionStore, prometheus::Error> {
        let logins = IntCounterVec::new(
            Opts::new(
                "shardcast_console_logins_total",
                "Console sign-ins, by result (ok, wrong_key, rate_limited).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(logins.clone()))?;
        Ok(SessionStore {
            rng: SystemRandom::new(),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            counters: LoginCounters {
                ok: logins.with_label_values(&["ok"]),
                wrong_key: logins.with_label_values(&["wrong_key"]),
                rate_limited: logins.with_label_values(&["rate_limited"]),
            },
            lifetime: SESSION_LIFETIME,
        })
    }

    /// Checks a key from `from` (`key_ok` is the constant-time verdict of the
    /// caller) and opens a session when it is right.
    pub fn sign_in(&self, from: IpAddr, key_ok: impl FnOnce() -> bool) -> SignIn {
        let now = Instant::now();
        if let Some(retry_after) = self.blocked(from, now) {
            self.counters.rate_limited.inc();
            return SignIn::RateLimited { retry_after };
        }
        if !key_ok() {
            self.counters.wrong_key.inc();
            self.record_failure(from, now);
            return SignIn::WrongKey;
        }
        let (Some(id), Some(csrf)) = (self.random_hex(), self.random_hex()) else {
            // No randomness, no session: refusing is the only safe answer.
            return SignIn::WrongKey;
        };
        self.counters.ok.inc();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id_digest(&id),
            Session {
                csrf,
                expires: now + self.lifetime,
            },
        );
        SignIn::Opened(id)
    }

    /// The live session a cookie header names, if any.
    pub fn session(&self, cookie_header: Option<&str>) -> Option<SessionGrant> {
        let id = cookie_value(cookie_header?, COOKIE)?;
        let sessions = lock(&self.sessions);
        let session = sessions.get(&id_digest(id))?;
        (session.expires > Instant::now()).then(|| SessionGrant {
            csrf: session.csrf.clone(),
        })
    }

    /// Ends the session a cookie header names.
    pub fn sign_out(&self, cookie_header: Option<&str>) {
        if let Some(id) = cookie_header.and_then(|h| cookie_value(h, COOKIE)) {
            lock(&self.sessions).remove(&id_digest(id));
        }
    }

    fn blocked(&self, from: IpAddr, now: Instant) -> Option<u64> {
        let failures = lock(&self.failures);
        let (since, count) = failures.get(&from)?;
        let elapsed = now.duration_since(*since);
        (*count >= MAX_FAILURES && elapsed < FAILURE_WINDOW).then(|| (FAILURE_WINDOW - elapsed).as_secs().max(1))
    }

    fn record_failure(&self, from: IpAddr, now: Instant) {
        let mut failures = lock(&self.failures);
        if failures.len() >= MAX_TRACKED_ADDRESSES {
            failures.retain(|_, (since, _)| now.duration_since(*since) < FAILURE_WINDOW);
        }
        let entry = failures.entry(from).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    fn random_hex(&self) -> Option<String> {
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes).ok()?;
        Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Whether a request's CSRF header matches its session's token, compared in
/// constant time.
pub fn csrf_matches(grant: &SessionGrant, headers: &hyper::HeaderMap) -> bool {
    let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    !given.is_empty() && bool::from(given.as_bytes().ct_eq(grant.csrf.as_bytes()))
}

/// The `Set-Cookie` value that stores a session id.
pub fn session_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn cleared_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn id_digest(id: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, id.as_bytes()).as_ref());
    out
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> SessionStore {
        SessionStore::new(&Registry::new()).expect("store")
    }

    #[test]
    fn a_right_key_opens_a_session_its_cookie_finds() {
        let s = store();
        let SignIn::Opened(id) = s.sign_in([127, 0, 0, 1].into(), || true) else {
            panic!("no session");
        };
        assert_eq!(id.len(), 64);
        let grant = s.session(Some(&format!("a=b; {COOKIE}={id}"))).expect("session");
        let with = |token: &str| {
            let mut h = hyper::HeaderMap::new();
            h.insert(CSRF_HEADER, token.parse().expect("header value"));
            h
        };
        assert!(csrf_matches(&grant, &with(&grant.csrf)));
        assert!(!csrf_matches(&grant, &with("nope")));
        assert!(!csrf_matches(&grant, &hyper::HeaderMap::new()));
        assert!(s.session(Some(&format!("{COOKIE}=00"))).is_none());
        s.sign_out(Some(&format!("{COOKIE}={id}")));
        assert!(s.session(Some(&format!("{COOKIE}={id}"))).is_none());
    }

    #[test]
    fn a_session_ends_at_its_expiry() {
        let mut s = store();
        s.lifetime = Duration::from_millis(30);
        let SignIn::Opened(id) = s.sign_in([127, 0, 0, 1].into(), || true) else {
            panic!("no session");
        };
        let cookie = format!("{COOKIE}={id}");
        assert!(s.session(Some(&cookie)).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(s.session(Some(&cookie)).is_none());
    }

    #[test]
    fn wrong_keys_from_one_address_are_limited_and_others_are_not() {
        let s = store();
        let bad: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..MAX_FAILURES {
            assert_eq!(s.sign_in(bad, || false), SignIn::WrongKey);
        }
        assert!(matches!(s.sign_in(bad, || true), SignIn::RateLimited { .. }));
        assert!(matches!(s.sign_in([10, 0, 0, 2].into(), || true), SignIn::Opened(_)));
    }
}
