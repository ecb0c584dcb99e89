//! Internal callers: who is calling (authentication) and what it may do (policy).
//!
//! Sits after routing and before anything costly: a missing or unknown credential is 401, an
//! operation outside the caller's policy or an X-Partner it does not own is 403, and neither
//! reaches Ratepay. A caller presents `Authorization: Bearer <credential>`, either a static API
//! key (kept only as its SHA-256) or a JWT issued by the gateway's own `/oauth/token`
//! ([`issuer`]), or, on an mTLS listener, a client certificate whose SPIFFE ID or DNS SAN is
//! configured for it ([`Callers::authenticate_with_peer`] has the rule when both are present).

pub mod issuer;

use std::{collections::HashMap, fmt, sync::Arc};

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::{
    config::{sha256, CallersConfig, OperationMatcher, PartnerPolicy},
    error::GatewayError,
    routes::Operation,
    tls::{CertIdentity, PeerIdentity},
};
pub use issuer::Issuer;

/// One internal caller and its policy.
pub struct Caller {
    /// Name from the configuration.
    pub name: Arc<str>,
    operations: OperationMatcher,
    partner: PartnerPolicy,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// Whether the policy allows `op`.
    pub fn may_call(&self, op: &Operation) -> bool {
        self.operations.allows(op)
    }

    /// The X-Partner to send, given what the caller asked for with its own header.
    pub fn partner_for(&self, requested: Option<&str>) -> Result<Option<Arc<str>>, GatewayError> {
        match (&self.partner, requested) {
            (PartnerPolicy::None, None) => Ok(None),
            (PartnerPolicy::None, Some(_)) => Err(GatewayError::PartnerNotAllowed(format!(
                "caller '{}' acts for no X-Partner; remove the X-Partner header",
                self.name
            ))),
            (PartnerPolicy::Fixed(p), None) => Ok(Some(Arc::from(p.as_str()))),
            (PartnerPolicy::Fixed(p), Some(r)) if r == p => Ok(Some(Arc::from(p.as_str()))),
            (PartnerPolicy::Fixed(_), Some(_)) => Err(GatewayError::PartnerNotAllowed(format!(
                "caller '{}' has a fixed X-Partner set by the gateway; remove the X-Partner header",
                self.name
            ))),
            (PartnerPolicy::OneOf(ps), Some(r)) if ps.iter().any(|p| p == r) => Ok(Some(Arc::from(r))),
            (PartnerPolicy::OneOf(_), Some(_)) => Err(GatewayError::PartnerNotAllowed(format!(
                "caller '{}' may not act for this X-Partner; use one of the partners configured for it",
                self.name
            ))),
            (PartnerPolicy::OneOf(ps), None) => Err(GatewayError::PartnerRequired(format!(
                "caller '{}' must choose its partner with an X-Partner header, one of: {}",
                self.name,
                ps.join(", ")
            ))),
        }
    }
}

/// The caller registry: API-key hashes, internal OAuth clients and the JWT issuer.
pub struct Callers {
    by_key_hash: HashMap<[u8; 32], Arc<Caller>>,
    by_name: HashMap<String, Arc<Caller>>,
    clients: HashMap<String, ([u8; 32], Arc<Caller>)>,
    by_cert: HashMap<CertIdentity, Arc<Caller>>,
    issuer: Option<Issuer>,
    audiences: Vec<String>,
}

impl fmt::Debug for Callers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Callers")
            .field("callers", &self.by_name.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Callers {
    /// Builds the registry from its configuration section.
    pub fn new(config: &CallersConfig) -> Result<Callers, GatewayError> {
        let mut c = Callers {
            by_key_hash: HashMap::new(),
            by_name: HashMap::new(),
            clients: HashMap::new(),
            by_cert: HashMap::new(),
            issuer: config.issuer.as_ref().map(Issuer::new),
            audiences: config.audiences.clone(),
        };
        for cc in &config.callers {
            let caller = Arc::new(Caller {
                name: Arc::from(cc.name.as_str()),
                operations: cc.operations.clone(),
                partner: cc.partner.clone(),
            });
            if let Some(h) = cc.api_key_sha256 {
                c.by_key_hash.insert(h, caller.clone());
            }
            if let Some((id, secret_hash)) = &cc.client {
                c.clients.insert(id.clone(), (*secret_hash, caller.clone()));
            }
            for id in &cc.client_cert {
                c.by_cert.insert(id.clone(), caller.clone());
            }
            c.by_name.insert(cc.name.clone(), caller);
        }
        Ok(c)
    }

    /// Authenticates the caller from its `Authorization` header, for a route with `audience`.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        audience: &str,
    ) -> Result<Arc<Caller>, GatewayError> {
        self.authenticate_with_peer(headers, None, audience)
    }

    /// Authenticates the caller from the connection's verified client certificate (`peer`, on
    /// an mTLS listener) and the `Authorization` header.
    ///
    /// The rule: a certificate identity that maps to a caller identifies it; an `Authorization`
    /// header sent as well must authenticate the same caller (401 `credential-conflict`
    /// otherwise). A certificate that maps to no caller leaves the header to decide; without a
    /// header that is 401 `unknown-client-certificate`, naming the identities presented.
    pub fn authenticate_with_peer(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerIdentity>,
        audience: &str,
    ) -> Result<Arc<Caller>, GatewayError> {
        // No certificate (plain TCP, TLS without mTLS, or `optional`): exactly the header path.
        let Some(peer) = peer else {
            return self.authenticate_header(headers, audience);
        };
        let has_header = headers.contains_key(http::header::AUTHORIZATION);
        match self.caller_for_certificate(peer)? {
            Some(cert_caller) if !has_header => Ok(cert_caller),
            Some(cert_caller) => {
                let header_caller = self.authenticate_header(headers, audience)?;
                if header_caller.name == cert_caller.name {
                    Ok(cert_caller)
                } else {
                    Err(GatewayError::CredentialConflict(format!(
                        "the client certificate identifies caller '{}' but the Authorization header authenticates caller '{}'; send one credential, or both for the same caller",
                        cert_caller.name, header_caller.name
                    )))
                }
            }
            None if !has_header => Err(GatewayError::UnknownCertificate(format!(
                "the client certificate presented ({}) maps to no configured caller; add its identity to a caller's client_cert, or send 'Authorization: Bearer <credential>'",
                peer.describe()
            ))),
            None => self.authenticate_header(headers, audience),
        }
    }

    /// The caller the certificate's identities map to; an error when they map to two callers.
    fn caller_for_certificate(
        &self,
        peer: &PeerIdentity,
    ) -> Result<Option<Arc<Caller>>, GatewayError> {
        if self.by_cert.is_empty() {
            return Ok(None);
        }
        let mut found: Option<&Arc<Caller>> = None;
        for id in &peer.identities {
            if let Some(c) = self.by_cert.get(id) {
                match found {
                    Some(f) if f.name != c.name => {
                        return Err(GatewayError::CredentialConflict(format!(
                            "the client certificate carries identities of two callers, '{}' and '{}'; issue one certificate per caller",
                            f.name, c.name
                        )))
                    }
                    _ => found = Some(c),
                }
            }
        }
        Ok(found.cloned())
    }

    fn authenticate_header(
        &self,
        headers: &HeaderMap,
        audience: &str,
    ) -> Result<Arc<Caller>, GatewayError> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(GatewayError::Unauthenticated(
                "missing Authorization header; send 'Authorization: Bearer <your gateway API key or gateway token>'",
            ))?;
        let credential = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|c| !c.is_empty())
            .ok_or(GatewayError::Unauthenticated(
                "the Authorization header must be 'Bearer <credential>'",
            ))?;
        // Gateway JWTs have three dot-separated parts; API keys are opaque strings.
        if credential.matches('.').count() == 2 {
            if let Some(issuer) = &self.issuer {
                let sub = issuer.verify(credential, audience)?;
                return self
                    .by_name
                    .get(&sub)
                    .cloned()
                    .ok_or(GatewayError::Unauthenticated(
                        "the gateway token names a caller that is no longer configured",
                    ));
            }
        }
        self.by_key_hash
            .get(&sha256(credential.as_bytes()))
            .cloned()
            .ok_or(GatewayError::Unauthenticated(
                "unknown credential; check the API key or fetch a new gateway token",
            ))
    }

    /// Authenticates the internal OAuth client of a `POST /oauth/token` body (Ratepay's
    /// protocol: `client_id`, `client_secret`, `audience`, `grant_type=client_credentials`).
    /// The grant names the caller, so the caller's rate limit applies before a token is issued.
    pub fn authenticate_client(&self, body: &[u8]) -> Result<ClientGrant, GatewayError> {
        if self.issuer.is_none() {
            return Err(GatewayError::InvalidClient(
                "this gateway issues no tokens; use an API key",
            ));
        }
        let req: TokenRequest = serde_json::from_slice(body).map_err(|_| {
            GatewayError::BadRequest(
                "expected a JSON body {\"client_id\", \"client_secret\", \"audience\", \"grant_type\": \"client_credentials\"}".into(),
            )
        })?;
        if req.grant_type != "client_credentials" {
            return Err(GatewayError::BadRequest(
                "grant_type must be \"client_credentials\"".into(),
            ));
        }
        if !self.audiences.contains(&req.audience) {
            return Err(GatewayError::BadRequest(format!(
                "unknown audience; expected one of: {}",
                self.audiences.join(", ")
            )));
        }
        let (hash, caller) =
            self.clients
                .get(&req.client_id)
                .ok_or(GatewayError::InvalidClient(
                    "unknown client_id or wrong client_secret",
                ))?;
        if !bool::from(hash.ct_eq(&sha256(req.client_secret.as_bytes()))) {
            return Err(GatewayError::InvalidClient(
                "unknown client_id or wrong client_secret",
            ));
        }
        Ok(ClientGrant {
            caller: caller.clone(),
            audience: req.audience,
        })
    }

    /// Issues the token of an authenticated grant; Ratepay's response shape.
    pub fn issue_token(&self, grant: &ClientGrant) -> Result<serde_json::Value, GatewayError> {
        let issuer = self.issuer.as_ref().ok_or(GatewayError::InvalidClient(
            "this gateway issues no tokens; use an API key",
        ))?;
        let (token, expires_in) = issuer.issue(&grant.caller.name, &grant.audience)?;
        Ok(serde_json::json!({
            "access_token": token,
            "expires_in": expires_in,
            "token_type": "Bearer",
        }))
    }
}

/// An internal OAuth client that proved its secret: who it is and for which audience.
#[derive(Debug, Clone)]
pub struct ClientGrant {
    /// The caller the client belongs to.
    pub caller: Arc<Caller>,
    /// The audience the token is for.
    pub audience: String,
}

#[derive(serde::Deserialize)]
struct TokenRequest {
    client_id: String,
    client_secret: String,
    audience: String,
    grant_type: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes;

    fn caller(ops: &[&str], partner: PartnerPolicy) -> Caller {
        Caller {
            name: "svc".into(),
            operations: OperationMatcher::parse(ops).unwrap(),
            partner,
        }
    }

    fn registry() -> Callers {
        use crate::config::{sha256, CallerConfig};
        let caller = |name: &str, key: &[u8], ids: &[&str]| CallerConfig {
            name: name.into(),
            api_key_sha256: Some(sha256(key)),
            client: None,
            operations: OperationMatcher::all(),
            partner: PartnerPolicy::None,
            client_cert: ids
                .iter()
                .map(|i| CertIdentity::parse(i).unwrap())
                .collect(),
        };
        Callers::new(&CallersConfig {
            callers: vec![
                caller(
                    "a",
                    b"key-a",
                    &["spiffe://example.org/sa/a", "dns:a.internal"],
                ),
                caller("b", b"key-b", &["dns:b.internal"]),
            ],
            issuer: None,
            audiences: vec![],
        })
        .unwrap()
    }

    fn peer(ids: &[&str]) -> PeerIdentity {
        PeerIdentity {
            identities: ids
                .iter()
                .map(|i| CertIdentity::parse(i).unwrap())
                .collect(),
        }
    }

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn certificate_identity_and_header_rule() {
        let c = registry();
        let none = HeaderMap::new();
        let auth = |h: &HeaderMap, p: Option<&PeerIdentity>| {
            c.authenticate_with_peer(h, p, "aud")
                .map(|c| c.name.to_string())
        };
        let a_cert = peer(&["spiffe://example.org/sa/a"]);
        assert_eq!(auth(&none, Some(&a_cert)).unwrap(), "a");
        assert_eq!(auth(&bearer("key-a"), Some(&a_cert)).unwrap(), "a");
        assert!(matches!(
            auth(&bearer("key-b"), Some(&a_cert)),
            Err(GatewayError::CredentialConflict(_))
        ));
        assert!(matches!(
            auth(&bearer("wrong"), Some(&a_cert)),
            Err(GatewayError::Unauthenticated(_))
        ));
        assert_eq!(auth(&none, Some(&peer(&["dns:b.internal"]))).unwrap(), "b");

        let stranger = peer(&["dns:x.internal", "spiffe://example.org/sa/x"]);
        match auth(&none, Some(&stranger)) {
            Err(GatewayError::UnknownCertificate(m)) => {
                assert!(
                    m.contains("dns:x.internal, spiffe://example.org/sa/x"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(auth(&bearer("key-b"), Some(&stranger)).unwrap(), "b");

        // One certificate carrying two callers' identities identifies neither.
        assert!(matches!(
            auth(&none, Some(&peer(&["dns:a.internal", "dns:b.internal"]))),
            Err(GatewayError::CredentialConflict(_))
        ));
        // Two identities of the same caller are fine.
        assert_eq!(
            auth(
                &none,
                Some(&peer(&["dns:a.internal", "spiffe://example.org/sa/a"]))
            )
            .unwrap(),
            "a"
        );
        // Without a certificate, exactly as before.
        assert_eq!(auth(&bearer("key-a"), None).unwrap(), "a");
        assert!(matches!(
            auth(&none, None),
            Err(GatewayError::Unauthenticated(_))
        ));
    }

    #[test]
    fn operation_patterns() {
        let c = caller(
            &["hpp.session_records.*", "payment.cancellations.create"],
            PartnerPolicy::None,
        );
        let get = routes::operation("hpp.session_records.get").unwrap();
        let cancel = routes::operation("payment.cancellations.create").unwrap();
        let refund = routes::operation("payment.refunds.create").unwrap();
        assert!(c.may_call(get));
        assert!(c.may_call(cancel));
        assert!(!c.may_call(refund));
    }

    #[test]
    fn partner_policies() {
        let fixed = caller(&["*"], PartnerPolicy::Fixed("p1".into()));
        assert_eq!(fixed.partner_for(None).unwrap().as_deref(), Some("p1"));
        assert_eq!(
            fixed.partner_for(Some("p1")).unwrap().as_deref(),
            Some("p1")
        );
        assert!(matches!(
            fixed.partner_for(Some("p2")),
            Err(GatewayError::PartnerNotAllowed(_))
        ));

        let list = caller(&["*"], PartnerPolicy::OneOf(vec!["a".into(), "b".into()]));
        assert_eq!(list.partner_for(Some("b")).unwrap().as_deref(), Some("b"));
        assert!(matches!(
            list.partner_for(Some("c")),
            Err(GatewayError::PartnerNotAllowed(_))
        ));
        assert!(matches!(
            list.partner_for(None),
            Err(GatewayError::PartnerRequired(_))
        ));

        let none = caller(&["*"], PartnerPolicy::None);
        assert_eq!(none.partner_for(None).unwrap(), None);
        assert!(none.partner_for(Some("x")).is_err());
    }
}
