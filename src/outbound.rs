//! Requests the gateway makes to URLs of its configuration (a token key set, an
//! app's webhook): the URL checked once at start, one HTTP/1.1 request per
//! connection (hyper's client), through TLS for https (rustls on the ring provider,
//! Mozilla's roots built in, plus an optional private CA). A leaf that the other
//! leaves may use: it knows nothing of the gateway.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::header::{HOST, USER_AGENT};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Why a request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The server could not be reached (or TLS failed).
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("request: {0}")]
    Request(String),
}

/// An http:// or https:// URL, checked.
#[derive(Debug, Clone)]
pub struct OutboundUrl {
    uri: Uri,
    /// The host, without IPv6 brackets.
    pub host: String,
    /// The port (the scheme's default if the URL has none).
    pub port: u16,
    /// Whether the scheme is https.
    pub tls: bool,
}

impl OutboundUrl {
    /// Checks a URL; the error says why it is refused.
    pub fn parse(url: &str) -> Result<OutboundUrl, String> {
        let uri: Uri = url.parse().map_err(|_| "not a URL".to_owned())?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the URL must start with https:// or http://".into()),
        };
        let authority = uri.authority().ok_or_else(|| "the URL has no host".to_owned())?;
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        Ok(OutboundUrl {
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            uri,
            tls,
        })
    }

    /// The path and query to request.
    pub fn path_and_query(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    /// The URL without its query, which may carry a secret: for logs.
    pub fn display(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}{}", self.host, self.port, self.uri.path())
    }

    /// A request to this URL with its `Host` and `User-Agent` set.
    pub fn request(&self, method: hyper::Method) -> hyper::http::request::Builder {
        let authority = self.uri.authority().map_or(self.host.as_str(), |a| a.as_str());
        Request::builder()
            .method(method)
            .uri(self.path_and_query())
            .header(HOST, authority)
            .header(USER_AGENT, concat!("shardcast/", env!("CARGO_PKG_VERSION")))
    }
}

/// The TLS client: Mozilla's public roots, plus the certificates of `ca` (a PEM
/// file), if given. The error says what is wrong with the file.
pub fn tls_connector(ca: Option<&Path>) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let bad = |why: String| format!("{}: {why}", path.display());
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
        let mut added = 0;
        for cert in certs {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("no certificate in the file".into()));
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// An answer, with the connection that carries its body: dropping it closes the
/// connection.
pub struct Answer {
    /// The response; its body is read from the connection.
    pub response: Response<Incoming>,
    _connection: Connection,
}

/// The task driving a connection, stopped when dropped.
struct Connection(JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Answer {
    /// The body, at most `limit` bytes.
    pub async fn body(self, limit: usize) -> Result<Bytes, String> {
        http_body_util::Limited::new(self.response.into_body(), limit)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| e.to_string())
    }
}

/// Sends one request to `url` on a new connection (through `tls` for https).
pub async fn send<B>(
    url: &OutboundUrl,
    tls: Option<&TlsConnector>,
    request: Request<B>,
) -> Result<Answer, OutboundError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(OutboundError::Connect)?;
    match (url.tls, tls) {
        (true, Some(connector)) => {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|e| OutboundError::Connect(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
            let stream = connector.connect(name, stream).await.map_err(OutboundError::Connect)?;
            exchange(stream, request).await
        }
        (true, None) => Err(OutboundError::Request("an https:// URL needs a TLS client".into())),
        (false, _) => exchange(stream, request).await,
    }
}

async fn exchange<S, B>(stream: S, request: Request<B>) -> Result<Answer, OutboundError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection future drives the socket until the answer is dropped.
    let connection = Connection(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender.send_request(request).await?;
    Ok(Answer {
        response,
        _connection: connection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let url = OutboundUrl::parse("http://keys.test:8080/.well-known/jwks.json?t=secret").expect("http");
        assert_eq!((url.host.as_str(), url.port, url.tls), ("keys.test", 8080, false));
        assert_eq!(url.display(), "http://keys.test:8080/.well-known/jwks.json");
        assert_eq!(url.path_and_query(), "/.well-known/jwks.json?t=secret");
        assert_eq!(OutboundUrl::parse("http://[::1]/k").expect("v6").host, "::1");
        let secure = OutboundUrl::parse("https://keys.test/jwks.json").expect("https");
        assert_eq!((secure.port, secure.tls), (443, true));
        for bad in [
            "ftp://keys.test/x",
            "keys.test/x",
            "https://user:pw@keys.test/x",
            "not a url",
        ] {
            assert!(OutboundUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
