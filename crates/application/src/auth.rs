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

/// What a hub connection token carries: issued by negotiate on any node,
/// accepted by the WebSocket on any node (no sticky sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionTicket {
    /// The public connection id.
    pub connection_id: String,
    /// Who negotiated.
    pub principal: Principal,
    /// Whether stateful reconnect was negotiated.
    pub stateful: bool,
    /// The URL of the node that negotiated it, with several nodes: its Long
    /// Polling and SSE requests are served there (another node forwards them).
    pub home: Option<String>,
}

/// Longest hub connection token, in characters (docs/security.md). A token
/// embeds the principal: negotiate refuses to hand out a longer one, and
/// `redeem` refuses a longer one before any work on it.
pub const MAX_CONNECTION_TOKEN_LEN: usize = 4096;

/// Issues and redeems signed, short-lived hub connection tokens.
pub trait ConnectionTokens: Send + Sync {
    /// A URL-safe token (`[A-Za-z0-9_-]`) for `ticket`, valid for `ttl`.
    fn issue(&self, ticket: &ConnectionTicket, ttl: std::time::Duration) -> String;
    /// The ticket, or `None` when the token is forged, malformed, expired or
    /// longer than [`MAX_CONNECTION_TOKEN_LEN`].
    fn redeem(&self, token: &str) -> Option<ConnectionTicket>;
    /// The home node of a genuine token, expired or not (its connection
    /// outlives the token's expiry); `None` for a forged or malformed one,
    /// or one without a home.
    fn home(&self, token: &str) -> Option<String>;
}
