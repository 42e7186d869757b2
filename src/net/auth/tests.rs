//! Unit tests of keys and the client assertion. The end-to-end behaviour against the simulated
//! IIS in SMART mode is in `tests/auth_sim.rs`.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use super::jwt::{ASSERTION_LIFETIME_SECS, UnverifiedJwt, client_assertion, unix_now};
use super::keys::{self, LoadedKey, PublicKey};
use super::*;
use crate::net::NetError;

fn load(path: &Path) -> LoadedKey {
    LoadedKey::from_file(path, "", None).unwrap()
}

#[test]
fn assertion_has_the_smart_claims_and_header() {
    let dir = tempfile::tempdir().unwrap();
    let g = keys::generate(SigningAlg::Es384, Some("kid-1"), dir.path()).unwrap();
    let key = load(&g.private_key);
    assert_eq!(key.kid(), "kid-1");
    assert_eq!(key.alg(), SigningAlg::Es384);
    let aud = "https://iis.example.org/auth/token";
    let now = unix_now();
    let jwt = client_assertion(
        &key,
        "client-7",
        aud,
        Some("https://clinic.example/jwks.json"),
        now,
    )
    .unwrap();

    // Verified by jsonwebtoken's own decoder, with its claim validation, from the public JWKS
    // file the IIS would get.
    let jwks: Value = serde_json::from_str(&std::fs::read_to_string(&g.jwks).unwrap()).unwrap();
    let jwk = &jwks["keys"][0];
    let dk =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .unwrap();
    let mut v = Validation::new(Algorithm::ES384);
    v.set_audience(&[aud]);
    v.set_issuer(&["client-7"]);
    v.sub = Some("client-7".into());
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let data = jsonwebtoken::decode::<Value>(&jwt, &dk, &v).unwrap();
    assert_eq!(data.header.alg, Algorithm::ES384);
    assert_eq!(data.header.kid.as_deref(), Some("kid-1"));
    assert_eq!(data.header.typ.as_deref(), Some("JWT"));
    assert_eq!(
        data.header.jku.as_deref(),
        Some("https://clinic.example/jwks.json")
    );
    let c = &data.claims;
    assert_eq!(c["iss"], "client-7");
    assert_eq!(c["sub"], "client-7");
    assert_eq!(c["aud"], aud);
    let exp = c["exp"].as_u64().unwrap();
    assert!(exp > now && exp <= now + 300, "exp {exp} now {now}");
    assert_eq!(exp, now + ASSERTION_LIFETIME_SECS);
    let jti = c["jti"].as_str().unwrap();
    assert!(jti.len() >= 32);

    // Every assertion is new: another jti.
    let again = client_assertion(&key, "client-7", aud, None, now).unwrap();
    let p = UnverifiedJwt::parse(&again).unwrap();
    assert_ne!(p.claim_str("jti"), Some(jti));
    assert_eq!(p.header_str("jku"), None);
    assert!(p.verify(key.public_key()).is_ok());
}

#[test]
fn every_algorithm_signs_and_verifies_and_tampering_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    for &alg in SigningAlg::ALL {
        let g = keys::generate(alg, None, dir.path()).unwrap();
        let key = load(&g.private_key);
        assert_eq!(
            key.alg(),
            if alg == SigningAlg::Rs512 {
                SigningAlg::Rs384
            } else {
                alg
            }
        );
        let key = LoadedKey::from_file(&g.private_key, "", Some(alg)).unwrap();
        // The default kid is the RFC 7638 thumbprint, also the file name.
        assert_eq!(key.kid(), g.kid);
        assert_eq!(key.kid(), key.public_key().thumbprint());
        let jwt = client_assertion(&key, "c", "https://a.example/token", None, unix_now()).unwrap();
        let parsed = UnverifiedJwt::parse(&jwt).unwrap();
        assert_eq!(parsed.alg().unwrap(), alg);
        let jwks: Value = serde_json::from_str(&std::fs::read_to_string(&g.jwks).unwrap()).unwrap();
        let public = PublicKey::from_jwk(&jwks["keys"][0]).unwrap();
        assert!(parsed.verify(&public).is_ok(), "{alg}");

        // Change one claim: the signature no longer fits.
        let mut parts: Vec<String> = jwt.split('.').map(str::to_string).collect();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["sub"] = json!("someone-else");
        parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
        let forged = UnverifiedJwt::parse(&parts.join(".")).unwrap();
        assert!(forged.verify(&public).is_err(), "{alg}");

        // Another key of the same kind does not verify it.
        let other = keys::generate(alg, None, dir.path()).unwrap();
        let other = load(&other.private_key).public_key().clone();
        assert!(parsed.verify(&other).is_err(), "{alg}");
    }
}

#[test]
fn generated_files_are_private_and_the_jwks_is_public_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new-folder");
    let g = keys::generate(SigningAlg::Rs384, Some("clinic-2026"), &out).unwrap();
    assert_eq!(g.private_key, out.join("clinic-2026.private.pem"));
    assert_eq!(g.jwks, out.join("clinic-2026.jwks.json"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&g.private_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let pem = std::fs::read_to_string(&g.private_key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let jwks: Value = serde_json::from_str(&std::fs::read_to_string(&g.jwks).unwrap()).unwrap();
    let k = &jwks["keys"][0];
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(k["kid"], "clinic-2026");
    assert_eq!(k["alg"], "RS384");
    assert_eq!(k["use"], "sig");
    assert_eq!(k["key_ops"], json!(["verify"]));
    assert_eq!(k["kty"], "RSA");
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(k.get(private).is_none(), "{private} leaked into the JWKS");
    }
    assert!(keys::read_jwks(&g.jwks).is_ok());
    // Without a kid in the profile, the one in the JWKS beside the key is used.
    assert_eq!(load(&g.private_key).kid(), "clinic-2026");
    assert_eq!(load(&g.private_key).alg(), SigningAlg::Rs384);

    // Never overwrites a key.
    let err = keys::generate(SigningAlg::Es384, Some("clinic-2026"), &out).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    // Key ids that are not safe file names are refused.
    let err = keys::generate(SigningAlg::Es384, Some("../evil"), &out).unwrap_err();
    assert!(matches!(err, AuthError::Config { .. }), "{err}");
}

#[cfg(unix)]
#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let g = keys::generate(SigningAlg::Es384, Some("k"), dir.path()).unwrap();
    std::fs::set_permissions(&g.private_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = LoadedKey::from_file(&g.private_key, "", None).unwrap_err();
    assert!(
        matches!(err, AuthError::KeyPermissions { mode: 0o644, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("chmod 600 {}", g.private_key.display())),
        "{msg}"
    );
    // SmartToken::new refuses it too.
    let cfg = SmartConfig {
        client_id: "c".into(),
        key_path: g.private_key.clone(),
        ..SmartConfig::default()
    };
    let base = url::Url::parse("https://iis.example.org/fhir").unwrap();
    assert!(matches!(
        SmartToken::new(&base, &cfg),
        Err(AuthError::KeyPermissions { .. })
    ));
    std::fs::set_permissions(&g.private_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(SmartToken::new(&base, &cfg).is_ok());
}

fn write_private(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::io::Write;
    let p = dir.join(name);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(&p).unwrap().write_all(text.as_bytes()).unwrap();
    p
}

#[test]
fn keys_load_from_jwk_sec1_and_pkcs1_and_mismatches_are_explained() {
    use p384::pkcs8::DecodePrivateKey;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::LineEnding;
    let dir = tempfile::tempdir().unwrap();

    // A private JWK (EC P-384) with kid and alg: both are taken from it.
    let g = keys::generate(SigningAlg::Es384, Some("pem"), dir.path()).unwrap();
    let pem = std::fs::read_to_string(&g.private_key).unwrap();
    let secret = p384::SecretKey::from_pkcs8_pem(&pem).unwrap();
    let mut jwk = PublicKey::P384(secret.public_key()).jwk("from-jwk", SigningAlg::Es384);
    jwk["d"] = json!(URL_SAFE_NO_PAD.encode(secret.to_bytes()));
    let jwk_path = write_private(
        dir.path(),
        "key.jwk.json",
        &json!({"keys": [jwk]}).to_string(),
    );
    let k = load(&jwk_path);
    assert_eq!(k.kid(), "from-jwk");
    assert_eq!(k.alg(), SigningAlg::Es384);
    // The profile's kid wins over the file's.
    let k = LoadedKey::from_file(&jwk_path, "override", None).unwrap();
    assert_eq!(k.kid(), "override");

    // SEC1 ("EC PRIVATE KEY").
    let sec1 = secret.to_sec1_pem(LineEnding::LF).unwrap();
    let p = write_private(dir.path(), "sec1.pem", &sec1);
    assert_eq!(load(&p).public_key(), &PublicKey::P384(secret.public_key()));

    // PKCS#1 ("RSA PRIVATE KEY"), RS512 chosen explicitly.
    let r = keys::generate(SigningAlg::Rs512, Some("rsa"), dir.path()).unwrap();
    let rsa_pem = std::fs::read_to_string(&r.private_key).unwrap();
    let rsa_key = rsa::RsaPrivateKey::from_pkcs8_pem(&rsa_pem).unwrap();
    let pkcs1 = rsa_key.to_pkcs1_pem(LineEnding::LF).unwrap();
    let p = write_private(dir.path(), "pkcs1.pem", &pkcs1);
    let k = LoadedKey::from_file(&p, "", Some(SigningAlg::Rs512)).unwrap();
    assert_eq!(k.alg(), SigningAlg::Rs512);

    // An EC key cannot do RS384.
    let err = LoadedKey::from_file(&g.private_key, "", Some(SigningAlg::Rs384)).unwrap_err();
    assert!(err.to_string().contains("cannot sign RS384"), "{err}");
    // The public JWKS is not a private key.
    let pubset = write_private(
        dir.path(),
        "pub.json",
        &std::fs::read_to_string(&g.jwks).unwrap(),
    );
    let err = LoadedKey::from_file(&pubset, "", None).unwrap_err();
    assert!(err.to_string().contains("no private key"), "{err}");
    // Garbage, a missing file.
    let junk = write_private(dir.path(), "junk.txt", "hello");
    assert!(matches!(
        LoadedKey::from_file(&junk, "", None),
        Err(AuthError::KeyFormat { .. })
    ));
    let err = LoadedKey::from_file(&dir.path().join("nope.pem"), "", None).unwrap_err();
    assert!(matches!(err, AuthError::KeyRead { .. }), "{err:?}");
}

#[test]
fn signing_alg_names_round_trip() {
    for &a in SigningAlg::ALL {
        assert_eq!(a.as_str().parse::<SigningAlg>().unwrap(), a);
        assert_eq!(a.to_string(), a.as_str());
        assert_eq!(serde_json::to_value(a).unwrap(), json!(a.as_str()));
    }
    assert_eq!("es384".parse::<SigningAlg>().unwrap(), SigningAlg::Es384);
    assert!("HS256".parse::<SigningAlg>().is_err());
    let d = SmartConfig::default();
    assert_eq!(d.scopes, "system/Patient.rs");
    let back: SmartConfig = serde_json::from_value(json!({"client_id": "x"})).unwrap();
    assert_eq!(back.scopes, "system/Patient.rs");
    assert_eq!(back.client_id, "x");
}

#[test]
fn oauth_errors_advise_and_only_transient_ones_retry() {
    let e = AuthError::OAuth {
        kind: OAuthErrorKind::parse("invalid_scope"),
        description: Some("no Patient scope".into()),
        status: 400,
    };
    let msg = e.to_string();
    assert!(
        msg.contains("invalid_scope") && msg.contains("no Patient scope"),
        "{msg}"
    );
    assert!(msg.contains("system/Patient.rs"), "{msg}");
    let n: NetError = e.into();
    assert!(!n.is_retryable());
    assert_eq!(n.to_string(), msg);
    for code in [
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_request",
        "temporarily_unavailable",
    ] {
        let k = OAuthErrorKind::parse(code);
        assert_eq!(k.code(), code);
        assert!(!k.advice().is_empty());
    }
    let n: NetError = AuthError::Unreachable {
        url: "https://a/token".into(),
        detail: "the connection failed".into(),
    }
    .into();
    assert!(n.is_retryable());
}
