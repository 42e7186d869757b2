//! Private keys for the client assertion: loading (PEM or JWK, refusing files others can read),
//! public JWKs for registration, RFC 7638 thumbprints, signing and verifying, key generation.
//!
//! ES384, RS384 and RS512 are signed and verified by `jsonwebtoken` (RustCrypto backend);
//! `jsonwebtoken` has no ES512, so ES512 uses the `p521` crate directly.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use p384::elliptic_curve::sec1::ToEncodedPoint;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{AuthError, SigningAlg};

/// Largest key file read (a JWKS with a few RSA keys is a few KiB).
const MAX_KEY_FILE: u64 = 1024 * 1024;
/// RSA modulus size of generated keys.
pub const RSA_BITS: usize = 3072;
/// Smallest RSA key accepted.
const RSA_MIN_BITS: usize = 2048;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s.trim().trim_end_matches('='))
        .map_err(|_| "a value is not valid base64url".to_string())
}

/// A public key of one of the supported kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum PublicKey {
    P384(p384::PublicKey),
    P521(p521::PublicKey),
    Rsa(RsaPublicKey),
}

impl PublicKey {
    /// Read a public JWK (`kty` EC with `crv` P-384 or P-521, or RSA). Private members are
    /// ignored.
    pub fn from_jwk(jwk: &Value) -> Result<PublicKey, String> {
        let field = |name: &str| {
            jwk.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("the JWK has no `{name}`"))
        };
        match field("kty")? {
            "EC" => {
                let x = unb64(field("x")?)?;
                let y = unb64(field("y")?)?;
                let mut sec1 = Vec::with_capacity(1 + x.len() + y.len());
                sec1.push(4u8);
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                match field("crv")? {
                    "P-384" => p384::PublicKey::from_sec1_bytes(&sec1)
                        .map(PublicKey::P384)
                        .map_err(|_| "the P-384 point is not valid".to_string()),
                    "P-521" => p521::PublicKey::from_sec1_bytes(&sec1)
                        .map(PublicKey::P521)
                        .map_err(|_| "the P-521 point is not valid".to_string()),
                    other => Err(format!(
                        "the curve {other:?} is not supported (use P-384 or P-521)"
                    )),
                }
            }
            "RSA" => {
                let n = BigUint::from_bytes_be(&unb64(field("n")?)?);
                let e = BigUint::from_bytes_be(&unb64(field("e")?)?);
                RsaPublicKey::new(n, e)
                    .map(PublicKey::Rsa)
                    .map_err(|e| format!("the RSA key is not valid: {e}"))
            }
            other => Err(format!(
                "the key type {other:?} is not supported (use EC or RSA)"
            )),
        }
    }

    /// The required members of the public JWK (RFC 7638 order), without `kid`/`alg`/`use`.
    fn members(&self) -> Map<String, Value> {
        let mut m = Map::new();
        match self {
            PublicKey::P384(k) => {
                let p = k.to_encoded_point(false);
                m.insert("crv".into(), "P-384".into());
                m.insert("kty".into(), "EC".into());
                m.insert("x".into(), b64(p.x().map(|x| &x[..]).unwrap_or(&[])).into());
                m.insert("y".into(), b64(p.y().map(|y| &y[..]).unwrap_or(&[])).into());
            }
            PublicKey::P521(k) => {
                let p = k.to_encoded_point(false);
                m.insert("crv".into(), "P-521".into());
                m.insert("kty".into(), "EC".into());
                m.insert("x".into(), b64(p.x().map(|x| &x[..]).unwrap_or(&[])).into());
                m.insert("y".into(), b64(p.y().map(|y| &y[..]).unwrap_or(&[])).into());
            }
            PublicKey::Rsa(k) => {
                m.insert("e".into(), b64(&k.e().to_bytes_be()).into());
                m.insert("kty".into(), "RSA".into());
                m.insert("n".into(), b64(&k.n().to_bytes_be()).into());
            }
        }
        m
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url): a stable key id.
    pub fn thumbprint(&self) -> String {
        // serde_json's Map is ordered by key (no preserve_order feature): the canonical order.
        let canonical = Value::Object(self.members()).to_string();
        b64(&Sha256::digest(canonical.as_bytes()))
    }

    /// The public JWK to register: key members plus `kid`, `alg`, `use: "sig"` and
    /// `key_ops: ["verify"]`.
    pub fn jwk(&self, kid: &str, alg: SigningAlg) -> Value {
        let mut m = self.members();
        m.insert("kid".into(), kid.into());
        m.insert("alg".into(), alg.as_str().into());
        m.insert("use".into(), "sig".into());
        m.insert("key_ops".into(), json!(["verify"]));
        Value::Object(m)
    }

    /// Whether `alg` can be used with this key.
    pub fn fits(&self, alg: SigningAlg) -> bool {
        matches!(
            (self, alg),
            (PublicKey::P384(_), SigningAlg::Es384)
                | (PublicKey::P521(_), SigningAlg::Es512)
                | (PublicKey::Rsa(_), SigningAlg::Rs384 | SigningAlg::Rs512)
        )
    }

    /// A short description for people ("EC P-384", "RSA 3072-bit").
    pub fn describe(&self) -> String {
        match self {
            PublicKey::P384(_) => "EC P-384".into(),
            PublicKey::P521(_) => "EC P-521".into(),
            PublicKey::Rsa(k) => format!("RSA {}-bit", k.size() * 8),
        }
    }

    /// Check a JWS signature (`signature_b64` as in the compact form) over `message`.
    pub fn verify(
        &self,
        alg: SigningAlg,
        message: &[u8],
        signature_b64: &str,
    ) -> Result<(), String> {
        if !self.fits(alg) {
            return Err(format!(
                "the key ({}) cannot verify {alg} signatures",
                self.describe()
            ));
        }
        let bad = || "the signature does not verify with this key".to_string();
        match self {
            PublicKey::P521(k) => {
                use p521::ecdsa::signature::Verifier;
                let sig = unb64(signature_b64)?;
                let sig = p521::ecdsa::Signature::from_slice(&sig).map_err(|_| bad())?;
                let vk = p521::ecdsa::VerifyingKey::from_sec1_bytes(&k.to_sec1_bytes())
                    .map_err(|_| bad())?;
                vk.verify(message, &sig).map_err(|_| bad())
            }
            PublicKey::P384(_) => {
                let m = self.members();
                let s = |n: &str| m.get(n).and_then(Value::as_str).unwrap_or_default();
                let dk = DecodingKey::from_ec_components(s("x"), s("y")).map_err(|_| bad())?;
                jwt_verify(signature_b64, message, &dk, alg)
            }
            PublicKey::Rsa(k) => {
                let dk = DecodingKey::from_rsa_raw_components(
                    &k.n().to_bytes_be(),
                    &k.e().to_bytes_be(),
                );
                jwt_verify(signature_b64, message, &dk, alg)
            }
        }
    }
}

fn jose_alg(alg: SigningAlg) -> Algorithm {
    match alg {
        SigningAlg::Es384 => Algorithm::ES384,
        SigningAlg::Rs384 => Algorithm::RS384,
        // ES512 never reaches jsonwebtoken (it lacks it); RS512 does.
        SigningAlg::Es512 | SigningAlg::Rs512 => Algorithm::RS512,
    }
}

fn jwt_verify(
    signature_b64: &str,
    message: &[u8],
    key: &DecodingKey,
    alg: SigningAlg,
) -> Result<(), String> {
    match jsonwebtoken::crypto::verify(signature_b64, message, key, jose_alg(alg)) {
        Ok(true) => Ok(()),
        _ => Err("the signature does not verify with this key".to_string()),
    }
}

enum Secret {
    P384(p384::SecretKey),
    P521(p521::SecretKey),
    Rsa(Box<RsaPrivateKey>),
}

enum Signer {
    Jwt(EncodingKey),
    P521(p521::ecdsa::SigningKey),
}

/// A private key ready to sign client assertions, with its algorithm and key id.
pub struct LoadedKey {
    public: PublicKey,
    alg: SigningAlg,
    kid: String,
    signer: Signer,
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("key", &"<private>")
            .finish()
    }
}

impl LoadedKey {
    /// Load the private key at `path` (PEM: PKCS#8, SEC1 or PKCS#1; or a private JWK / JWKS).
    /// On unix, a file that group or others may read is refused. `kid` empty = the JWK's `kid`,
    /// else the `kid` in the `<name>.jwks.json` that `keys generate` wrote beside
    /// `<name>.private.pem` (if it holds this key), else the key's thumbprint; `alg` `None` = the JWK's `alg`, else inferred from the key.
    pub fn from_file(
        path: &Path,
        kid: &str,
        alg: Option<SigningAlg>,
    ) -> Result<LoadedKey, AuthError> {
        if path.as_os_str().is_empty() {
            return Err(AuthError::Config {
                message: "no private key file is set; choose the key file the IIS registered (or generate one with `matchdesk keys generate`)".into(),
            });
        }
        let read_err = |source| AuthError::KeyRead {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if !meta.is_file() {
            return Err(AuthError::KeyFormat {
                path: path.to_path_buf(),
                problem: "it is not a file".into(),
            });
        }
        check_private(path, &meta)?;
        if meta.len() > MAX_KEY_FILE {
            return Err(AuthError::KeyFormat {
                path: path.to_path_buf(),
                problem: "it is far too large to be a key file".into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let mut key = Self::from_text(&text, kid, alg).map_err(|problem| AuthError::KeyFormat {
            path: path.to_path_buf(),
            problem,
        })?;
        if kid.trim().is_empty()
            && !text.trim_start().starts_with('{')
            && let Some(k) = sibling_kid(path, &key.public)
        {
            key.kid = k;
        }
        Ok(key)
    }

    /// Parse key text (see [`from_file`](Self::from_file)); errors are plain-language problems.
    pub fn from_text(text: &str, kid: &str, alg: Option<SigningAlg>) -> Result<LoadedKey, String> {
        let trimmed = text.trim_start();
        let (secret, jwk_kid, jwk_alg) = if trimmed.starts_with('{') {
            parse_jwk_file(trimmed, kid)?
        } else if trimmed.starts_with("-----BEGIN") {
            (parse_pem(trimmed)?, None, None)
        } else {
            return Err(
                "it is neither a PEM key (-----BEGIN PRIVATE KEY-----) nor a JWK (JSON)".into(),
            );
        };
        let public = match &secret {
            Secret::P384(k) => PublicKey::P384(k.public_key()),
            Secret::P521(k) => PublicKey::P521(k.public_key()),
            Secret::Rsa(k) => PublicKey::Rsa(k.to_public_key()),
        };
        let alg = match alg.or(jwk_alg) {
            Some(a) => a,
            None => match &public {
                PublicKey::P384(_) => SigningAlg::Es384,
                PublicKey::P521(_) => SigningAlg::Es512,
                PublicKey::Rsa(_) => SigningAlg::Rs384,
            },
        };
        if !public.fits(alg) {
            return Err(format!(
                "it holds an {} key, which cannot sign {alg}; choose {} or use another key",
                public.describe(),
                match &public {
                    PublicKey::P384(_) => "ES384",
                    PublicKey::P521(_) => "ES512",
                    PublicKey::Rsa(_) => "RS384 or RS512",
                }
            ));
        }
        let signer = match &secret {
            Secret::P384(k) => Signer::Jwt(EncodingKey::from_ec_der(
                k.to_pkcs8_der()
                    .map_err(|e| format!("the key cannot be encoded: {e}"))?
                    .as_bytes(),
            )),
            Secret::Rsa(k) => Signer::Jwt(EncodingKey::from_rsa_der(
                k.to_pkcs1_der()
                    .map_err(|e| format!("the key cannot be encoded: {e}"))?
                    .as_bytes(),
            )),
            Secret::P521(k) => Signer::P521(
                p521::ecdsa::SigningKey::from_slice(&k.to_bytes())
                    .map_err(|_| "the P-521 key is not valid".to_string())?,
            ),
        };
        let kid = if !kid.trim().is_empty() {
            kid.trim().to_string()
        } else {
            jwk_kid.unwrap_or_else(|| public.thumbprint())
        };
        Ok(LoadedKey {
            public,
            alg,
            kid,
            signer,
        })
    }

    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The public JWK of this key (for the JWKS given to the IIS).
    pub fn public_jwk(&self) -> Value {
        self.public.jwk(&self.kid, self.alg)
    }

    /// Sign `message` (the JWS signing input); returns the base64url signature.
    pub fn sign(&self, message: &[u8]) -> Result<String, AuthError> {
        match &self.signer {
            Signer::Jwt(key) => jsonwebtoken::crypto::sign(message, key, jose_alg(self.alg))
                .map_err(|e| AuthError::Signing {
                    detail: e.to_string(),
                }),
            Signer::P521(key) => {
                use p521::ecdsa::signature::Signer as _;
                let sig: p521::ecdsa::Signature =
                    key.try_sign(message).map_err(|e| AuthError::Signing {
                        detail: e.to_string(),
                    })?;
                Ok(b64(&sig.to_bytes()))
            }
        }
    }
}

/// The `kid` of `<name>.private.pem` from the `<name>.jwks.json` that [`generate`] wrote next to
/// it, if that set holds this very public key.
fn sibling_kid(path: &Path, public: &PublicKey) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".private.pem")?;
    let jwks = path.with_file_name(format!("{stem}.jwks.json"));
    let text = std::fs::read_to_string(jwks).ok()?;
    let set: Value = serde_json::from_str(&text).ok()?;
    set.get("keys")?
        .as_array()?
        .iter()
        .find(|k| PublicKey::from_jwk(k).ok().as_ref() == Some(public))
        .and_then(|k| k.get("kid")?.as_str())
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// Refuse key files that group or others may access (unix).
#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), AuthError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuthError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), AuthError> {
    Ok(())
}

fn pem_label(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("-----BEGIN ")?;
    let end = rest.find("-----")?;
    Some(&rest[..end])
}

fn parse_pem(text: &str) -> Result<Secret, String> {
    let label = pem_label(text).unwrap_or_default();
    let unreadable = |what: &str| format!("its {what} could not be read; the file may be damaged");
    match label {
        "PRIVATE KEY" => {
            if let Ok(k) = p384::SecretKey::from_pkcs8_pem(text) {
                return Ok(Secret::P384(k));
            }
            if let Ok(k) = p521::SecretKey::from_pkcs8_pem(text) {
                return Ok(Secret::P521(k));
            }
            if let Ok(k) = RsaPrivateKey::from_pkcs8_pem(text) {
                return rsa_secret(k);
            }
            Err("it is a PKCS#8 private key of an unsupported kind; use an EC P-384, EC P-521 or RSA key".into())
        }
        "EC PRIVATE KEY" => {
            if let Ok(k) = p384::SecretKey::from_sec1_pem(text) {
                return Ok(Secret::P384(k));
            }
            if let Ok(k) = p521::SecretKey::from_sec1_pem(text) {
                return Ok(Secret::P521(k));
            }
            Err("it is an EC key on an unsupported curve (or damaged); use P-384 or P-521".into())
        }
        "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_pem(text)
            .map_err(|_| unreadable("RSA key"))
            .and_then(rsa_secret),
        "ENCRYPTED PRIVATE KEY" => Err(
            "it is password-protected, which matchdesk cannot use; export it without a password (for example `openssl pkcs8 -topk8 -nocrypt`) and protect the file with `chmod 600`".into(),
        ),
        "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE" => Err(
            "it holds a public key or certificate, not the private key; choose the private key file".into(),
        ),
        other => Err(format!(
            "a PEM block {other:?} is not a supported private key (expected PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)"
        )),
    }
}

fn rsa_secret(k: RsaPrivateKey) -> Result<Secret, String> {
    if k.size() * 8 < RSA_MIN_BITS {
        return Err(format!(
            "the RSA key has only {} bits; the IIS needs at least {RSA_MIN_BITS}",
            k.size() * 8
        ));
    }
    k.validate()
        .map_err(|_| "the RSA key is not consistent; the file may be damaged".to_string())?;
    Ok(Secret::Rsa(Box::new(k)))
}

/// A private JWK, or a JWKS holding one (the one with `kid`, when given).
fn parse_jwk_file(
    text: &str,
    kid: &str,
) -> Result<(Secret, Option<String>, Option<SigningAlg>), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("it is not valid JSON ({e})"))?;
    let jwk = match v.get("keys").and_then(Value::as_array) {
        Some(keys) => {
            let private: Vec<&Value> = keys.iter().filter(|k| k.get("d").is_some()).collect();
            let want = kid.trim();
            // One private key: that one (the profile's kid, if any, names it at the IIS).
            // Several: the one with the profile's kid.
            let chosen: Vec<&Value> = if want.is_empty() || private.len() == 1 {
                private
            } else {
                private
                    .into_iter()
                    .filter(|k| k.get("kid").and_then(Value::as_str) == Some(want))
                    .collect()
            };
            match chosen.as_slice() {
                [one] => (*one).clone(),
                [] if want.is_empty() => {
                    return Err("the JWK set holds no private key (no `d`); choose the private key file, not the public JWKS".into());
                }
                [] => {
                    return Err(format!(
                        "the JWK set holds no private key with kid {want:?}"
                    ));
                }
                _ => {
                    return Err(
                        "the JWK set holds several private keys; enter the key id (kid) to use"
                            .into(),
                    );
                }
            }
        }
        None => v,
    };
    let field = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the JWK has no `{name}`"))
    };
    if jwk.get("d").is_none() {
        return Err(
            "the JWK is a public key (no `d`); choose the private key file, not the public JWKS"
                .into(),
        );
    }
    let secret = match field("kty")? {
        "EC" => {
            let d = unb64(field("d")?)?;
            match field("crv")? {
                "P-384" => p384::SecretKey::from_slice(&d)
                    .map(Secret::P384)
                    .map_err(|_| "the P-384 private key is not valid".to_string())?,
                "P-521" => p521::SecretKey::from_slice(&d)
                    .map(Secret::P521)
                    .map_err(|_| "the P-521 private key is not valid".to_string())?,
                other => {
                    return Err(format!(
                        "the curve {other:?} is not supported (use P-384 or P-521)"
                    ));
                }
            }
        }
        "RSA" => {
            let num = |n: &str| -> Result<BigUint, String> {
                Ok(BigUint::from_bytes_be(&unb64(field(n)?)?))
            };
            let key = RsaPrivateKey::from_components(
                num("n")?,
                num("e")?,
                num("d")?,
                vec![num("p")?, num("q")?],
            )
            .map_err(|e| format!("the RSA private key is not valid: {e}"))?;
            rsa_secret(key)?
        }
        other => {
            return Err(format!(
                "the key type {other:?} is not supported (use EC or RSA)"
            ));
        }
    };
    // The public members, when present, must belong to the private key.
    let public = match &secret {
        Secret::P384(k) => PublicKey::P384(k.public_key()),
        Secret::P521(k) => PublicKey::P521(k.public_key()),
        Secret::Rsa(k) => PublicKey::Rsa(k.to_public_key()),
    };
    if let Ok(stated) = PublicKey::from_jwk(&jwk)
        && stated != public
    {
        return Err("the JWK's public part does not belong to its private part".into());
    }
    let jwk_kid = jwk
        .get("kid")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string);
    let jwk_alg = match jwk.get("alg").and_then(Value::as_str) {
        Some(a) => Some(a.parse::<SigningAlg>().map_err(|_| {
            format!("the JWK's alg {a:?} is not supported (use ES384, RS384, ES512 or RS512)")
        })?),
        None => None,
    };
    Ok((secret, jwk_kid, jwk_alg))
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

/// What [`generate`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedKeys {
    pub kid: String,
    pub alg: SigningAlg,
    /// `<kid>.private.pem` (PKCS#8, mode 0600): keep it secret, point the server profile at it.
    pub private_key: PathBuf,
    /// `<kid>.jwks.json`: the public JWKS to give the IIS at registration.
    pub jwks: PathBuf,
}

/// Whether `kid` can be used as a key id and file name.
fn check_kid(kid: &str) -> Result<(), AuthError> {
    let ok = !kid.is_empty()
        && kid.len() <= 100
        && kid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !kid.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(AuthError::Config {
            message: format!(
                "the key id {kid:?} cannot be used; use up to 100 letters, digits, '-', '_' or '.' (not starting with '.')"
            ),
        })
    }
}

/// Generate a key pair for `alg` in `out_dir` (created if missing): `<kid>.private.pem`
/// (PKCS#8 PEM, written with mode 0600, never overwritten) and `<kid>.jwks.json` (the public
/// JWKS with `kid`, `alg`, `use: "sig"`, `key_ops: ["verify"]`). `kid` defaults to the key's
/// RFC 7638 thumbprint.
pub fn generate(
    alg: SigningAlg,
    kid: Option<&str>,
    out_dir: &Path,
) -> Result<GeneratedKeys, AuthError> {
    let kid = kid.map(str::trim).filter(|k| !k.is_empty());
    if let Some(k) = kid {
        check_kid(k)?;
    }
    let mut rng = rand_core::OsRng;
    let keygen = |e: &dyn std::fmt::Display| AuthError::KeyGen {
        detail: e.to_string(),
    };
    let (pem, public) = match alg {
        SigningAlg::Es384 => {
            let k = p384::SecretKey::random(&mut rng);
            let pem = k.to_pkcs8_pem(LineEnding::LF).map_err(|e| keygen(&e))?;
            (pem, PublicKey::P384(k.public_key()))
        }
        SigningAlg::Es512 => {
            let k = p521::SecretKey::random(&mut rng);
            let pem = k.to_pkcs8_pem(LineEnding::LF).map_err(|e| keygen(&e))?;
            (pem, PublicKey::P521(k.public_key()))
        }
        SigningAlg::Rs384 | SigningAlg::Rs512 => {
            let k = RsaPrivateKey::new(&mut rng, RSA_BITS).map_err(|e| keygen(&e))?;
            let pem = k.to_pkcs8_pem(LineEnding::LF).map_err(|e| keygen(&e))?;
            (pem, PublicKey::Rsa(k.to_public_key()))
        }
    };
    let kid = kid
        .map(str::to_string)
        .unwrap_or_else(|| public.thumbprint());
    std::fs::create_dir_all(out_dir).map_err(|source| AuthError::KeyWrite {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let private_key = out_dir.join(format!("{kid}.private.pem"));
    let jwks = out_dir.join(format!("{kid}.jwks.json"));
    write_private(&private_key, pem.as_bytes())?;
    let set = json!({ "keys": [public.jwk(&kid, alg)] });
    let text = serde_json::to_string_pretty(&set).map_err(|e| keygen(&e))?;
    std::fs::write(&jwks, format!("{text}\n")).map_err(|source| AuthError::KeyWrite {
        path: jwks.clone(),
        source,
    })?;
    Ok(GeneratedKeys {
        kid,
        alg,
        private_key,
        jwks,
    })
}

/// Create `path` with mode 0600 (unix); refuse to replace an existing file.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            AuthError::KeyWrite {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    source.kind(),
                    "a key file with this name already exists and is not replaced; choose another key id (--kid) or folder",
                ),
            }
        } else {
            AuthError::KeyWrite {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|source| AuthError::KeyWrite {
            path: path.to_path_buf(),
            source,
        })
}

/// Read a public JWKS file (`{"keys": [...]}`) or a single public JWK (wrapped into a set).
pub fn read_jwks(path: &Path) -> Result<Value, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::KeyRead {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |problem: String| AuthError::KeyFormat {
        path: path.to_path_buf(),
        problem,
    };
    let v: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("it is not valid JSON ({e})")))?;
    let set = if v.get("keys").is_some() {
        v
    } else {
        json!({ "keys": [v] })
    };
    let keys = set
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`keys` is not a list".into()))?;
    for k in keys {
        if k.get("d").is_some() {
            return Err(bad(
                "it contains a private key (`d`); give the IIS only the public JWKS".into(),
            ));
        }
        PublicKey::from_jwk(k).map_err(bad)?;
    }
    Ok(set)
}
