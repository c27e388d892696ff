//! Property tests ("fuzzing") of the two token checks every request and
//! every hub connection goes through before anything else:
//! [`JwtTokens::verify`] (bearer tokens) and
//! [`SignedConnectionTokens::redeem`] (negotiated connection tokens). On any
//! string, and on any mutation of a valid token, they must not panic and
//! must not accept what the server did not sign: no forged, re-algorithmed,
//! truncated, spliced or bit-flipped token gets through.
//!
//! Case counts: `PROPTEST_CASES` (proptest's default, 256, keeps `cargo test`
//! quick); `scripts/fuzz.sh` runs these with many more. A failure is saved in
//! `crates/infrastructure/proptest-regressions/fuzz_tokens.txt` and replayed
//! first on every later run: commit that file with the fix.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use sha2::{Sha256, Sha384, Sha512};
use smartscheduler_application::{ConnectionTicket, ConnectionTokens, TokenVerifier};
use smartscheduler_domain::{ContractorId, Principal, Role};
use smartscheduler_infrastructure::{Claims, JwtTokens, SignedConnectionTokens};

/// Where failures are kept (replayed before new cases on every run).
const REGRESSIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/fuzz_tokens.txt");

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef0123456789abcdef";
const OTHER_SECRET: &[u8] = b"another-secret-0123456789abcdef0123456789abc";
/// How `SignedConnectionTokens` derives its key (domain separation).
const TICKET_KEY_PREFIX: &[u8] = b"smartscheduler/hub-connection-token/";

/// Runs `property` on values of `strategy` with the configuration from the
/// environment (`PROPTEST_CASES`...), saving failures under
/// `proptest-regressions/`, and prints how many executions ran (shrinking
/// included) for `scripts/fuzz.sh`.
fn fuzz<S: Strategy>(name: &str, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let config = Config {
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..Config::default()
    };
    let executions = AtomicU64::new(0);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |value| {
        executions.fetch_add(1, Ordering::Relaxed);
        property(value)
    });
    println!("fuzz-executions {name} {}", executions.load(Ordering::Relaxed));
    if let Err(err) = result {
        panic!("{name}: {err}");
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------
// Mutations

/// One change an attacker (or a broken proxy) can make to a token's text.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    Insert(Index, char),
    Delete(Index),
    Replace(Index, char),
    Truncate(Index),
    SwapCase(Index),
    /// Replaces segment `.0` (of the dot-separated parts) with `.1`.
    ReplaceSegment(Index, String),
    SwapSegments(Index, Index),
    DropSegment(Index),
    DuplicateSegment(Index),
    Append(String),
    Prepend(String),
    Several(Vec<Mutation>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let text_char = prop_oneof![
        4 => prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ".chars().collect::<Vec<_>>()
        ),
        1 => any::<char>(),
    ];
    let segment = prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9_-]{1,64}",
        Just(b64(br#"{"alg":"none","typ":"JWT"}"#)),
        Just(b64(br#"{"alg":"HS512","typ":"JWT"}"#)),
        Just(b64(br#"{"alg":"RS256","typ":"JWT"}"#)),
        Just(b64(br#"{"typ":"JWT","alg":"HS256"}"#)),
        Just(b64(br#"{"sub":"admin","role":"Admin","exp":9999999999}"#)),
    ];
    let leaf = prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), text_char.clone()).prop_map(|(i, c)| Mutation::Insert(i, c)),
        any::<Index>().prop_map(Mutation::Delete),
        (any::<Index>(), text_char).prop_map(|(i, c)| Mutation::Replace(i, c)),
        any::<Index>().prop_map(Mutation::Truncate),
        any::<Index>().prop_map(Mutation::SwapCase),
        (any::<Index>(), segment).prop_map(|(i, s)| Mutation::ReplaceSegment(i, s)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapSegments(a, b)),
        any::<Index>().prop_map(Mutation::DropSegment),
        any::<Index>().prop_map(Mutation::DuplicateSegment),
        prop::sample::select(vec![".", "=", "==", " ", "\n", "\0", ".x", "A", "AA", "%3D"])
            .prop_map(|s| Mutation::Append(s.to_owned())),
        prop::sample::select(vec![" ", "Bearer ", ".", "\u{feff}"]).prop_map(|s| Mutation::Prepend(s.to_owned())),
    ];
    prop_oneof![5 => leaf.clone(), 1 => prop::collection::vec(leaf, 2..5).prop_map(Mutation::Several)]
}

fn apply(token: &str, mutation: &Mutation) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let segments = || token.split('.').map(str::to_owned).collect::<Vec<_>>();
    match mutation {
        Mutation::FlipBit(i, bit) if !bytes.is_empty() => {
            let i = i.index(bytes.len());
            bytes[i] ^= 1 << bit;
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        Mutation::Insert(i, c) => {
            let mut s: Vec<char> = token.chars().collect();
            let at = i.index(s.len() + 1);
            s.insert(at, *c);
            return s.into_iter().collect();
        }
        Mutation::Delete(i) if !token.is_empty() => {
            let mut s: Vec<char> = token.chars().collect();
            s.remove(i.index(s.len()));
            return s.into_iter().collect();
        }
        Mutation::Replace(i, c) if !token.is_empty() => {
            let mut s: Vec<char> = token.chars().collect();
            let at = i.index(s.len());
            s[at] = *c;
            return s.into_iter().collect();
        }
        Mutation::Truncate(i) => {
            let s: Vec<char> = token.chars().collect();
            return s[..i.index(s.len() + 1)].iter().collect();
        }
        Mutation::SwapCase(i) if !token.is_empty() => {
            let mut s: Vec<char> = token.chars().collect();
            let at = i.index(s.len());
            s[at] = if s[at].is_ascii_lowercase() { s[at].to_ascii_uppercase() } else { s[at].to_ascii_lowercase() };
            return s.into_iter().collect();
        }
        Mutation::ReplaceSegment(i, new) => {
            let mut parts = segments();
            let at = i.index(parts.len());
            parts[at] = new.clone();
            return parts.join(".");
        }
        Mutation::SwapSegments(a, b) => {
            let mut parts = segments();
            let (a, b) = (a.index(parts.len()), b.index(parts.len()));
            parts.swap(a, b);
            return parts.join(".");
        }
        Mutation::DropSegment(i) => {
            let mut parts = segments();
            parts.remove(i.index(parts.len()));
            return parts.join(".");
        }
        Mutation::DuplicateSegment(i) => {
            let mut parts = segments();
            let at = i.index(parts.len());
            let copy = parts[at].clone();
            parts.insert(at, copy);
            return parts.join(".");
        }
        Mutation::Append(s) => return format!("{token}{s}"),
        Mutation::Prepend(s) => return format!("{s}{token}"),
        Mutation::Several(all) => return all.iter().fold(token.to_owned(), |t, m| apply(&t, m)),
        _ => {}
    }
    token.to_owned()
}

// ---------------------------------------------------------------------------
// Bearer tokens

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Admin), Just(Role::Dispatcher), Just(Role::Contractor)]
}

fn contractor_id() -> impl Strategy<Value = ContractorId> {
    any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string().parse().expect("any UUID is a ContractorId"))
}

/// Claims the service would accept: a known role, a contractor id for
/// contractors, an `exp` in the future.
fn valid_claims() -> impl Strategy<Value = Claims> {
    (any::<String>(), role(), prop::collection::vec("\\PC{0,20}", 0..4), contractor_id(), 60u64..10_000_000).prop_map(
        |(sub, role, regions, id, ttl)| Claims {
            sub,
            role: role.as_str().to_owned(),
            regions,
            contractor_id: (role == Role::Contractor).then(|| id.to_string()),
            exp: now() + ttl,
            iat: Some(now()),
            ..Claims::default()
        },
    )
}

#[test]
fn arbitrary_strings_are_never_bearer_tokens() {
    let tokens = JwtTokens::hs256(SECRET).expect("a secret");
    let text = prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_.-]{0,400}",
        "[A-Za-z0-9_-]{0,100}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,60}"
    ];
    fuzz("jwt_arbitrary_strings", text, |text| {
        prop_assert!(tokens.verify(&text).is_err(), "accepted {:?}", text);
        Ok(())
    });
}

#[test]
fn valid_bearer_tokens_round_trip_and_no_mutation_is_accepted() {
    let tokens = JwtTokens::hs256(SECRET).expect("a secret");
    fuzz("jwt_mutations", (valid_claims(), mutation()), |(claims, mutation)| {
        let token = tokens.issue(&claims).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let principal =
            tokens.verify(&token).map_err(|e| TestCaseError::fail(format!("refused a valid token: {e}")))?;
        prop_assert_eq!(&principal.subject, &claims.sub);
        prop_assert_eq!(principal.role.as_str(), claims.role.as_str());
        prop_assert_eq!(&principal.regions, &claims.regions);
        prop_assert_eq!(principal.contractor_id.map(|id| id.to_string()), claims.contractor_id.clone());
        let mutated = apply(&token, &mutation);
        if mutated != token {
            prop_assert!(tokens.verify(&mutated).is_err(), "accepted the mutated token {:?} of {:?}", mutated, token);
        }
        Ok(())
    });
}

/// How a crafted token is signed.
#[derive(Debug, Clone)]
enum Signature {
    Empty,
    Random(Vec<u8>),
    /// HMAC-SHA256 with a secret that is not the server's.
    OtherSecret,
    /// HMAC-SHA256 with the server's secret: accepted only when the header
    /// says HS256 and the claims are valid.
    RightSecret,
    /// The server's secret under HS384 / HS512 (algorithm confusion).
    Sha384,
    Sha512,
}

fn header() -> impl Strategy<Value = Value> {
    let alg = prop_oneof![
        4 => prop::sample::select(vec![
            "none", "None", "NONE", "nOnE", "HS256", "hs256", "HS384", "HS512", "RS256", "ES256", "PS256", "EdDSA", "",
        ])
        .prop_map(Value::from),
        1 => any::<String>().prop_map(Value::from),
        1 => prop_oneof![Just(Value::Null), any::<i64>().prop_map(Value::from), Just(json!(["HS256"]))],
    ];
    (
        prop::option::weighted(0.95, alg),
        prop::option::of(prop::sample::select(vec!["JWT", "jwt", "JWS", ""])),
        prop::option::of(any::<String>()),
    )
        .prop_map(|(alg, typ, kid)| {
            let mut h = Map::new();
            if let Some(alg) = alg {
                h.insert("alg".into(), alg);
            }
            if let Some(typ) = typ {
                h.insert("typ".into(), typ.into());
            }
            if let Some(kid) = kid {
                h.insert("kid".into(), kid.into());
            }
            Value::Object(h)
        })
}

fn claims_json() -> impl Strategy<Value = Value> {
    let exp = prop_oneof![
        Just(json!(now() + 3600)),
        Just(json!(now() - 3600)),
        Just(json!(0)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(1e300)),
        Just(json!("9999999999")),
        Just(Value::Null),
    ];
    let role = prop_oneof![
        prop::sample::select(vec!["Admin", "Dispatcher", "Contractor", "admin", "Root", ""]).prop_map(Value::from),
        Just(json!(["Admin"])),
        Just(Value::Null),
    ];
    let regions = prop_oneof![
        prop::collection::vec("\\PC{0,10}", 0..3).prop_map(|r| json!(r)),
        Just(json!("north")),
        Just(json!([1, 2])),
    ];
    let cid =
        prop_oneof![contractor_id().prop_map(|id| json!(id.to_string())), Just(json!("not-a-uuid")), Just(json!(42)),];
    (
        prop::option::weighted(0.9, prop_oneof![any::<String>().prop_map(Value::from), Just(json!(7))]),
        prop::option::weighted(0.9, role),
        prop::option::of(regions),
        prop::option::of(cid),
        prop::option::weighted(0.9, exp),
        prop::option::of(prop_oneof![Just(json!(now() + 3600)), Just(json!(now() - 60)), Just(json!("x"))]),
    )
        .prop_map(|(sub, role, regions, cid, exp, nbf)| {
            let mut c = Map::new();
            for (k, v) in
                [("sub", sub), ("role", role), ("regions", regions), ("contractorId", cid), ("exp", exp), ("nbf", nbf)]
            {
                if let Some(v) = v {
                    c.insert(k.into(), v);
                }
            }
            Value::Object(c)
        })
}

fn signature() -> impl Strategy<Value = Signature> {
    prop_oneof![
        1 => Just(Signature::Empty),
        1 => prop::collection::vec(any::<u8>(), 0..80).prop_map(Signature::Random),
        1 => Just(Signature::OtherSecret),
        3 => Just(Signature::RightSecret),
        1 => Just(Signature::Sha384),
        1 => Just(Signature::Sha512),
    ]
}

fn sign(input: &str, how: &Signature) -> String {
    fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], input: &str) -> Vec<u8> {
        let mut m = <M as Mac>::new_from_slice(key).expect("any key length");
        m.update(input.as_bytes());
        m.finalize().into_bytes().to_vec()
    }
    match how {
        Signature::Empty => String::new(),
        Signature::Random(bytes) => b64(bytes),
        Signature::OtherSecret => b64(&mac::<Hmac<Sha256>>(OTHER_SECRET, input)),
        Signature::RightSecret => b64(&mac::<Hmac<Sha256>>(SECRET, input)),
        Signature::Sha384 => b64(&mac::<Hmac<Sha384>>(SECRET, input)),
        Signature::Sha512 => b64(&mac::<Hmac<Sha512>>(SECRET, input)),
    }
}

/// Hand-built tokens: `alg: none`, other algorithms, other secrets, odd
/// claims. Only HS256 signed with the server's secret may ever pass.
#[test]
fn crafted_bearer_tokens_pass_only_with_hs256_and_the_secret() {
    let tokens = JwtTokens::hs256(SECRET).expect("a secret");
    fuzz("jwt_crafted", (header(), claims_json(), signature()), |(header, claims, how)| {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let token = format!("{input}.{}", sign(&input, &how));
        if let Ok(principal) = tokens.verify(&token) {
            prop_assert!(
                matches!(how, Signature::RightSecret) && header.get("alg") == Some(&json!("HS256")),
                "accepted {:?} signed {:?}",
                header,
                how
            );
            prop_assert_eq!(Some(principal.subject.as_str()), claims.get("sub").and_then(Value::as_str));
            prop_assert_eq!(Some(principal.role.as_str()), claims.get("role").and_then(Value::as_str));
            if principal.role == Role::Contractor {
                prop_assert!(principal.contractor_id.is_some());
            }
            let exp = claims.get("exp").and_then(Value::as_u64);
            prop_assert!(
                exp.is_some_and(|exp| exp.saturating_add(30) >= now()),
                "accepted an expired or exp-less token: {:?}",
                claims
            );
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// Connection tokens

fn ticket() -> impl Strategy<Value = ConnectionTicket> {
    (
        "[A-Za-z0-9_-]{1,30}|\\PC{0,30}",
        any::<String>(),
        role(),
        prop::collection::vec("\\PC{0,20}", 0..4),
        prop::option::of(contractor_id()),
        any::<bool>(),
    )
        .prop_map(|(connection_id, subject, role, regions, contractor_id, stateful)| ConnectionTicket {
            connection_id,
            principal: Principal { subject, role, regions, contractor_id },
            stateful,
            home: None,
        })
}

#[test]
fn arbitrary_strings_are_never_connection_tokens() {
    let tickets = SignedConnectionTokens::new(SECRET);
    let text = prop_oneof![any::<String>(), "[A-Za-z0-9_-]{0,600}", "[A-Za-z0-9_-]{4090,4100}"];
    fuzz("ticket_arbitrary_strings", text, |text| {
        prop_assert!(tickets.redeem(&text).is_none(), "accepted {:?}", text);
        Ok(())
    });
}

#[test]
fn connection_tokens_round_trip_and_no_mutation_is_accepted() {
    let tickets = SignedConnectionTokens::new(SECRET);
    let other_node = SignedConnectionTokens::new(SECRET);
    let other_secret = SignedConnectionTokens::new(OTHER_SECRET);
    fuzz("ticket_mutations", (ticket(), mutation()), |(ticket, mutation)| {
        let token = tickets.issue(&ticket, Duration::from_secs(15));
        prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "not URL-safe");
        prop_assert_eq!(other_node.redeem(&token), Some(ticket.clone()), "a node with the same secret redeems it");
        prop_assert_eq!(other_secret.redeem(&token), None);
        let mutated = apply(&token, &mutation);
        if mutated != token {
            prop_assert_eq!(tickets.redeem(&mutated), None, "accepted the mutated token {:?}", mutated);
        }
        Ok(())
    });
}

/// Bytes laid out like a connection token (a 32-byte tag, then JSON): with a
/// random tag, another secret's tag, or the right tag over odd JSON (what a
/// leaked key could make), redeem never panics; only the right tag over a
/// well-formed, unexpired ticket is accepted.
#[test]
fn crafted_connection_tokens_pass_only_with_the_right_tag_and_valid_fields() {
    let tickets = SignedConnectionTokens::new(SECRET);
    let expiry = prop_oneof![
        Just(json!(u64::MAX)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!("soon")),
        Just(json!((now() + 60) * 1000)),
    ];
    let body = (
        prop::option::weighted(0.9, prop_oneof![any::<String>().prop_map(Value::from), Just(json!(1))]),
        prop::option::weighted(0.9, prop_oneof![any::<bool>().prop_map(Value::from), Just(json!("true"))]),
        prop::option::weighted(0.9, expiry),
        prop::option::weighted(0.9, any::<String>().prop_map(Value::from)),
        prop::option::weighted(
            0.9,
            prop::sample::select(vec!["Admin", "Dispatcher", "Contractor", "root", ""]).prop_map(Value::from),
        ),
        prop::option::of(prop_oneof![Just(json!(["north"])), Just(json!("north")), Just(Value::Null)]),
        prop::option::of(prop_oneof![
            contractor_id().prop_map(|id| json!(id.to_string())),
            Just(json!("nope")),
            Just(Value::Null)
        ]),
    )
        .prop_map(|(c, s, e, sub, role, regions, cid)| {
            let mut w = Map::new();
            for (k, v) in
                [("c", c), ("s", s), ("e", e), ("sub", sub), ("role", role), ("regions", regions), ("cid", cid)]
            {
                if let Some(v) = v {
                    w.insert(k.into(), v);
                }
            }
            serde_json::to_vec(&Value::Object(w)).expect("serializes")
        });
    let json = prop_oneof![4 => body, 1 => prop::collection::vec(any::<u8>(), 0..200)];
    // 0: the right key; 1: another secret; 2: the bare secret, without the
    // domain-separation prefix; 3: random bytes.
    let tag = prop_oneof![Just(0u8), Just(1u8), Just(2u8), Just(3u8)];
    fuzz("ticket_crafted", (json, tag, prop::collection::vec(any::<u8>(), 32)), |(json, tag, random)| {
        let key = |prefix: bool, secret: &[u8]| {
            let mut key = if prefix { TICKET_KEY_PREFIX.to_vec() } else { Vec::new() };
            key.extend_from_slice(secret);
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
            mac.update(&json);
            mac.finalize().into_bytes().to_vec()
        };
        let mut bytes = match tag {
            0 => key(true, SECRET),
            1 => key(true, OTHER_SECRET),
            2 => key(false, SECRET),
            _ => random,
        };
        bytes.extend_from_slice(&json);
        if let Some(ticket) = tickets.redeem(&b64(&bytes)) {
            prop_assert_eq!(tag, 0, "accepted a token without the right tag");
            let wire: Value = serde_json::from_slice(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(wire["e"].as_u64().is_some_and(|e| e > (now() - 1) * 1000), "accepted an expired ticket");
            prop_assert_eq!(Some(ticket.principal.role.as_str()), wire["role"].as_str());
        }
        Ok(())
    });
}
