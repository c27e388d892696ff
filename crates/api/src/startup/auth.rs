//! Who may call: the token secret, resolved once, and the `TokenVerifier`
//! that checks bearer tokens with it or with an identity provider's JWKS.

use std::sync::Arc;

use anyhow::Context;
use smartscheduler_application::TokenVerifier;
use smartscheduler_infrastructure::tokens::JwksVerifier;
use smartscheduler_infrastructure::JwtTokens;

use crate::config::SecretArgs;

/// What the auth phase yields.
pub(crate) struct Auth {
    /// The HS256 secret; it also signs the hub's connection tokens.
    pub secret: String,
    /// Checks bearer tokens.
    pub verifier: Arc<dyn TokenVerifier>,
}

/// Resolves the secret and builds the verifier: JWKS when a file is
/// configured, else HS256 with the secret.
///
/// # Errors
/// An unusable secret or JWKS file.
pub(crate) fn auth(config: &SecretArgs) -> anyhow::Result<Auth> {
    let secret = config.resolve()?;
    let issuer = config.jwt_issuer.as_deref();
    let audience = config.jwt_audience.as_deref();
    let verifier: Arc<dyn TokenVerifier> = match &config.jwt_jwks_file {
        Some(path) => Arc::new(JwksVerifier::from_file(path, issuer, audience).map_err(anyhow::Error::msg)?),
        None => Arc::new(
            JwtTokens::hs256(secret.as_bytes()).context("the token secret is not usable")?.expecting(issuer, audience),
        ),
    };
    Ok(Auth { secret, verifier })
}
