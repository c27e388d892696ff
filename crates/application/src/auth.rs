//! The token verifier port: turns a bearer token into a [`Principal`].

use smartscheduler_domain::Principal;

/// Why a token was refused. The text is safe to show the caller; it never
/// contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token at all.
    #[error("a bearer token is required")]
    Missing,
    /// Bad signature, wrong algorithm, malformed, or missing claims.
    #[error("the token is not valid: {0}")]
    Invalid(String),
    /// Past its `exp`.
    #[error("the token has expired")]
    Expired,
}

/// Verifies bearer tokens.
pub trait TokenVerifier: Send + Sync {
    /// The principal the token speaks for.
    ///
    /// # Errors
    /// [`AuthError`] when the token is not acceptable.
    fn verify(&self, token: &str) -> Result<Principal, AuthError>;
}
