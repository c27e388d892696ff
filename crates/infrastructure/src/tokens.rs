//! Bearer tokens: HS256 JWTs with the contract's claims, through the
//! `jsonwebtoken` crate (nothing hand-rolled), and the generated secret kept
//! under `./data/` when none is configured.

use std::path::Path;

use base64::Engine;
use jsonwebtoken::{decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use smartscheduler_application::{AuthError, TokenVerifier};
use smartscheduler_domain::{ContractorId, Principal, Role};

/// The claims of a SmartScheduler token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    /// Subject.
    pub sub: String,
    /// `Admin`, `Dispatcher` or `Contractor`.
    pub role: String,
    /// Dispatchers: their regions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Contractors: who they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contractor_id: Option<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Issuer, when the service expects one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience, when the service expects one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Issues and verifies HS256 tokens with one secret.
#[derive(Clone)]
pub struct JwtTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtTokens { .. }")
    }
}

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;

impl JwtTokens {
    /// Tokens signed with `secret` (HS256; no other algorithm is accepted).
    ///
    /// # Errors
    /// An empty secret.
    pub fn hs256(secret: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        let validation = validation(Algorithm::HS256, None, None);
        Ok(Self {
            encoding: EncodingKey::from_secret(secret)?,
            decoding: DecodingKey::from_secret(secret)?,
            validation,
        })
    }

    /// Also requires `iss` and/or `aud` to match, when given.
    pub fn expecting(mut self, issuer: Option<&str>, audience: Option<&str>) -> Self {
        self.validation = validation(Algorithm::HS256, issuer, audience);
        self
    }

    /// Signs `claims`.
    ///
    /// # Errors
    /// When signing fails (it does not with HS256).
    pub fn issue(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
    }
}

/// The validation every verifier uses: the one algorithm pinned, `exp` and
/// `sub` required, `exp`/`nbf` with [`LEEWAY_SECONDS`], `iss`/`aud` when set.
fn validation(algorithm: Algorithm, issuer: Option<&str>, audience: Option<&str>) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub"]);
    if let Some(issuer) = issuer {
        validation.set_issuer(&[issuer]);
    }
    match audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    validation
}

fn auth_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
        ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not allowed".into()),
        ErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet".into()),
        ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
        ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
        ErrorKind::Json(_) | ErrorKind::MissingRequiredClaim(_) => {
            AuthError::Invalid("claims are missing or malformed".into())
        }
        _ => AuthError::Invalid("malformed token".into()),
    }
}

fn principal(claims: Claims) -> Result<Principal, AuthError> {
    let role =
        Role::parse(&claims.role).ok_or_else(|| AuthError::Invalid(format!("unknown role '{}'", claims.role)))?;
    let contractor_id = match claims.contractor_id.as_deref() {
        Some(id) => {
            Some(id.parse::<ContractorId>().map_err(|_| AuthError::Invalid("contractorId is not a UUID".into()))?)
        }
        None => None,
    };
    if role == Role::Contractor && contractor_id.is_none() {
        return Err(AuthError::Invalid("a Contractor token needs contractorId".into()));
    }
    Ok(Principal { subject: claims.sub, role, regions: claims.regions, contractor_id })
}

impl TokenVerifier for JwtTokens {
    fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| auth_error(&e))?;
        principal(data.claims)
    }
}

/// Verifies tokens of an external identity provider (Cognito, Keycloak...)
/// signed with RS256/384/512, PS256/384/512 or ES256/384, keys from a JWKS
/// file chosen by the token's `kid`. The algorithm is the key's, never the
/// token's say-so: a token whose header names another is refused, and
/// symmetric (`oct`) keys and `alg: none` are never accepted. An unknown
/// `kid` re-reads the file (at most every 10 s), so keys rotate by
/// replacing the file.
pub struct JwksVerifier {
    path: std::path::PathBuf,
    issuer: Option<String>,
    audience: Option<String>,
    keys: std::sync::RwLock<JwksKeys>,
}

struct JwksKeys {
    loaded: std::time::Instant,
    by_kid: std::collections::HashMap<String, (DecodingKey, Algorithm)>,
}

impl std::fmt::Debug for JwksVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksVerifier").field("path", &self.path).finish()
    }
}

const ASYMMETRIC: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

fn load_jwks(path: &Path) -> Result<std::collections::HashMap<String, (DecodingKey, Algorithm)>, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the JWKS file {}: {e}", path.display()))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| format!("the JWKS file is not a JWK set: {e}"))?;
    let mut keys = std::collections::HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        let algorithm = match (jwk.common.key_algorithm.and_then(|a| Algorithm::try_from(a).ok()), &jwk.algorithm) {
            (Some(alg), _) => alg,
            (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (None, AlgorithmParameters::EllipticCurve(ec)) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
            (None, AlgorithmParameters::EllipticCurve(ec)) if ec.curve == EllipticCurve::P384 => Algorithm::ES384,
            _ => continue,
        };
        if !ASYMMETRIC.contains(&algorithm) {
            continue; // never a shared-secret key from a key set
        }
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            keys.insert(kid, (key, algorithm));
        }
    }
    if keys.is_empty() {
        return Err(format!("the JWKS file {} has no usable signing key with a kid", path.display()));
    }
    Ok(keys)
}

impl JwksVerifier {
    /// Reads the key set at `path`.
    ///
    /// # Errors
    /// When the file cannot be read or holds no usable key.
    pub fn from_file(path: &Path, issuer: Option<&str>, audience: Option<&str>) -> Result<Self, String> {
        let by_kid = load_jwks(path)?;
        Ok(Self {
            path: path.to_owned(),
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            keys: std::sync::RwLock::new(JwksKeys { loaded: std::time::Instant::now(), by_kid }),
        })
    }

    fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        if let Some(found) = self.keys.read().ok()?.by_kid.get(kid) {
            return Some(found.clone());
        }
        let mut keys = self.keys.write().ok()?;
        if keys.loaded.elapsed() >= std::time::Duration::from_secs(10) {
            keys.loaded = std::time::Instant::now();
            match load_jwks(&self.path) {
                Ok(by_kid) => keys.by_kid = by_kid,
                Err(err) => tracing::warn!(%err, "could not reload the JWKS file"),
            }
        }
        keys.by_kid.get(kid).cloned()
    }
}

impl TokenVerifier for JwksVerifier {
    fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| auth_error(&e))?;
        let kid = header.kid.ok_or_else(|| AuthError::Invalid("the token has no kid".into()))?;
        let (key, algorithm) = self.key(&kid).ok_or_else(|| AuthError::Invalid("unknown signing key".into()))?;
        if header.alg != algorithm {
            return Err(AuthError::Invalid("algorithm not allowed".into()));
        }
        let validation = validation(algorithm, self.issuer.as_deref(), self.audience.as_deref());
        let data = decode::<Claims>(token, &key, &validation).map_err(|e| auth_error(&e))?;
        principal(data.claims)
    }
}

/// A secret kept in a file, and what reading it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    /// The secret, trimmed.
    pub secret: String,
    /// How the file was found.
    pub origin: SecretFileOrigin,
}

/// How [`load_or_create_secret`] found the secret file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFileOrigin {
    /// It did not exist (or was empty): a secret was generated, mode 0600.
    Created,
    /// It existed with owner-only permissions.
    Read,
    /// It existed readable or writable by group or others: its mode was
    /// set to 0600. The secret may have been read meanwhile.
    Tightened {
        /// The permission bits it had.
        previous_mode: u32,
    },
}

/// Reads the secret kept in `path`, or creates one (32 random bytes, base64)
/// with owner-only permissions. An existing file open to group or others is
/// made owner-only (the caller warns): the secret stays usable, and stops
/// being readable by others from now on.
///
/// # Errors
/// When the file cannot be read, written or have its mode changed.
pub fn load_or_create_secret(path: &Path) -> std::io::Result<StoredSecret> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_owned();
        if !existing.is_empty() {
            let origin = tighten_mode(path)?;
            return Ok(StoredSecret { secret: existing, origin });
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    write_owner_only(path, secret.as_bytes())?;
    Ok(StoredSecret { secret, origin: SecretFileOrigin::Created })
}

/// Writes `contents` to `path`, created with mode 0600 so that it is never
/// readable by others, not even between its creation and a `chmod`.
fn write_owner_only(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // An existing empty file keeps its mode through `open`: set it too.
    restrict_to_owner(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Sets `path` to 0600 when group or others have any permission on it.
fn tighten_mode(path: &Path) -> std::io::Result<SecretFileOrigin> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            restrict_to_owner(path)?;
            return Ok(SecretFileOrigin::Tightened { previous_mode: mode });
        }
    }
    Ok(SecretFileOrigin::Read)
}

/// Sets `path` to mode 0600 (owner read and write only); nothing elsewhere.
///
/// # Errors
/// When the mode cannot be changed.
pub fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn claims(role: &str) -> Claims {
        Claims {
            sub: "u1".into(),
            role: role.into(),
            regions: vec!["north".into()],
            contractor_id: None,
            exp: now() + 600,
            iat: None,
            iss: None,
            aud: None,
        }
    }

    #[test]
    fn a_token_round_trips_into_a_principal() {
        let tokens = JwtTokens::hs256(b"secret").unwrap();
        let principal = tokens.verify(&tokens.issue(&claims("Dispatcher")).unwrap()).unwrap();
        assert_eq!(principal.role, Role::Dispatcher);
        assert_eq!(principal.regions, vec!["north".to_owned()]);
    }

    #[test]
    fn expired_forged_and_unsigned_tokens_are_refused() {
        let tokens = JwtTokens::hs256(b"secret").unwrap();
        let mut expired = claims("Admin");
        expired.exp = now() - 3600;
        assert_eq!(tokens.verify(&tokens.issue(&expired).unwrap()), Err(AuthError::Expired));

        let forged = JwtTokens::hs256(b"other").unwrap().issue(&claims("Admin")).unwrap();
        assert!(matches!(tokens.verify(&forged), Err(AuthError::Invalid(_))));

        // alg: none, hand-built: header {"alg":"none","typ":"JWT"}.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(serde_json::to_vec(&claims("Admin")).unwrap())
        );
        assert!(matches!(tokens.verify(&none), Err(AuthError::Invalid(_))));
        assert!(matches!(tokens.verify("garbage"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn roles_and_contractor_ids_are_checked() {
        let tokens = JwtTokens::hs256(b"secret").unwrap();
        assert!(tokens.verify(&tokens.issue(&claims("Root")).unwrap()).is_err());
        assert!(tokens.verify(&tokens.issue(&claims("Contractor")).unwrap()).is_err(), "contractor without id");
        let mut c = claims("Contractor");
        c.contractor_id = Some(ContractorId::new().to_string());
        assert!(tokens.verify(&tokens.issue(&c).unwrap()).is_ok());
    }

    #[test]
    fn the_generated_secret_is_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/jwt-secret");
        let first = load_or_create_secret(&path).unwrap();
        assert_eq!(first.origin, SecretFileOrigin::Created);
        assert!(first.secret.len() >= 40);
        let second = load_or_create_secret(&path).unwrap();
        assert_eq!(second.origin, SecretFileOrigin::Read);
        assert_eq!(first.secret, second.secret);
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn the_generated_secret_file_is_owner_only_even_with_a_lax_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-secret");
        // An empty file left world-readable is replaced, not trusted.
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let stored = load_or_create_secret(&path).unwrap();
        assert_eq!(stored.origin, SecretFileOrigin::Created);
        assert_eq!(mode(&path), 0o600);
        let fresh = dir.path().join("fresh/jwt-secret");
        load_or_create_secret(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_secret_file_readable_by_others_is_made_owner_only_and_reported() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-secret");
        std::fs::write(&path, "an-existing-secret-of-more-than-32-bytes\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let stored = load_or_create_secret(&path).unwrap();
        assert_eq!(stored.secret, "an-existing-secret-of-more-than-32-bytes");
        assert_eq!(stored.origin, SecretFileOrigin::Tightened { previous_mode: 0o644 });
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load_or_create_secret(&path).unwrap().origin, SecretFileOrigin::Read);
    }
}
