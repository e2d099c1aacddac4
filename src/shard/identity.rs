//! What a shard does about identities (PROTOCOL.md sections 6.5-6.7 and 18): the
//! `connect`, `refresh` and `sub_refresh` operations, the permission and rate
//! checks a `subscribe` passes, and the expiry of connection and subscription
//! tokens, found by the shard's periodic sweep (no timer per connection). Tokens
//! are verified here once per operation, never per message, and never logged.

use std::sync::Arc;

use shardcast_proto::{close, ErrorCode, ServerFrame, UnsubscribeCode};
use tracing::warn;

use super::connection::{Connection, ConnectionAuth, ConnectionFlags, Disconnect, Phase};
use super::{Shard, ShardEnv, ShardState};
use crate::auth::{unix_now, AuthError, Identity, Refusal, SubscriptionRefusal, ANONYMOUS};
use crate::broker::user_counter::UserCounter;
use crate::fanout::control::UserCommand;

/// Why a connection was refused for its user's connection count.
pub(super) const USER_LIMIT_REACHED: &str = "this user already holds the maximum number of connections";

/// The outcome of asking for a place in the per-user connection count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// A place was taken; it is given back when the connection closes.
    Taken,
    /// The user holds the limit already.
    Full,
    /// Not counted: no limit, an anonymous connection, or the count could not be
    /// reached (the connection is admitted: a broker outage must not lock every
    /// user out; it is logged).
    NotCounted,
}

/// Asks the per-user count for a place for one more connection of `user`.
pub(super) async fn take_place(users: Option<&Arc<dyn UserCounter>>, user: &str) -> Place {
    let Some(users) = users.filter(|_| !user.is_empty()) else {
        return Place::NotCounted;
    };
    match users.acquire(Arc::from(user)).await {
        Ok(true) => Place::Taken,
        Ok(false) => Place::Full,
        Err(e) => {
            warn!(error = %e, "the per-user connection count is unreachable; connection admitted uncounted");
            Place::NotCounted
        }
    }
}

/// A refused request: its error code and a reason safe to tell the client.
type Denied = (ErrorCode, &'static str);

impl ShardEnv {
    /// Counts a subscribe against the connection's per-second budget.
    pub(super) fn subscribe_allowed_now(&self, conn: &mut Connection) -> bool {
        let limit = self.config.subscribe_rate;
        if limit == 0 {
            return true;
        }
        let now = self.now();
        let (start, count) = &mut conn.auth_mut().window;
        if now.saturating_sub(*start) >= 10 {
            *start = now;
            *count = 0;
        }
        if u32::from(*count) >= limit {
            return false;
        }
        *count = count.saturating_add(1);
        true
    }

    /// Whether this connection may subscribe to `channel`: by the channel rules, or
    /// by a subscription token. `Ok(Some(exp))` when a token granted it.
    pub(super) fn permit_subscribe(
        &self,
        auth: Option<&ConnectionAuth>,
        channel: &str,
        token: Option<&str>,
    ) -> Result<Option<u64>, Denied> {
        let who = auth.map_or(&ANONYMOUS, |a| &a.identity);
        let grant = match token {
            None => None,
            Some(token) => match self.auth.subscription(token, &who.user, channel) {
                Ok(grant) => Some(grant.expires_at),
                Err(SubscriptionRefusal::Token(AuthError::Expired)) => {
                    return Err((ErrorCode::Unauthorized, "subscription token expired"))
                }
                Err(SubscriptionRefusal::Token(AuthError::Invalid(why))) => return Err((ErrorCode::Unauthorized, why)),
                Err(SubscriptionRefusal::Token(_)) => {
                    return Err((ErrorCode::Unauthorized, "subscription token refused"))
                }
                Err(SubscriptionRefusal::Denied(why)) => return Err((ErrorCode::PermissionDenied, why)),
            },
        };
        self.auth
            .rules()
            .may_subscribe(who, channel, grant.is_some())
            .map_err(|Refusal(why)| (ErrorCode::PermissionDenied, why))?;
        Ok(grant)
    }

    /// Closes a connection for an authentication failure, counted by reason.
    fn close_unauthorized(&self, conn: &mut Connection, error: &AuthError) {
        self.metrics.auth_refusals.with_label_values(&[error.label()]).inc();
        self.metrics.client_errors.with_label_values(&["unauthorized"]).inc();
        let (code, why) = match error {
            AuthError::Expired => (close::TOKEN_EXPIRED, Disconnect::TokenExpired),
            _ => (close::UNAUTHORIZED, Disconnect::Unauthorized),
        };
        conn.close(code, &error.to_string(), why, self.close_deadline());
    }
}

impl Shard<'_> {
    /// `connect`: the client's first frame, carrying its token; answered by the
    /// `welcome`, or a close (4003, or 4002 for a merely expired token).
    pub(super) fn connect(&mut self, key: usize, id: Option<u64>, token: &str, first: bool) {
        let env = self.env;
        let Some(conn) = self.st.conns.get_mut(key) else {
            return;
        };
        if !first || conn.auth.as_ref().is_some_and(|a| a.by_header) {
            return self.reply_error(
                key,
                id,
                ErrorCode::BadRequest,
                "connect must be the first frame, once, on a connection without an Authorization header",
            );
        }
        let identity = match env.auth.connect(token) {
            Ok(identity) => identity,
            Err(e) => return env.close_unauthorized(conn, &e),
        };
        if env.users.is_none() || identity.is_anonymous() {
            return self.finish_connect(key, id, identity, Place::NotCounted);
        }
        // The place is taken through the broker (Redis, for a cluster-wide count):
        // the welcome follows in a task of its own once it answers.
        let conn_id = conn.id;
        let users = env.users.clone();
        env.spawner.spawn(move |core| async move {
            let place = take_place(users.as_ref(), &identity.user).await;
            core.with(|shard| {
                if shard.st.conns.get(key).map(|c| c.id) == Some(conn_id) {
                    shard.finish_connect(key, id, identity, place);
                } else if let (Place::Taken, Some(users)) = (place, &users) {
                    users.release(Arc::from(identity.user.as_str()));
                }
            });
        });
    }

    /// Ends a `connect` whose per-user place is known: the welcome, or close 4005.
    fn finish_connect(&mut self, key: usize, id: Option<u64>, identity: Identity, place: Place) {
        let env = self.env;
        let Some(conn) = self.st.conns.get_mut(key) else {
            return;
        };
        if place == Place::Full {
            env.metrics
                .auth_refusals
                .with_label_values(&["too_many_connections"])
                .inc();
            let deadline = env.close_deadline();
            conn.close(
                close::TOO_MANY_CONNECTIONS,
                USER_LIMIT_REACHED,
                Disconnect::UserLimit,
                deadline,
            );
            return;
        }
        let (user, expires_at) = (identity.user.clone(), identity.expires_at);
        conn.auth = Some(Box::new(ConnectionAuth {
            identity,
            by_header: false,
            sub_tokens: Vec::new(),
            counted: place == Place::Taken,
            window: (env.now(), 0),
        }));
        conn.flags.set(ConnectionFlags::GREETED, true);
        let user = (!user.is_empty()).then_some(user);
        if let Some(welcome) = env.welcome(conn.encoding, id, user, expires_at) {
            self.reply(key, welcome);
        }
    }

    /// `refresh`: a new token for the same user; subscriptions it no longer grants end.
    pub(super) fn refresh(&mut self, key: usize, id: Option<u64>, token: &str) {
        let env = self.env;
        let ShardState { conns, table, .. } = &mut *self.st;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        let Some(current) = conn.auth.as_ref().filter(|a| !a.identity.is_anonymous()) else {
            return self.refuse(
                key,
                id,
                ErrorCode::Unauthorized,
                "an anonymous connection has no token to refresh",
            );
        };
        let fresh: Identity = match env.auth.connect(token) {
            // An expired refresh is a refused refresh: the client must not retry it.
            Ok(fresh) if fresh.user == current.identity.user => fresh,
            Ok(_) => return env.close_unauthorized(conn, &AuthError::Invalid("refresh token for another user")),
            Err(AuthError::Expired) => {
                return env.close_unauthorized(conn, &AuthError::Invalid("refresh token already expired"))
            }
            Err(e) => return env.close_unauthorized(conn, &e),
        };
        let expires_at = fresh.expires_at;
        let mut revoked = Vec::new();
        if let Some(auth) = &mut conn.auth {
            auth.identity = fresh;
            for &sub in &conn.subs {
                let by_token = auth.sub_tokens.iter().any(|(s, _)| *s == sub);
                let Some(channel) = table.channel_of(sub) else {
                    continue;
                };
                if !by_token && env.auth.rules().may_subscribe(&auth.identity, channel, false).is_err() {
                    revoked.push(sub);
                }
            }
        }
        for sub in revoked {
            self.end_subscription(
                key,
                sub,
                UnsubscribeCode::PermissionDenied,
                "the refreshed token no longer grants this channel",
            );
        }
        self.reply_frame(
            key,
            &ServerFrame::Ack {
                id,
                expires_at,
                duplicate: None,
                epoch: None,
                offset: None,
                recovered: None,
            },
        );
    }

    /// `sub_refresh`: a new subscription token for a channel held by one.
    pub(super) fn sub_refresh(&mut self, key: usize, id: Option<u64>, channel: &str, token: &str) {
        let env = self.env;
        let ShardState { conns, table, .. } = &mut *self.st;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        let Some(sub) = conn
            .subs
            .iter()
            .copied()
            .find(|&s| table.channel_of(s) == Some(channel))
        else {
            return self.reply_error(key, id, ErrorCode::NotSubscribed, "not subscribed to this channel");
        };
        let user = conn.auth.as_ref().map_or("", |a| a.identity.user.as_str());
        let expires_at = match env.auth.subscription(token, user, channel) {
            Ok(grant) => grant.expires_at,
            Err(SubscriptionRefusal::Denied(why)) => return self.refuse(key, id, ErrorCode::PermissionDenied, why),
            Err(SubscriptionRefusal::Token(AuthError::Invalid(why))) => {
                return self.refuse(key, id, ErrorCode::Unauthorized, why)
            }
            Err(SubscriptionRefusal::Token(_)) => {
                return self.refuse(key, id, ErrorCode::Unauthorized, "subscription token refused")
            }
        };
        let auth = conn.auth_mut();
        auth.sub_tokens.retain(|(s, _)| *s != sub);
        auth.sub_tokens.push((sub, expires_at));
        self.reply_frame(
            key,
            &ServerFrame::Ack {
                id,
                expires_at: Some(expires_at),
                duplicate: None,
                epoch: None,
                offset: None,
                recovered: None,
            },
        );
    }

    /// Ends one subscription from the gateway's side and tells the client.
    fn end_subscription(
        &mut self,
        key: usize,
        sub: super::channel_table::SubscriptionKey,
        code: UnsubscribeCode,
        message: &str,
    ) {
        if !self.st.conns.contains(key) {
            return;
        }
        let Some(channel) = self.st.table.channel_of(sub).map(str::to_owned) else {
            return;
        };
        self.drop_subscription(key, sub);
        let frame = ServerFrame::Unsubscribed {
            channel,
            code,
            message: message.to_owned(),
        };
        self.reply_frame(key, &frame);
    }

    /// Applies an operator's command; returns how many connections it touched.
    pub(super) fn apply_control(&mut self, command: &UserCommand) -> usize {
        let env = self.env;
        let user = match command {
            UserCommand::Disconnect { user } | UserCommand::Unsubscribe { user, .. } => user.as_str(),
        };
        // An anonymous connection is nobody's: an empty user id matches none.
        if user.is_empty() {
            return 0;
        }
        let owned_by = |conn: &Connection| {
            conn.phase == Phase::Open && conn.auth.as_ref().is_some_and(|a| a.identity.user == user)
        };
        match command {
            UserCommand::Disconnect { .. } => {
                let deadline = env.close_deadline();
                let mut closed = 0;
                for (_, conn) in self.st.conns.iter_mut().filter(|(_, c)| owned_by(c)) {
                    conn.close(
                        close::DISCONNECTED,
                        "disconnected by an operator",
                        Disconnect::Operator,
                        deadline,
                    );
                    closed += 1;
                }
                closed
            }
            UserCommand::Unsubscribe { channel, .. } => {
                let ShardState { conns, table, .. } = &*self.st;
                let ended: Vec<_> = conns
                    .iter()
                    .filter(|(_, c)| owned_by(c))
                    .filter_map(|(key, c)| {
                        let sub = c
                            .subs
                            .iter()
                            .copied()
                            .find(|&s| table.channel_of(s) == Some(channel.as_str()))?;
                        Some((key, sub))
                    })
                    .collect();
                for &(key, sub) in &ended {
                    self.end_subscription(
                        key,
                        sub,
                        UnsubscribeCode::PermissionDenied,
                        "unsubscribed by an operator",
                    );
                }
                ended.len()
            }
        }
    }

    /// From the sweep: closes connections whose token expired (4002) or that sent no
    /// required `connect` within the handshake timeout (4003), and ends
    /// subscriptions whose subscription token expired.
    pub(super) fn expire_identities(&mut self) {
        let env = self.env;
        if !env.auth.has_keys() && env.auth.allows_anonymous() {
            return;
        }
        let now = env.now();
        let unix = unix_now();
        let leeway = env.auth.verifier().map_or(0, |v| v.leeway());
        let connect_within = (env.config.handshake_timeout.as_millis() / 100) as u32;
        let mut ended = Vec::new();
        for (key, conn) in self.st.conns.iter_mut() {
            if conn.phase != Phase::Open {
                continue;
            }
            if !conn.flags.greeted() {
                let opened = conn.auth.as_ref().map_or(0, |a| a.window.0);
                if now.saturating_sub(opened) >= connect_within {
                    env.close_unauthorized(conn, &AuthError::Missing);
                }
                continue;
            }
            let Some(auth) = &conn.auth else {
                continue;
            };
            if auth.identity.expires_at.is_some_and(|exp| exp + leeway < unix) {
                env.close_unauthorized(conn, &AuthError::Expired);
                continue;
            }
            ended.extend(
                auth.sub_tokens
                    .iter()
                    .filter(|(_, exp)| exp + leeway < unix)
                    .map(|(sub, _)| (key, *sub)),
            );
        }
        for (key, sub) in ended {
            self.end_subscription(key, sub, UnsubscribeCode::TokenExpired, "subscription token expired");
        }
    }
}
