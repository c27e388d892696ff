//! Tokens of an external identity provider: RS256 and ES256 keys from a JWKS
//! file, chosen by `kid`; the key decides the algorithm; `iss`/`aud` pinned.
//! The keys under tests/keys are test-only keys made for this suite.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use smartscheduler_application::{AuthError, TokenVerifier};
use smartscheduler_domain::Role;
use smartscheduler_infrastructure::tokens::JwksVerifier;

fn keys() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn claims(iss: &str, aud: &str) -> serde_json::Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    json!({ "sub": "idp-user", "role": "Dispatcher", "regions": ["north"], "exp": now + 600, "iss": iss, "aud": aud })
}

fn sign(alg: Algorithm, kid: &str, pem_file: &str, claims: &serde_json::Value) -> String {
    let pem = std::fs::read(keys().join(pem_file)).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, &key).unwrap()
}

fn verifier() -> JwksVerifier {
    JwksVerifier::from_file(&keys().join("jwks.json"), Some("https-idp"), Some("smartscheduler")).unwrap()
}

#[test]
fn rs256_and_es256_tokens_from_the_key_set_are_accepted() {
    let v = verifier();
    let rs = sign(Algorithm::RS256, "rsa-1", "rsa.pem", &claims("https-idp", "smartscheduler"));
    let principal = v.verify(&rs).unwrap();
    assert_eq!((principal.subject.as_str(), principal.role), ("idp-user", Role::Dispatcher));
    let es = sign(Algorithm::ES256, "ec-1", "ec.pem", &claims("https-idp", "smartscheduler"));
    assert_eq!(v.verify(&es).unwrap().regions, vec!["north".to_owned()]);
}

#[test]
fn wrong_issuer_audience_kid_or_algorithm_is_refused() {
    let v = verifier();
    let wrong_iss = sign(Algorithm::RS256, "rsa-1", "rsa.pem", &claims("evil", "smartscheduler"));
    assert!(matches!(v.verify(&wrong_iss), Err(AuthError::Invalid(_))));
    let wrong_aud = sign(Algorithm::RS256, "rsa-1", "rsa.pem", &claims("https-idp", "other-app"));
    assert!(matches!(v.verify(&wrong_aud), Err(AuthError::Invalid(_))));
    let unknown_kid = sign(Algorithm::RS256, "nope", "rsa.pem", &claims("https-idp", "smartscheduler"));
    assert!(matches!(v.verify(&unknown_kid), Err(AuthError::Invalid(_))));
    // The RSA key signs RS256 only: a token that says RS512 is refused.
    let other_alg = sign(Algorithm::RS512, "rsa-1", "rsa.pem", &claims("https-idp", "smartscheduler"));
    assert_eq!(v.verify(&other_alg), Err(AuthError::Invalid("algorithm not allowed".into())));
}

#[test]
fn key_type_confusion_and_alg_none_are_refused() {
    let v = verifier();
    // HS256 "signed" with the RSA public key's bytes as the secret: the
    // classic confusion attack. The key set has no symmetric key to match.
    let jwks = std::fs::read(keys().join("jwks.json")).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let forged =
        encode(&header, &claims("https-idp", "smartscheduler"), &EncodingKey::from_secret(&jwks).unwrap()).unwrap();
    assert!(matches!(v.verify(&forged), Err(AuthError::Invalid(_))));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
        b64.encode(serde_json::to_vec(&claims("https-idp", "smartscheduler")).unwrap())
    );
    assert!(matches!(v.verify(&none), Err(AuthError::Invalid(_))));
}

#[test]
fn a_key_set_without_usable_keys_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, r#"{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0"}]}"#).unwrap();
    assert!(JwksVerifier::from_file(&path, None, None).is_err());
    assert!(JwksVerifier::from_file(&dir.path().join("missing.json"), None, None).is_err());
}
