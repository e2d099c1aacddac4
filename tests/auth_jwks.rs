//! Token keys from a JWKS URL against the real binary (PROTOCOL.md section 18.2):
//! RSA keys generated in the test, their JWKs written by PyJWT, served by a small
//! HTTP server here whose answer the test changes; tokens minted by PyJWT with a
//! `kid`. A key published later is picked up through the unknown-`kid` refetch,
//! open connections outlive their key's removal, a never-published `kid` is
//! refused with 4003, a key verifies only its own algorithm, and a failed fetch
//! keeps the last good set.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use shardcast_proto::{decode_server, ClientFrame, Encoding, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "a-test-secret-of-reasonable-length";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

const OK_FETCHES: &str = "shardcast_jwks_refreshes_total{result=\"ok\"}";
const FAILED_FETCHES: &str = "shardcast_jwks_refreshes_total{result=\"error\"}";

/// Key pairs made for this test, by name (the name is also the `kid`; a name
/// starting with `ec` is an EC P-256 key for ES256, any other an RSA key for
/// RS256): the private keys as PEM files, the public keys as JWKs.
struct SigningKeys {
    dir: PathBuf,
    jwks: Value,
}

impl SigningKeys {
    fn generate(names: &[&str]) -> SigningKeys {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let n = MADE.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("shardcast-jwks-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("key dir");
        let script = r#"
import sys, json
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa, ec
from jwt.algorithms import RSAAlgorithm, ECAlgorithm
d, out = sys.argv[1], {}
for name in sys.argv[2:]:
    if name.startswith("ec"):
        key, kind, alg = ec.generate_private_key(ec.SECP256R1()), ECAlgorithm, "ES256"
    else:
        key, kind, alg = rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm, "RS256"
    open(f"{d}/{name}.key", "wb").write(key.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    jwk = json.loads(kind.to_jwk(key.public_key()))
    jwk.update(kid=name, use="sig", alg=alg)
    out[name] = jwk
print(json.dumps(out))
"#;
        let mut args = vec![dir.to_str().expect("utf-8 path")];
        args.extend_from_slice(names);
        let jwks = serde_json::from_str(&python(script, &args)).expect("JWKs");
        SigningKeys { dir, jwks }
    }

    /// A JWKS document with the public keys of `names`.
    fn set(&self, names: &[&str]) -> String {
        json!({ "keys": names.iter().map(|n| self.jwks[n].clone()).collect::<Vec<_>>() }).to_string()
    }

    /// A token signed by key `name` with its algorithm, with `kid` `name`.
    fn mint(&self, name: &str, sub: &str) -> String {
        let alg = if name.starts_with("ec") { "ES256" } else { "RS256" };
        self.mint_as(alg, name, sub)
    }

    /// A token signed by key `name` with `alg` (PS256 with an RSA key, say).
    fn mint_as(&self, alg: &str, name: &str, sub: &str) -> String {
        let script = r#"
import sys, json, jwt
alg, key, kid, claims = sys.argv[1], open(sys.argv[2], "rb").read(), sys.argv[3], json.loads(sys.argv[4])
print(jwt.encode(claims, key, algorithm=alg, headers={"kid": kid}))
"#;
        let exp = now() + 300;
        let key = self.dir.join(format!("{name}.key"));
        let claims = json!({"sub": sub, "exp": exp}).to_string();
        python(script, &[alg, key.to_str().expect("utf-8 path"), name, &claims])
    }
}

impl Drop for SigningKeys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server-side connection, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// An HTTP server answering every GET with the current key set document (or with
/// the current status, when that is not 200).
struct KeyServer {
    url: String,
    body: Arc<Mutex<String>>,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyServer {
    async fn start(body: String, path: &str) -> KeyServer {
        KeyServer::start_with(body, path, None).await
    }

    /// The same over TLS, with this certificate chain and key (PEM).
    async fn start_with(body: String, path: &str, tls: Option<(&Path, &Path)>) -> KeyServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let acceptor = tls.map(|(chain, key)| {
            use tokio_rustls::rustls::pki_types::pem::PemObject;
            use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain)
                .expect("chain")
                .map(|c| c.expect("certificate"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).expect("key");
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("protocols")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("server config");
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}{path}", listener.local_addr().expect("addr"));
        let body = Arc::new(Mutex::new(body));
        let status = Arc::new(AtomicU16::new(200));
        let (serving, code) = (body.clone(), status.clone());
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (serving, code) = (serving.clone(), code.clone());
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut socket: Box<dyn Stream> = match acceptor {
                        None => Box::new(socket),
                        Some(acceptor) => match acceptor.accept(socket).await {
                            Ok(tls) => Box::new(tls),
                            Err(_) => return,
                        },
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let status = code.load(Ordering::SeqCst);
                    let body = if status == 200 {
                        serving.lock().expect("body").clone()
                    } else {
                        "unavailable".to_owned()
                    };
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        KeyServer {
            url,
            body,
            status,
            task,
        }
    }

    fn serve(&self, body: String) {
        *self.body.lock().expect("body") = body;
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a WebSocket and sends `connect` with `token`: the client after its
/// welcome, or the close code that refused it.
async fn connect_with(gw: &Gateway, token: &str) -> Result<Client, u16> {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.ws)))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    let mut client = Client {
        ws,
        encoding: Encoding::Json,
        shard: 0,
        node: String::new(),
    };
    client
        .send(&ClientFrame::Connect {
            id: Some(1),
            token: token.into(),
            name: None,
            version: None,
        })
        .await;
    loop {
        let msg = tokio::time::timeout(WAIT, client.ws.next())
            .await
            .expect("answer in time")
            .expect("stream open")
            .expect("frame");
        match msg {
            Message::Text(t) => match decode_server(Encoding::Json, t.as_bytes()).expect("server frame") {
                ServerFrame::Welcome { id: Some(1), .. } => return Ok(client),
                other => panic!("expected welcome or close, got {other:?}"),
            },
            Message::Close(Some(frame)) => return Err(u16::from(frame.code)),
            Message::Close(None) => return Err(1005),
            _ => continue,
        }
    }
}

/// Connects with a token whose key the gateway may not have fetched yet: the first
/// attempt's refusal (4003) asks for a refetch, so a later one is accepted.
async fn connect_after_refetch(gw: &Gateway, token: &str) -> Client {
    let start = Instant::now();
    loop {
        match connect_with(gw, token).await {
            Ok(client) => return client,
            Err(code) => assert_eq!(code, 4003, "an unknown kid is refused with 4003"),
        }
        assert!(start.elapsed() < WAIT, "the new key was never fetched");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Proves a connection is still open and serving.
async fn still_open(c: &mut Client, id: u64) {
    c.subscribe(id, &format!("news-{id}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_taken_by_kid_and_rotate() {
    let keys = SigningKeys::generate(&["a", "b", "c"]);
    let server = KeyServer::start(keys.set(&["a"]), "/.well-known/jwks.json").await;
    let gw = Gateway::start(&["--token-jwks-url", &server.url, "--token-algorithms", "RS256"]);
    assert_eq!(gw.metric(OK_FETCHES).await, 1.0, "fetched once at start");

    let mut alice = connect_with(&gw, &keys.mint("a", "alice"))
        .await
        .expect("key a accepted");

    // The issuer publishes key b: a token signed by it is accepted once the gateway
    // has refetched, which the first unknown-kid refusal asks for.
    server.serve(keys.set(&["a", "b"]));
    let mut bob = connect_after_refetch(&gw, &keys.mint("b", "bob")).await;
    still_open(&mut alice, 2).await;

    // Key a is retired. A kid the server never had is refused, and its refetch
    // brings the set without a; connections verified by a stay open, new a tokens
    // are refused.
    server.serve(keys.set(&["b"]));
    let fetched = gw.metric(OK_FETCHES).await;
    assert_eq!(connect_with(&gw, &keys.mint("c", "mallory")).await.err(), Some(4003));
    gw.wait_metric(OK_FETCHES, |n| n > fetched).await;
    assert_eq!(connect_with(&gw, &keys.mint("a", "alice")).await.err(), Some(4003));
    still_open(&mut alice, 3).await;
    still_open(&mut bob, 4).await;
    assert!(gw.metric("shardcast_auth_refusals_total{reason=\"invalid\"}").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_keeps_the_last_good_set_and_no_secret_is_logged() {
    let keys = SigningKeys::generate(&["a", "z"]);
    let server = KeyServer::start(keys.set(&["a"]), "/keys?access=s3cret-query").await;
    let gw = Gateway::start(&[
        "--token-jwks-url",
        &server.url,
        "--token-algorithms",
        "RS256",
        "--token-jwks-refresh",
        "1s",
    ]);
    server.status.store(503, Ordering::SeqCst);
    gw.wait_metric(FAILED_FETCHES, |n| n >= 1.0).await;
    let kept = connect_with(&gw, &keys.mint("a", "alice")).await.err();
    assert_eq!(
        kept,
        None,
        "the last good set is kept: {:?}",
        gw.logs.lock().expect("logs")
    );

    // A body that is no key set fails the same way.
    server.status.store(200, Ordering::SeqCst);
    server.serve("<html>not keys</html>".into());
    let failed = gw.metric(FAILED_FETCHES).await;
    gw.wait_metric(FAILED_FETCHES, |n| n > failed).await;
    assert!(connect_with(&gw, &keys.mint("a", "alice")).await.is_ok());
    assert_eq!(connect_with(&gw, &keys.mint("z", "zed")).await.err(), Some(4003));

    let logs = gw.logs.lock().expect("logs").join("\n");
    assert!(logs.contains("token key set fetch failed"), "failures are logged");
    assert!(!logs.contains("s3cret-query"), "the URL's query is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_verify_only_their_own_algorithms() {
    let keys = SigningKeys::generate(&["r", "ec1"]);
    let server = KeyServer::start(keys.set(&["r", "ec1"]), "/jwks").await;
    let gw = Gateway::start(&[
        "--token-jwks-url",
        &server.url,
        "--token-hmac-secret",
        SECRET,
        "--token-algorithms",
        "HS256,RS256,PS256,ES256",
    ]);
    // Algorithms of three families in one list: each token is checked against its own.
    let hs256 = python(
        "import sys, jwt; print(jwt.encode({'sub': 'hal', 'exp': int(sys.argv[2])}, sys.argv[1], algorithm='HS256'))",
        &[SECRET, &(now() + 300).to_string()],
    );
    assert!(connect_with(&gw, &hs256).await.is_ok(), "HS256 by the secret");
    assert!(
        connect_with(&gw, &keys.mint("ec1", "eve")).await.is_ok(),
        "ES256 by an EC key"
    );
    assert!(
        connect_with(&gw, &keys.mint("r", "rob")).await.is_ok(),
        "RS256 by an RSA key"
    );
    // The JWK says RS256: a PS256 token by the same key is refused, although PS256
    // is configured and the signature is good.
    assert_eq!(
        connect_with(&gw, &keys.mint_as("PS256", "r", "rob")).await.err(),
        Some(4003)
    );
    // A configured algorithm is still required: RS512 is not in the list.
    assert_eq!(
        connect_with(&gw, &keys.mint_as("RS512", "r", "rob")).await.err(),
        Some(4003)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_stops_the_start() {
    for url in ["ftp://keys.test/jwks.json", "keys.test/jwks.json"] {
        let out = Command::new(env!("CARGO_BIN_EXE_shardcast"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--token-jwks-url", url])
            .output()
            .expect("run shardcast");
        assert!(!out.status.success(), "{url}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--token-jwks-url"),
            "{url}"
        );
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM files in `dir`.
fn make_certificates(dir: &Path) {
    let script = r#"
import sys, datetime, ipaddress
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
d = sys.argv[1]
now = datetime.datetime.now(datetime.timezone.utc)
def name(cn): return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
ca_key = ec.generate_private_key(ec.SECP256R1())
ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
      .public_key(ca_key.public_key()).serial_number(1)
      .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
      .sign(ca_key, hashes.SHA256()))
key = ec.generate_private_key(ec.SECP256R1())
cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256()))
open(f"{d}/ca.pem", "wb").write(ca.public_bytes(serialization.Encoding.PEM))
open(f"{d}/server.pem", "wb").write(cert.public_bytes(serialization.Encoding.PEM))
open(f"{d}/server.key", "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
"#;
    python(script, &[dir.to_str().expect("utf-8 path")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_key_set_is_fetched_with_a_trusted_ca_only() {
    let keys = SigningKeys::generate(&["t"]);
    make_certificates(&keys.dir);
    let (chain, key) = (keys.dir.join("server.pem"), keys.dir.join("server.key"));
    let server = KeyServer::start_with(keys.set(&["t"]), "/jwks.json", Some((&chain, &key))).await;
    assert!(server.url.starts_with("https://127.0.0.1:"));
    let ca = keys.dir.join("ca.pem");
    let gw = Gateway::start(&[
        "--token-jwks-url",
        &server.url,
        "--token-jwks-ca",
        ca.to_str().expect("utf-8 path"),
    ]);
    assert!(
        connect_with(&gw, &keys.mint("t", "tls-user")).await.is_ok(),
        "https key set"
    );
    // Without the private CA the certificate is not trusted: no keys, no entry.
    let untrusting = Gateway::start(&["--token-jwks-url", &server.url]);
    assert_eq!(
        connect_with(&untrusting, &keys.mint("t", "tls-user")).await.err(),
        Some(4003)
    );
    assert!(
        untrusting
            .metric("shardcast_jwks_refreshes_total{result=\"error\"}")
            .await
            >= 1.0
    );
}
