//! Connection tokens for the auth_connect scenario: the key material each gateway
//! configuration verifies with (an HMAC secret, or an RSA key pair made by the
//! `openssl` CLI), and a file of pre-minted tokens, one line per client with its own
//! `sub`, that the load-generator workers read so minting stays out of every
//! measured window.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::error::{BenchError, IoContext};

/// How a gateway configuration authenticates its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScheme {
    /// No token configured: anonymous clients, no `connect` frame.
    None,
    /// `--token-hmac-secret`: HS256 tokens.
    Hs256,
    /// `--token-public-key`: RS256 tokens, 2048-bit key.
    Rs256,
}

impl TokenScheme {
    /// Lower-case name, used as the record's phase.
    pub fn name(self) -> &'static str {
        match self {
            TokenScheme::None => "none",
            TokenScheme::Hs256 => "hs256",
            TokenScheme::Rs256 => "rs256",
        }
    }
}

/// The claims of a bench client's connection token.
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
}

/// Keys for the HS256 and RS256 configurations, in a directory of their own that
/// is removed on drop.
pub struct AuthKeys {
    dir: PathBuf,
    hmac_secret: String,
    rsa_private_pem: Vec<u8>,
    rsa_public_pem: PathBuf,
}

impl AuthKeys {
    /// Makes a fresh HMAC secret and an RSA-2048 key pair (`openssl genpkey`) under
    /// `/tmp`.
    pub fn generate() -> Result<AuthKeys, BenchError> {
        let dir = std::env::temp_dir().join(format!("shardcast-bench-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).context(|| format!("create {}", dir.display()))?;
        let private = dir.join("rsa-private.pem");
        let public = dir.join("rsa-public.pem");
        // Built first so that its drop removes the directory if a step below fails.
        let mut keys = AuthKeys {
            hmac_secret: format!("bench-secret-{:x}", random_u64()),
            rsa_private_pem: Vec::new(),
            rsa_public_pem: public.clone(),
            dir,
        };
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ],
            &private,
        )?;
        let private_arg = private.to_string_lossy().into_owned();
        openssl(&["pkey", "-pubout", "-in", &private_arg, "-out"], &public)?;
        keys.rsa_private_pem = std::fs::read(&private).context(|| format!("read {}", private.display()))?;
        Ok(keys)
    }

    /// The gateway arguments that make it require `scheme`'s tokens.
    pub fn gateway_args(&self, scheme: TokenScheme) -> Vec<String> {
        match scheme {
            TokenScheme::None => Vec::new(),
            TokenScheme::Hs256 => vec!["--token-hmac-secret".into(), self.hmac_secret.clone()],
            TokenScheme::Rs256 => vec![
                "--token-public-key".into(),
                self.rsa_public_pem.to_string_lossy().into_owned(),
            ],
        }
    }

    /// Writes `count` tokens of `scheme`, line `g` for client `g` (`sub`
    /// `bench-user-<g>`, valid for an hour), to a file in the keys' directory;
    /// `None` for the anonymous scheme.
    pub fn mint_file(&self, scheme: TokenScheme, count: usize) -> Result<Option<PathBuf>, BenchError> {
        let (algorithm, key) = match scheme {
            TokenScheme::None => return Ok(None),
            TokenScheme::Hs256 => (Algorithm::HS256, EncodingKey::from_secret(self.hmac_secret.as_bytes())),
            TokenScheme::Rs256 => (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&self.rsa_private_pem)
                    .map_err(|e| BenchError::Options(format!("the generated RSA key does not load: {e}")))?,
            ),
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let header = Header::new(algorithm);
        let path = self.dir.join(format!("tokens-{}.txt", scheme.name()));
        let file = std::fs::File::create(&path).context(|| format!("create {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for g in 0..count {
            let sub = format!("bench-user-{g}");
            let claims = Claims {
                sub: &sub,
                exp: now + 3600,
                iat: now,
            };
            let token = jsonwebtoken::encode(&header, &claims, &key)
                .map_err(|e| BenchError::Options(format!("cannot mint a {} token: {e}", scheme.name())))?;
            writeln!(out, "{token}").context(|| format!("write {}", path.display()))?;
        }
        out.flush().context(|| format!("write {}", path.display()))?;
        Ok(Some(path))
    }
}

impl Drop for AuthKeys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads lines `first..first + count` of a token file (one per client).
pub fn read_tokens(path: &Path, first: usize, count: usize) -> Result<Vec<String>, BenchError> {
    let text = std::fs::read_to_string(path).context(|| format!("read {}", path.display()))?;
    let tokens: Vec<String> = text.lines().skip(first).take(count).map(str::to_owned).collect();
    if tokens.len() < count {
        return Err(BenchError::Options(format!(
            "{} holds {} tokens from line {first}, {count} needed",
            path.display(),
            tokens.len()
        )));
    }
    Ok(tokens)
}

/// Runs `openssl <args> <out>`, failing with its stderr.
fn openssl(args: &[&str], out: &Path) -> Result<(), BenchError> {
    let output = Command::new("openssl")
        .args(args)
        .arg(out)
        .output()
        .map_err(|e| BenchError::Launch {
            what: "openssl".into(),
            message: format!("{e} (the auth scenario makes its RSA key with the openssl CLI)"),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BenchError::Launch {
            what: format!("openssl {}", args.first().copied().unwrap_or_default()),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// A secret that differs between runs (no cryptographic need: the gateway is ours).
fn random_u64() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}
