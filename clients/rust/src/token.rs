//! [`TokenProvider`]: the hook that supplies a token before every connect attempt.

use std::future::Future;
use std::sync::Arc;

use crate::error::BoxError;

/// Supplies the token for the next connect attempt, or `None` to connect without one.
///
/// Called before every connect, so it can refresh short-lived credentials. The
/// token travels as a query parameter (`?token=`, see
/// [`ClientBuilder::token_param`](crate::ClientBuilder::token_param)).
/// The gateway does not check tokens yet; the hook exists so that authentication
/// can be turned on later without changing application code.
pub type TokenProvider =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<Option<String>, BoxError>> + Send>> + Send + Sync>;
