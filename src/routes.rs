//! The Ratepay route table: which (method, path) pairs exist, their operation names, and which
//! upstream API serves them.
//!
//! This is the allowlist that sits right after the edge in the flow: a request whose path is
//! malformed is refused with 400 ([`PathError`]), one that names no known operation gets 404,
//! both before any authentication or upstream work. The sandbox uses the same table to name the
//! operations it counts, so the gateway and the simulator always agree on names.

use http::{HeaderMap, HeaderName, Method};

/// `Idempotency-Key`.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The three Ratepay APIs the gateway fronts (the OAuth server is reached by the token source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    /// Payment API v2, including the One Time Passcode endpoints.
    Payment,
    /// Transaction Status API.
    Status,
    /// Hosted Payment Page.
    Hpp,
}

impl Api {
    /// All APIs, in a stable order.
    pub const ALL: [Api; 3] = [Api::Payment, Api::Status, Api::Hpp];

    /// The name used in configuration (`[upstreams.<name>]`), logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Api::Payment => "payment",
            Api::Status => "status",
            Api::Hpp => "hpp",
        }
    }

    /// Parses a configuration name.
    pub fn from_name(name: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// One segment of a path pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    Lit(&'static str),
    /// `ratepay_transaction_id`.
    Transaction,
    /// A follow-up resource id (authorization, capture, refund, cancellation).
    Resource,
    /// An HPP session id.
    Session,
}

use OperationId as Id;
use Seg::{Lit, Resource, Session, Transaction};

/// Which operation a route names, as a value to match on: code that answers each operation in
/// its own way (the sandbox) matches on this, exhaustively, instead of taking names apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationId {
    /// `payment.transactions.create`: authorize a new transaction.
    TransactionsCreate,
    /// `payment.transactions.get`.
    TransactionsGet,
    /// `payment.transactions.update` (PATCH).
    TransactionsUpdate,
    /// `payment.<follow-ups>.create`.
    FollowUpsCreate(FollowUpKind),
    /// `payment.<follow-ups>.list`.
    FollowUpsList(FollowUpKind),
    /// `payment.<follow-ups>.get`.
    FollowUpsGet(FollowUpKind),
    /// `payment.shipping_information.create`.
    ShippingInformationCreate,
    /// `payment.otp.verify`.
    OtpVerify,
    /// `payment.otp.regenerate`.
    OtpRegenerate,
    /// `status.transactions.get`.
    StatusTransactionsGet,
    /// `hpp.sessions.create`.
    HppSessionsCreate,
    /// `hpp.session_records.list`.
    HppSessionRecordsList,
    /// `hpp.session_records.get`.
    HppSessionRecordsGet,
    /// `gateway.oauth.token`, the gateway's own token endpoint (never forwarded).
    GatewayOauthToken,
}

/// The follow-up resources of a Payment API transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FollowUpKind {
    /// `authorizations` (incremental authorizations).
    Authorization,
    /// `captures`.
    Capture,
    /// `refunds`.
    Refund,
    /// `cancellations`.
    Cancellation,
}

/// A named Ratepay operation the gateway may forward.
#[derive(Debug)]
pub struct Operation {
    /// Stable name, e.g. `payment.cancellations.create`.
    pub name: &'static str,
    /// The same operation as a value to match on.
    pub id: OperationId,
    /// HTTP method.
    pub method: Method,
    /// The API that serves it.
    pub api: Api,
    /// How the operation carries an `Idempotency-Key`; see [`Keys`].
    pub keys: Keys,
    pattern: &'static [Seg],
}

/// The one rule for `Idempotency-Key` on every operation: which carry one, and so which may
/// be sent more than once. A key that reaches Ratepay is always the caller-scoped form
/// (`hex(SHA-256("<caller>:<key>"))`), never the caller's own text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// Payment API creating POSTs: the caller's key is validated, or one is generated; scoped,
    /// coalesced, replayed; the call is retried (Ratepay executes a keyed call once).
    Generated,
    /// HPP session creation: Ratepay derives a key from the payload unless a key is sent. A
    /// caller's key is validated, scoped and handled as for `Generated` (and the call retried);
    /// without one nothing is generated and the call is not retried.
    CallerOptional,
    /// Everything else (GET, PATCH, OTP): no key. A caller's `Idempotency-Key` is removed
    /// before anything else sees it; GETs are retried, the other methods never.
    None,
}

impl Keys {
    /// Whether a request with `headers` is keyed: the idempotency layer scopes, coalesces and
    /// stores it (a generated key, or the caller's on HPP session creation).
    pub fn keyed(self, headers: &HeaderMap) -> bool {
        match self {
            Keys::Generated => true,
            Keys::CallerOptional => headers.contains_key(&IDEMPOTENCY_KEY),
            Keys::None => false,
        }
    }
}

impl Operation {
    /// A Payment API POST that creates a resource and therefore always carries an
    /// `Idempotency-Key` (`keys == Keys::Generated`).
    pub fn creating(&self) -> bool {
        self.keys == Keys::Generated
    }

    /// Whether a request for this operation may be sent more than once: GETs, and calls that
    /// carry a (gateway-scoped) key.
    pub fn retry_safe(&self, keyed: bool) -> bool {
        self.method == Method::GET || (self.keys != Keys::None && keyed)
    }
}

macro_rules! op {
    ($name:literal = $id:expr, $method:ident, $api:ident, $creating:literal, [$($seg:expr),* $(,)?]) => {
        Operation {
            name: $name,
            id: $id,
            method: Method::$method,
            api: Api::$api,
            keys: if $creating { Keys::Generated } else { Keys::None },
            pattern: &[$($seg),*],
        }
    };
}

const PM: Seg = Lit("transaction");
const MG: Seg = Lit("management");
const V2: Seg = Lit("v2");
const TX: Seg = Lit("transactions");

/// Every operation the gateway knows, in match order.
pub static OPERATIONS: &[Operation] = &[
    op!(
        "payment.transactions.create" = Id::TransactionsCreate,
        POST,
        Payment,
        true,
        [PM, MG, V2, TX]
    ),
    op!(
        "payment.transactions.get" = Id::TransactionsGet,
        GET,
        Payment,
        false,
        [PM, MG, V2, TX, Transaction]
    ),
    op!(
        "payment.transactions.update" = Id::TransactionsUpdate,
        PATCH,
        Payment,
        false,
        [PM, MG, V2, TX, Transaction]
    ),
    op!(
        "payment.authorizations.create" = Id::FollowUpsCreate(FollowUpKind::Authorization),
        POST,
        Payment,
        true,
        [PM, MG, V2, TX, Transaction, Lit("authorizations")]
    ),
    op!(
        "payment.authorizations.list" = Id::FollowUpsList(FollowUpKind::Authorization),
        GET,
        Payment,
        false,
        [PM, MG, V2, TX, Transaction, Lit("authorizations")]
    ),
    op!(
        "payment.authorizations.get" = Id::FollowUpsGet(FollowUpKind::Authorization),
        GET,
        Payment,
        false,
        [PM, MG, V2, TX, Transaction, Lit("authorizations"), Resource]
    ),
    op!(
        "payment.captures.create" = Id::FollowUpsCreate(FollowUpKind::Capture),
        POST,
        Payment,
        true,
        [PM, MG, V2, TX, Transaction, Lit("captures")]
    ),
    op!(
        "payment.captures.list" = Id::FollowUpsList(FollowUpKind::Capture),
        GET,
        Payment,
        false,
        [PM, MG, V2, TX, Transaction, Lit("captures")]
    ),
    op!(
        "payment.captures.get" = Id::FollowUpsGet(FollowUpKind::Capture),
        GET,
        Payment,
        false,
        [PM, MG, V2, TX, Transaction, Lit("captures"), Resource]
    ),
    op!(
        "payment.shipping_information.create" = Id::ShippingInformationCreate,
        POST,
        Payment,
        true,
        [
            PM,
            MG,
            V2,
            TX,
            Transaction,
            Lit("captures"),
            Resource,
            Lit("shipping-information")
        ]
    ),
    op!(
        "payment.refunds.create" = Id::FollowUpsCreate(FollowUpKind::Refund),
        POST,
        Payment,
        true,
        [PM, MG, V2, TX, Transaction, Lit("refunds")]
    ),
    op!(
        "payment.refunds.list" = Id::FollowUpsList(FollowUpKind::Refund),
        GET,
        Payment,
        false,
        [PM, MG, V2, TX, Transaction, Lit("refunds")]
    ),
    op!(
        "payment.refunds.get" = Id::FollowUpsGet(FollowUpKind::Refund),
        GET,
        Payment,
        false,
        [PM, MG, V2, TX, Transaction, Lit("refunds"), Resource]
    ),
    op!(
        "payment.cancellations.create" = Id::FollowUpsCreate(FollowUpKind::Cancellation),
        POST,
        Payment,
        true,
        [PM, MG, V2, TX, Transaction, Lit("cancellations")]
    ),
    op!(
        "payment.cancellations.list" = Id::FollowUpsList(FollowUpKind::Cancellation),
        GET,
        Payment,
        false,
        [PM, MG, V2, TX, Transaction, Lit("cancellations")]
    ),
    op!(
        "payment.cancellations.get" = Id::FollowUpsGet(FollowUpKind::Cancellation),
        GET,
        Payment,
        false,
        [PM, MG, V2, TX, Transaction, Lit("cancellations"), Resource]
    ),
    op!(
        "payment.otp.verify" = Id::OtpVerify,
        POST,
        Payment,
        false,
        [PM, MG, Lit("2fa"), Lit("v1"), Lit("verify"), Transaction]
    ),
    op!(
        "payment.otp.regenerate" = Id::OtpRegenerate,
        POST,
        Payment,
        false,
        [
            PM,
            MG,
            Lit("2fa"),
            Lit("v1"),
            Lit("regenerate"),
            Transaction
        ]
    ),
    op!(
        "status.transactions.get" = Id::StatusTransactionsGet,
        GET,
        Status,
        false,
        [PM, Lit("status"), V2, TX, Transaction]
    ),
    Operation {
        name: "hpp.sessions.create",
        id: Id::HppSessionsCreate,
        method: Method::POST,
        api: Api::Hpp,
        keys: Keys::CallerOptional,
        pattern: &[Lit("pps"), Lit("api"), Lit("v1"), Lit("session")],
    },
    op!(
        "hpp.session_records.list" = Id::HppSessionRecordsList,
        GET,
        Hpp,
        false,
        [Lit("pps"), Lit("api"), Lit("v1"), Lit("session-record")]
    ),
    op!(
        "hpp.session_records.get" = Id::HppSessionRecordsGet,
        GET,
        Hpp,
        false,
        [
            Lit("pps"),
            Lit("api"),
            Lit("v1"),
            Lit("session-record"),
            Session
        ]
    ),
];

/// The gateway's own `POST /oauth/token` for internal callers: not a Ratepay operation (not in
/// [`OPERATIONS`], never forwarded), named for the access log and metrics.
pub static GATEWAY_OAUTH_TOKEN: Operation = Operation {
    name: "gateway.oauth.token",
    id: OperationId::GatewayOauthToken,
    method: Method::POST,
    api: Api::Payment,
    keys: Keys::None,
    pattern: &[],
};

/// Looks an operation up by name.
pub fn operation(name: &str) -> Option<&'static Operation> {
    OPERATIONS.iter().find(|op| op.name == name)
}

/// Why a path was refused before routing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Percent-encoding is never needed on Ratepay paths; it only hides dots and slashes.
    #[error("the path contains percent-encoding; Ratepay paths and ids never need it")]
    Encoded,
    /// `.` or `..` segments.
    #[error("the path contains a '.' or '..' segment")]
    DotSegment,
    /// `//` or a trailing `/`.
    #[error("the path contains an empty segment ('//' or a trailing '/')")]
    EmptySegment,
    /// An id with characters outside `[A-Za-z0-9_-]` or of an impossible length.
    #[error("the {0} in the path must be 1 to 127 characters of A-Z, a-z, 0-9, '_' or '-'")]
    BadId(&'static str),
}

/// The ids a matched path carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathParams {
    /// `ratepay_transaction_id`, when the operation has one.
    pub transaction_id: Option<String>,
    /// Follow-up resource id (authorization, capture, refund or cancellation).
    pub resource_id: Option<String>,
    /// HPP session id.
    pub session_id: Option<String>,
}

/// The outcome of routing one request.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The operation.
    pub operation: &'static Operation,
    /// Ids from the path.
    pub params: PathParams,
}

/// Whether `s` is an id as Ratepay's paths carry them: 1 to 127 of `[A-Za-z0-9_-]`.
pub fn valid_id(s: &str) -> bool {
    (1..=127).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The most segments any operation's path has (a test holds every pattern to it).
const MAX_SEGMENTS: usize = 8;

/// Checks a path for tricks and matches it against [`OPERATIONS`].
///
/// `Ok(None)` means the path is well-formed but names no known operation for this method (404).
pub fn match_route(method: &Method, path: &str) -> Result<Option<RouteMatch>, PathError> {
    if path.contains('%') {
        return Err(PathError::Encoded);
    }
    let rest = path.strip_prefix('/').unwrap_or(path);
    // On the stack: no operation has more than MAX_SEGMENTS, so a longer path only needs its
    // segments checked.
    let mut segs = [""; MAX_SEGMENTS];
    let mut count = 0;
    for s in rest.split('/') {
        match s {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            _ => {}
        }
        if let Some(slot) = segs.get_mut(count) {
            *slot = s;
        }
        count += 1;
    }
    if count > MAX_SEGMENTS {
        return Ok(None);
    }
    let segs = &segs[..count];
    'ops: for op in OPERATIONS {
        if op.method != *method || op.pattern.len() != segs.len() {
            continue;
        }
        // Borrowed until the whole pattern matched: a POST to a follow-up tries the other
        // follow-ups' patterns first, and each copied the transaction id before failing.
        let (mut transaction, mut resource, mut session) = (None, None, None);
        for (pat, seg) in op.pattern.iter().zip(segs) {
            match pat {
                Lit(l) => {
                    if l != seg {
                        continue 'ops;
                    }
                }
                Transaction | Resource | Session => {
                    let (slot, what) = match pat {
                        Transaction => (&mut transaction, "ratepay_transaction_id"),
                        Resource => (&mut resource, "resource id"),
                        _ => (&mut session, "session id"),
                    };
                    if !valid_id(seg) {
                        return Err(PathError::BadId(what));
                    }
                    *slot = Some(*seg);
                }
            }
        }
        return Ok(Some(RouteMatch {
            operation: op,
            params: PathParams {
                transaction_id: transaction.map(str::to_owned),
                resource_id: resource.map(str::to_owned),
                session_id: session.map(str::to_owned),
            },
        }));
    }
    Ok(None)
}

/// Whether any operation, for any method, matches the path (to tell 404 from 405).
pub fn path_known(path: &str) -> bool {
    [Method::GET, Method::POST, Method::PATCH]
        .iter()
        .any(|m| matches!(match_route(m, path), Ok(Some(_))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_fits_the_segment_buffer_and_longer_paths_are_still_checked() {
        for op in OPERATIONS {
            assert!(op.pattern.len() <= MAX_SEGMENTS, "{}", op.name);
        }
        let long = "/a".repeat(MAX_SEGMENTS + 1);
        assert!(matches!(match_route(&Method::GET, &long), Ok(None)));
        let dotted = format!("{long}/../x");
        assert!(matches!(
            match_route(&Method::GET, &dotted),
            Err(PathError::DotSegment)
        ));
        let empty = format!("{long}//x");
        assert!(matches!(
            match_route(&Method::GET, &empty),
            Err(PathError::EmptySegment)
        ));
    }

    #[test]
    fn one_key_rule_for_every_operation() {
        for op in OPERATIONS {
            let expected = match op.name {
                "hpp.sessions.create" => Keys::CallerOptional,
                // Payment POSTs create resources, except the passcode calls.
                _ if op.api == Api::Payment
                    && op.method == Method::POST
                    && !op.name.starts_with("payment.otp.") =>
                {
                    Keys::Generated
                }
                _ => Keys::None,
            };
            assert_eq!(op.keys, expected, "{}", op.name);
            // Retried: GETs, and only calls that carry a key.
            let retried = |keyed| op.retry_safe(keyed);
            match (&op.method, op.keys) {
                (&Method::GET, _) => assert!(retried(false) && retried(true), "{}", op.name),
                (_, Keys::None) => assert!(!retried(false) && !retried(true), "{}", op.name),
                _ => assert!(!retried(false) && retried(true), "{}", op.name),
            }
        }
        let otp = operation("payment.otp.verify").unwrap();
        assert_eq!(otp.keys, Keys::None);
        assert!(!otp.retry_safe(true), "OTP calls are never retried");
        assert!(operation("payment.cancellations.create")
            .unwrap()
            .retry_safe(true));
        assert!(!operation("payment.transactions.update")
            .unwrap()
            .retry_safe(true));
    }

    /// The name each id stands for, spelled out independently of the table.
    fn name_of(id: OperationId) -> String {
        let follow_up = |k, verb| {
            let plural = match k {
                FollowUpKind::Authorization => "authorizations",
                FollowUpKind::Capture => "captures",
                FollowUpKind::Refund => "refunds",
                FollowUpKind::Cancellation => "cancellations",
            };
            format!("payment.{plural}.{verb}")
        };
        match id {
            Id::TransactionsCreate => "payment.transactions.create".into(),
            Id::TransactionsGet => "payment.transactions.get".into(),
            Id::TransactionsUpdate => "payment.transactions.update".into(),
            Id::FollowUpsCreate(k) => follow_up(k, "create"),
            Id::FollowUpsList(k) => follow_up(k, "list"),
            Id::FollowUpsGet(k) => follow_up(k, "get"),
            Id::ShippingInformationCreate => "payment.shipping_information.create".into(),
            Id::OtpVerify => "payment.otp.verify".into(),
            Id::OtpRegenerate => "payment.otp.regenerate".into(),
            Id::StatusTransactionsGet => "status.transactions.get".into(),
            Id::HppSessionsCreate => "hpp.sessions.create".into(),
            Id::HppSessionRecordsList => "hpp.session_records.list".into(),
            Id::HppSessionRecordsGet => "hpp.session_records.get".into(),
            Id::GatewayOauthToken => "gateway.oauth.token".into(),
        }
    }

    /// With the names unique (tested below), this also makes every id unique.
    #[test]
    fn every_operation_id_names_its_operation() {
        for op in OPERATIONS.iter().chain([&GATEWAY_OAUTH_TOKEN]) {
            assert_eq!(name_of(op.id), op.name, "{:?}", op.id);
        }
    }

    #[test]
    fn matches_cancellation_create_with_ids() {
        let m = match_route(
            &Method::POST,
            "/transaction/management/v2/transactions/scwBgARW-nE93I7_ywhp/cancellations",
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.operation.name, "payment.cancellations.create");
        assert!(m.operation.creating());
        assert_eq!(
            m.params.transaction_id.as_deref(),
            Some("scwBgARW-nE93I7_ywhp")
        );
    }

    #[test]
    fn unknown_method_or_path_is_none() {
        assert!(match_route(
            &Method::DELETE,
            "/transaction/management/v2/transactions/abc"
        )
        .unwrap()
        .is_none());
        assert!(match_route(&Method::GET, "/admin").unwrap().is_none());
        assert!(path_known("/transaction/management/v2/transactions/abc"));
        assert!(!path_known("/admin"));
    }

    #[test]
    fn path_tricks_are_refused() {
        let cases = [
            (
                "/transaction/management/v2/transactions/../x",
                PathError::DotSegment,
            ),
            (
                "/transaction/management/v2/transactions/%2e%2e/x",
                PathError::Encoded,
            ),
            (
                "/transaction/management/v2/transactions/a%2Fb",
                PathError::Encoded,
            ),
            (
                "/transaction//management/v2/transactions",
                PathError::EmptySegment,
            ),
            ("/pps/api/v1/session-record/", PathError::EmptySegment),
            (
                "/pps/api/v1/session-record/a.b",
                PathError::BadId("session id"),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(match_route(&Method::GET, path).unwrap_err(), want, "{path}");
        }
    }

    #[test]
    fn every_operation_name_is_unique_and_matches_its_own_pattern() {
        for (i, op) in OPERATIONS.iter().enumerate() {
            assert!(OPERATIONS[i + 1..].iter().all(|o| o.name != op.name));
            let path: String = op
                .pattern
                .iter()
                .map(|s| match s {
                    Lit(l) => format!("/{l}"),
                    _ => "/abcdefghij0123456789".to_owned(),
                })
                .collect();
            let m = match_route(&op.method, &path).unwrap().unwrap();
            assert_eq!(m.operation.name, op.name);
        }
    }
}
