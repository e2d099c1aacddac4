//! The harness's one error type. Every failure names the step that broke (spawning a
//! process, a handshake, the HTTP API, a worker) so a red benchmark run says where.

use std::io;

/// Everything that can stop a benchmark step.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A system call failed; `context` says what the harness was doing.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The server answered the WebSocket upgrade with something other than 101.
    #[error("WebSocket upgrade refused with HTTP {0}")]
    HandshakeRefused(u16),
    /// The peer sent bytes that break the WebSocket or shardcast protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The server closed the WebSocket (close code, when it sent one).
    #[error("connection closed by the server (code {0:?})")]
    Closed(Option<u16>),
    /// A step did not finish within its bound.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The HTTP API answered with an error status.
    #[error("HTTP API answered {status}: {body}")]
    Api {
        /// HTTP status code.
        status: u16,
        /// Response body (truncated).
        body: String,
    },
    /// A server under test could not be started.
    #[error("cannot start {what}: {message}")]
    Launch {
        /// Which server.
        what: String,
        /// Why (including its last log lines when there are any).
        message: String,
    },
    /// A load-generator worker process failed or sent something unreadable.
    #[error("load-generator worker {index}: {message}")]
    Worker {
        /// Worker index.
        index: usize,
        /// What went wrong.
        message: String,
    },
    /// JSON that could not be read or written.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Options that do not make sense together.
    #[error("invalid options: {0}")]
    Options(String),
}

/// Attaches "what was I doing" to an `io::Result`.
pub trait IoContext<T> {
    /// Wraps the error with a description of the step.
    fn context(self, what: impl FnOnce() -> String) -> Result<T, BenchError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, BenchError> {
        self.map_err(|source| BenchError::Io {
            context: what(),
            source,
        })
    }
}
