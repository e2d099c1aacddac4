//! The tokens the driver authenticates with (PROTOCOL.md sections 11.1 and 18):
//! [`Tokens`] gets the connection's token before every connect, calls the token
//! providers beside the driver, plans and sends the `refresh` of the connection's
//! token and the `sub_refresh` of the channels' subscription tokens, applies their
//! replies, and says which authentication close codes (4002-4005) end the client.

use std::sync::Arc;

use shardcast_proto::{close, ClientFrame, ErrorCode};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use super::channels::ChannelTable;
use super::command::Config;
use super::connection::Connection;
use super::requests::{Pending, Reply, RequestIds};
use crate::error::{BoxError, Error, Result};
use crate::event::{ClientEvent, Observers};
use crate::token::{TokenFuture, TokenLifetime};
use crate::transport::{AttemptFailure, Welcome};

/// The token a connection was opened with, and when it arrived.
pub(crate) struct HeldToken {
    pub token: String,
    pub received_at: Instant,
}

/// A token provider's answer, for the connection numbered `serial`.
pub(crate) struct Fetched {
    serial: u64,
    purpose: FetchPurpose,
    received_at: Instant,
    result: Result<Option<String>, BoxError>,
}

/// What a token was fetched for.
enum FetchPurpose {
    /// A `refresh` of the connection's token.
    Refresh,
    /// Subscribe request `id` for `channel`, which waits for it.
    Subscribe { channel: String, id: u64 },
    /// A `sub_refresh` of the channel's subscription token.
    SubRefresh { channel: String },
}

/// The token to connect with: a provider is called before every connect, so that
/// an expired token (close 4002) is replaced; a fixed token is all there is otherwise.
pub(crate) async fn connect_token(config: &Config) -> Result<Option<HeldToken>, AttemptFailure> {
    let token = match &config.token_provider {
        Some(provider) => match provider().await {
            Ok(token) => token,
            Err(e) => return Err(AttemptFailure::abnormal(format!("token provider failed: {e}"))),
        },
        None => config.token.clone(),
    };
    Ok(token.filter(|t| !t.is_empty()).map(|token| HeldToken {
        token,
        received_at: Instant::now(),
    }))
}

/// The driver's token providers and the answers they give in the background.
pub(crate) struct Tokens {
    config: Arc<Config>,
    /// Numbers the connections, so that a token fetched for an earlier one is dropped.
    serial: u64,
    /// Tokens fetched in the background (provider calls run beside the driver, so
    /// that a slow backend does not stall the connection).
    fetched: mpsc::UnboundedReceiver<Fetched>,
    fetches: mpsc::UnboundedSender<Fetched>,
}

impl Tokens {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        let (fetches, fetched) = mpsc::unbounded_channel();
        Tokens {
            config,
            serial: 0,
            fetched,
            fetches,
        }
    }

    /// The error that stops the client after an authentication close code, if this is
    /// one (section 11.1): 4003 and 4004 never reconnect; 4002 (token expired)
    /// reconnects with a new token from the provider, so only without one is it final.
    /// 4005 (too many connections) reconnects with backoff, as the policy says.
    pub(crate) fn authentication_failure(&self, code: u16, reason: &str) -> Option<Error> {
        let renewable = self.config.token_provider.is_some();
        match code {
            close::UNAUTHORIZED | close::DISCONNECTED => {}
            close::TOKEN_EXPIRED if !renewable => {}
            _ => return None,
        }
        Some(Error::Unauthorized {
            code,
            reason: reason.to_owned(),
        })
    }

    /// A new connection, opened with `token`, got `welcome`: tokens fetched for
    /// earlier connections are dropped from now on, and the refresh of this one's
    /// token is planned.
    pub(crate) fn connected(&mut self, connection: &mut Connection, token: Option<HeldToken>, welcome: &Welcome) {
        self.serial = self.serial.wrapping_add(1);
        // The welcome says when the token expires; the token's own `exp` where it does not.
        let lifetime = token.and_then(|t| TokenLifetime::of(&t.token, welcome.expires_at, t.received_at));
        self.schedule_refresh(connection, lifetime);
    }

    /// The next token a provider answered with.
    pub(crate) async fn next_fetched(&mut self) -> Option<Fetched> {
        self.fetched.recv().await
    }

    /// Fetches `channel`'s subscription token for subscribe request `id`; false if
    /// there is no provider for them, and the channel is subscribed without one.
    pub(crate) fn fetch_subscription_token(&self, channel: &str, id: u64) -> bool {
        let Some(provider) = &self.config.subscription_token else {
            return false;
        };
        let purpose = FetchPurpose::Subscribe {
            channel: channel.to_owned(),
            id,
        };
        self.fetch(purpose, provider(channel.to_owned()));
        true
    }

    /// Starts the refresh of the connection's token if it is due at `now`.
    pub(crate) fn refresh_if_due(&self, connection: &mut Connection, now: Instant) {
        if connection.token_refresh_at.is_some_and(|at| at <= now) {
            connection.token_refresh_at = None;
            if let Some(provider) = &self.config.token_provider {
                self.fetch(FetchPurpose::Refresh, provider());
            }
        }
    }

    /// Starts the refresh of the subscription tokens of `channels`, which are due.
    pub(crate) fn refresh_subscription_tokens(&self, channels: Vec<String>) {
        let Some(provider) = &self.config.subscription_token else {
            return;
        };
        for channel in channels {
            let token = provider(channel.clone());
            self.fetch(FetchPurpose::SubRefresh { channel }, token);
        }
    }

    /// Plans the refresh of the connection's token with this lifetime (none if it
    /// does not expire, or if there is no provider to get a new one from).
    fn schedule_refresh(&self, connection: &mut Connection, lifetime: Option<TokenLifetime>) {
        connection.token_lifetime = lifetime;
        connection.token_refresh_at = lifetime
            .filter(|_| self.config.token_provider.is_some())
            .map(|lifetime| lifetime.refresh_at(Instant::now(), fastrand::f64()));
    }

    /// A connection token refresh failed: reported, and tried again (sooner, since
    /// less of the lifetime is left) while the token lasts; past its expiry the
    /// gateway's close 4002 follows, and the client reconnects with a new token.
    fn refresh_failed(&self, connection: &mut Connection, reason: String, observers: &Observers) {
        warn!(reason, "token refresh failed");
        observers.emit(ClientEvent::TokenRefreshFailed { channel: None, reason });
        let lifetime = connection
            .token_lifetime
            .filter(|l| !l.remaining(Instant::now()).is_zero());
        self.schedule_refresh(connection, lifetime);
    }

    /// Calls a token provider beside the driver, bounded by the request timeout (a
    /// provider that never answers would hold a subscribe forever); the answer
    /// arrives as a [`Fetched`].
    fn fetch(&self, purpose: FetchPurpose, token: TokenFuture) {
        let (serial, fetches, limit) = (self.serial, self.fetches.clone(), self.config.request_timeout);
        tokio::spawn(async move {
            let result = match tokio::time::timeout(limit, token).await {
                Ok(result) => result,
                Err(_) => Err(format!("no token within {limit:?}").into()),
            };
            let _ = fetches.send(Fetched {
                serial,
                purpose,
                received_at: Instant::now(),
                result,
            });
        });
    }

    /// A token provider answered: sends the request the token was fetched for.
    pub(crate) async fn on_fetched(
        &self,
        connection: &mut Connection,
        fetched: Fetched,
        request_ids: &mut RequestIds,
        channels: &mut ChannelTable,
        observers: &Observers,
    ) {
        if fetched.serial != self.serial {
            // Fetched for a connection that is gone; the new one fetches its own.
            return;
        }
        let Fetched {
            purpose,
            received_at,
            result,
            ..
        } = fetched;
        match purpose {
            FetchPurpose::Refresh => match result {
                Ok(Some(token)) if !token.is_empty() => {
                    let id = request_ids.take();
                    let frame = ClientFrame::Refresh {
                        id: Some(id),
                        token: token.clone(),
                    };
                    connection
                        .request(id, frame, Pending::Refresh { token, received_at })
                        .await;
                }
                Ok(_) => self.refresh_failed(connection, "the token provider returned no token".to_owned(), observers),
                Err(e) => self.refresh_failed(connection, format!("token provider failed: {e}"), observers),
            },
            FetchPurpose::Subscribe { channel, id } => {
                let Some(generation) = channels.awaiting_token(&channel, id) else {
                    return;
                };
                match result {
                    Ok(token) => {
                        let token = token.filter(|t| !t.is_empty()).map(|t| (t, received_at));
                        let request = channels.subscribe_request(channel, generation, token);
                        connection.subscribe(id, request).await;
                    }
                    Err(e) => channels.token_failed(&channel, id, Error::TokenProvider(Arc::from(e))),
                }
            }
            FetchPurpose::SubRefresh { channel } => match result {
                Ok(Some(token)) if !token.is_empty() => {
                    let id = request_ids.take();
                    let frame = ClientFrame::SubRefresh {
                        id: Some(id),
                        channel: channel.clone(),
                        token: token.clone(),
                    };
                    let pending = Pending::SubRefresh {
                        channel,
                        token,
                        received_at,
                    };
                    connection.request(id, frame, pending).await;
                }
                other => {
                    let reason = match other {
                        Err(e) => format!("subscription token provider failed: {e}"),
                        Ok(_) => "the subscription token provider returned no token".to_owned(),
                    };
                    let at = channels.token_refreshed(&channel, Err(reason), observers);
                    connection.wake_for_channel(at);
                }
            },
        }
    }

    /// The gateway's reply to the `refresh` of the connection's token, received at
    /// `received_at`: `Ok` with the ack's `expires_at`, or the error frame's code and message.
    pub(crate) fn refresh_answered(
        &self,
        connection: &mut Connection,
        token: String,
        received_at: Instant,
        result: Result<Reply, (ErrorCode, String)>,
        observers: &Observers,
    ) {
        match result {
            Ok(reply) => {
                let expires_at = reply.expires_at();
                let lifetime = TokenLifetime::of(&token, expires_at, received_at);
                self.schedule_refresh(connection, lifetime);
                observers.emit(ClientEvent::TokenRefreshed {
                    channel: None,
                    expires_at,
                });
            }
            // A refused token closes the connection with 4003 next; anything else is retried.
            Err((code, message)) => self.refresh_failed(connection, format!("{}: {message}", code.as_str()), observers),
        }
    }
}

/// The gateway's reply to the `sub_refresh` of `channel`'s subscription token
/// (`token`, received at `received_at`).
pub(crate) fn sub_refresh_answered(
    connection: &mut Connection,
    channels: &mut ChannelTable,
    channel: String,
    token: String,
    received_at: Instant,
    result: Result<Reply, (ErrorCode, String)>,
    observers: &Observers,
) {
    let outcome = result
        .map(|reply| (token, received_at, reply.expires_at()))
        .map_err(|(code, message)| format!("{}: {message}", code.as_str()));
    let at = channels.token_refreshed(&channel, outcome, observers);
    connection.wake_for_channel(at);
}
