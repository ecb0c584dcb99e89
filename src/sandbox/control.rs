//! The unauthenticated test endpoints under `/_sandbox/`: stats, faults, token revocation,
//! session status, reset.
//!
//! They exist only in the sandbox and let tests observe and steer it; none of them is counted
//! in the stats.

use http::{Method, StatusCode};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{
    faults::FaultSpec,
    reply::Reply,
    sessions::SessionStatus,
    state::{lock, Sandbox},
};

fn bad_request(message: String) -> Reply {
    Reply::json(
        StatusCode::BAD_REQUEST,
        &json!({"error": "bad_request", "message": message}),
    )
}

fn faults_body(faults: &[FaultSpec]) -> Value {
    json!({ "faults": faults })
}

/// Answers one `/_sandbox/*` request.
pub(crate) fn handle(sandbox: &Sandbox, method: &Method, path: &str, body: &[u8]) -> Reply {
    let rest = path.strip_prefix("/_sandbox").unwrap_or(path);
    match (method, rest) {
        (&Method::GET, "/stats") => {
            let stats = lock(&sandbox.inner).stats.clone();
            Reply::json(StatusCode::OK, &json!(stats))
        }
        (&Method::GET, "/faults") => Reply::json(
            StatusCode::OK,
            &faults_body(lock(&sandbox.inner).faults.list()),
        ),
        (&Method::POST, "/faults") => {
            let spec: FaultSpec = match serde_json::from_slice(body) {
                Ok(s) => s,
                Err(e) => return bad_request(format!("not a fault: {e}")),
            };
            let mut inner = lock(&sandbox.inner);
            match inner.faults.add(spec) {
                Ok(()) => Reply::json(StatusCode::CREATED, &faults_body(inner.faults.list())),
                Err(e) => bad_request(e.to_string()),
            }
        }
        (&Method::DELETE, "/faults") => {
            lock(&sandbox.inner).faults.clear();
            Reply::json(StatusCode::OK, &faults_body(&[]))
        }
        (&Method::POST, "/tokens/revoke") => {
            let mut inner = lock(&sandbox.inner);
            let issued = std::mem::take(&mut inner.issued);
            let n = issued.len();
            inner.revoked.extend(issued);
            Reply::json(StatusCode::OK, &json!({ "revoked": n }))
        }
        (&Method::POST, "/reset") => {
            sandbox.reset();
            Reply::json(StatusCode::OK, &json!({ "reset": true }))
        }
        (&Method::POST, r) if r.starts_with("/sessions/") => {
            let id = &r["/sessions/".len()..];
            set_status(sandbox, id, body)
        }
        _ => Reply::json(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "message": "sandbox endpoints: GET /_sandbox/stats, GET|POST|DELETE /_sandbox/faults, POST /_sandbox/tokens/revoke, POST /_sandbox/sessions/{id}, POST /_sandbox/reset"}),
        ),
    }
}

/// Handles `POST /_sandbox/sessions/{id}` with `{"session_status": ..., "decline_reasons"?: ...}`.
fn set_status(sandbox: &Sandbox, id: &str, body: &[u8]) -> Reply {
    let parsed: Option<(SessionStatus, Option<Value>)> =
        serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            let status = SessionStatus::parse(v.get("session_status")?.as_str()?)?;
            Some((status, v.get("decline_reasons").cloned()))
        });
    let Some((status, reasons)) = parsed else {
        return Reply::json(
            StatusCode::BAD_REQUEST,
            &json!({"error": "body must be {\"session_status\": <one of CREATED, IN_PROGRESS, OTP_PENDING, FRAUD_CANCELLATION_REQUESTED, COMPLETED, ERROR, EXPIRED, CANCELED>}"}),
        );
    };
    let now = OffsetDateTime::now_utc();
    if lock(&sandbox.inner)
        .sessions
        .set_status(id, status, reasons, now)
    {
        Reply::json(
            StatusCode::OK,
            &json!({"session_id": id, "session_status": status.as_str()}),
        )
    } else {
        Reply::json(StatusCode::NOT_FOUND, &json!({"error": "no such session"}))
    }
}
