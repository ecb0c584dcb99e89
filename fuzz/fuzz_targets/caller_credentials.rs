//! The caller credential parser (`Callers::authenticate`: `Authorization: Bearer <API key |
//! gateway JWT>`) and the gateway's own token endpoint body (`Callers::authenticate_client`,
//! then `Callers::issue_token`).
//!
//! The registry is small and fixed: callers `a` and `b` with API keys, an HS256 issuer, and an
//! OAuth client for `a`. Inputs are raw header bytes, a credential after `Bearer `, a mutated
//! valid token, or a `/oauth/token` body. Invariants: never panics; a credential authenticates
//! only as the caller whose key it is, or (with exactly two dots) through a JWT issued for that
//! audience; a token that `issue_token` hands out authenticates its caller for its audience.
#![no_main]

use std::{sync::OnceLock, time::Duration};

use http::{header::AUTHORIZATION, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use ratepay_gateway::{
    callers::Callers,
    config::{
        sha256, CallerConfig, CallersConfig, IssuerConfig, OperationMatcher, PartnerPolicy,
        SigningKey,
    },
};

const AUDIENCES: [&str; 3] = ["aud-payment", "aud-hpp", "aud-other"];

struct Fixture {
    callers: Callers,
    /// A valid token for caller `a` and `aud-payment`.
    token: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let caller = |name: &str, key: &[u8], client: Option<(&str, &[u8])>| CallerConfig {
            name: name.into(),
            api_key_sha256: Some(sha256(key)),
            client: client.map(|(id, secret)| (id.to_owned(), sha256(secret))),
            operations: OperationMatcher::all(),
            partner: PartnerPolicy::None,
            client_cert: vec![],
        };
        let callers = Callers::new(&CallersConfig {
            callers: vec![
                caller("a", b"key-a", Some(("client-a", b"secret-a"))),
                caller("b", b"key-b", None),
            ],
            issuer: Some(IssuerConfig {
                key: SigningKey::hs256("k".repeat(32).as_bytes()),
                issuer: "gw".into(),
                lifetime: Duration::from_secs(3600),
            }),
            audiences: vec![AUDIENCES[0].into(), AUDIENCES[1].into()],
        })
        .unwrap();
        let issued = token_response(
            &callers,
            br#"{"client_id":"client-a","client_secret":"secret-a","audience":"aud-payment","grant_type":"client_credentials"}"#,
        )
        .unwrap();
        let token = issued["access_token"].as_str().unwrap().to_owned();
        Fixture { callers, token }
    })
}

/// What `POST /oauth/token` answers for `body`: the client authenticated, then its token issued.
fn token_response(
    callers: &Callers,
    body: &[u8],
) -> Result<serde_json::Value, ratepay_gateway::error::GatewayError> {
    callers.issue_token(&callers.authenticate_client(body)?)
}

/// The credential as the gateway's rule reads it: `Bearer` (any case), one space, trimmed rest.
fn credential(v: &HeaderValue) -> Option<&str> {
    let (scheme, rest) = v.to_str().ok()?.split_once(' ')?;
    let c = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !c.is_empty()).then_some(c)
}

fn check_header(f: &Fixture, value: &[u8], audience: &str) {
    let Ok(v) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, v.clone());
    let got = f.callers.authenticate(&h, audience);
    let Ok(caller) = got else {
        return;
    };
    let c = credential(&v).expect("authenticated without a well-formed Bearer credential");
    match c {
        "key-a" => assert_eq!(&*caller.name, "a"),
        "key-b" => assert_eq!(&*caller.name, "b"),
        jwt => {
            assert_eq!(
                jwt.matches('.').count(),
                2,
                "unknown credential accepted: {jwt:?}"
            );
            assert_ne!(
                audience, "aud-other",
                "a JWT passed for an audience never issued"
            );
            assert_eq!(&*caller.name, "a", "only `a` has tokens");
            assert_eq!(
                audience, "aud-payment",
                "the token was issued for aud-payment"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let audience = AUDIENCES[usize::from(mode >> 4) % AUDIENCES.len()];
    match mode % 4 {
        0 => check_header(f, rest, audience),
        1 => {
            let mut v = b"Bearer ".to_vec();
            v.extend_from_slice(rest);
            check_header(f, &v, audience);
        }
        2 => {
            // A valid token with a few bytes overwritten (pairs of position, byte).
            let mut t = format!("Bearer {}", f.token).into_bytes();
            for pair in rest.chunks_exact(2) {
                let at = 7 + usize::from(pair[0]) * (t.len() - 7) / 256;
                t[at] = pair[1];
            }
            check_header(f, &t, audience);
        }
        _ => {
            let Ok(resp) = token_response(&f.callers, rest) else {
                return;
            };
            let token = resp["access_token"]
                .as_str()
                .expect("access_token is a string");
            assert_eq!(resp["token_type"], "Bearer");
            assert_eq!(resp["expires_in"], 3600);
            let req: serde_json::Value = serde_json::from_slice(rest).unwrap();
            let aud = req["audience"].as_str().unwrap();
            let mut h = HeaderMap::new();
            h.insert(
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
            let caller = f
                .callers
                .authenticate(&h, aud)
                .expect("an issued token authenticates");
            assert_eq!(&*caller.name, "a");
            let other = AUDIENCES.iter().find(|a| **a != aud).unwrap();
            assert!(
                f.callers.authenticate(&h, other).is_err(),
                "token valid for another audience"
            );
        }
    }
});
