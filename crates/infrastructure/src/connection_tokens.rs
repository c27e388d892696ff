//! Hub connection tokens: HMAC-SHA256-signed, short-lived, self-contained
//! tickets, so a token negotiated on one node is accepted by the WebSocket
//! on any other (no sticky sessions, no shared store).
//!
//! Layout: base64url(no padding) of `mac[32] || json`, where json is the
//! ticket and its expiry; URL-safe without encoding, as the SignalR client
//! appends it to the URL unencoded.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use smartscheduler_application::{ConnectionTicket, ConnectionTokens, MAX_CONNECTION_TOKEN_LEN};
use smartscheduler_domain::{ContractorId, Principal, Role};

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks connection tokens with a key derived from the secret.
#[derive(Clone)]
pub struct SignedConnectionTokens {
    key: Vec<u8>,
}

impl std::fmt::Debug for SignedConnectionTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignedConnectionTokens { .. }")
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    /// Connection id.
    c: String,
    /// Stateful reconnect.
    s: bool,
    /// Expiry, milliseconds since the epoch.
    e: u64,
    sub: String,
    role: String,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    cid: Option<String>,
    /// The home node's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    h: Option<String>,
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl SignedConnectionTokens {
    /// Tokens keyed by `secret` (domain-separated from bearer tokens).
    pub fn new(secret: &[u8]) -> Self {
        let mut key = b"smartscheduler/hub-connection-token/".to_vec();
        key.extend_from_slice(secret);
        Self { key }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    /// The wire form of a token whose signature holds, expired or not.
    fn open(&self, token: &str) -> Option<Wire> {
        if token.len() > MAX_CONNECTION_TOKEN_LEN {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
        if bytes.len() <= 32 {
            return None;
        }
        let (tag, json) = bytes.split_at(32);
        let mut mac = self.mac();
        mac.update(json);
        mac.verify_slice(tag).ok()?;
        serde_json::from_slice(json).ok()
    }
}

impl ConnectionTokens for SignedConnectionTokens {
    fn issue(&self, ticket: &ConnectionTicket, ttl: Duration) -> String {
        let wire = Wire {
            c: ticket.connection_id.clone(),
            s: ticket.stateful,
            e: now_millis() + ttl.as_millis() as u64,
            sub: ticket.principal.subject.clone(),
            role: ticket.principal.role.as_str().to_owned(),
            regions: ticket.principal.regions.clone(),
            cid: ticket.principal.contractor_id.map(|id| id.to_string()),
            h: ticket.home.clone(),
        };
        let json = serde_json::to_vec(&wire).expect("a ticket serializes");
        let mut mac = self.mac();
        mac.update(&json);
        let mut bytes = mac.finalize().into_bytes().to_vec();
        bytes.extend_from_slice(&json);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn redeem(&self, token: &str) -> Option<ConnectionTicket> {
        let wire = self.open(token)?;
        if wire.e < now_millis() {
            return None;
        }
        let contractor_id = match wire.cid {
            Some(id) => Some(id.parse::<ContractorId>().ok()?),
            None => None,
        };
        Some(ConnectionTicket {
            connection_id: wire.c,
            principal: Principal {
                subject: wire.sub,
                role: Role::parse(&wire.role)?,
                regions: wire.regions,
                contractor_id,
            },
            stateful: wire.s,
            home: wire.h,
        })
    }

    fn home(&self, token: &str) -> Option<String> {
        self.open(token)?.h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> ConnectionTicket {
        ConnectionTicket {
            connection_id: "abc".into(),
            principal: Principal {
                subject: "d1".into(),
                role: Role::Dispatcher,
                regions: vec!["north".into()],
                contractor_id: None,
            },
            stateful: true,
            home: Some("http://10.0.0.1:8080".into()),
        }
    }

    #[test]
    fn the_home_of_a_genuine_token_is_read_even_after_it_expired_and_never_of_a_forged_one() {
        let tokens = SignedConnectionTokens::new(b"secret");
        let expired = tokens.issue(&ticket(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(tokens.redeem(&expired), None);
        assert_eq!(tokens.home(&expired).as_deref(), Some("http://10.0.0.1:8080"));
        assert_eq!(SignedConnectionTokens::new(b"other").home(&expired), None, "forged");
        let homeless = tokens.issue(&ConnectionTicket { home: None, ..ticket() }, Duration::from_secs(15));
        assert_eq!(tokens.home(&homeless), None);
        assert_eq!(tokens.redeem(&homeless).unwrap().home, None);
    }

    #[test]
    fn a_token_from_one_node_is_redeemed_by_another_with_the_same_secret() {
        let node_a = SignedConnectionTokens::new(b"secret");
        let node_b = SignedConnectionTokens::new(b"secret");
        let token = node_a.issue(&ticket(), Duration::from_secs(15));
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{token}");
        assert_eq!(node_b.redeem(&token), Some(ticket()));
    }

    #[test]
    fn forged_tampered_expired_and_garbage_tokens_are_refused() {
        let tokens = SignedConnectionTokens::new(b"secret");
        let token = tokens.issue(&ticket(), Duration::from_secs(15));
        assert_eq!(SignedConnectionTokens::new(b"other").redeem(&token), None);
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(tokens.redeem(&tampered), None);
        let expired = tokens.issue(&ticket(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(tokens.redeem(&expired), None);
        for garbage in ["", "x", "!!!", &"A".repeat(5000)] {
            assert_eq!(tokens.redeem(garbage), None);
        }
    }

    /// A ticket whose token is exactly `len` characters long (the subject pads it).
    fn token_of_len(tokens: &SignedConnectionTokens, len: usize) -> String {
        let mut ticket = ticket();
        for pad in 0..len {
            ticket.principal.subject = "s".repeat(pad);
            let token = tokens.issue(&ticket, Duration::from_secs(15));
            if token.len() >= len {
                assert_eq!(token.len(), len, "base64 without padding has no token of {len} characters");
                return token;
            }
        }
        unreachable!()
    }

    #[test]
    fn tokens_are_capped_at_4096_characters() {
        let tokens = SignedConnectionTokens::new(b"secret");
        assert!(tokens.redeem(&token_of_len(&tokens, 4096)).is_some(), "4,096 characters are accepted");
        // Base64 without padding has no 4,097-character encoding: past the
        // cap a signed token is at least 4,098 long, and 4,097 is junk.
        assert_eq!(tokens.redeem(&token_of_len(&tokens, 4098)), None, "a signed token past the cap");
        let junk = format!("{}A", token_of_len(&tokens, 4096));
        assert_eq!(junk.len(), 4097);
        assert_eq!(tokens.redeem(&junk), None, "4,097 characters are refused");
    }
}
