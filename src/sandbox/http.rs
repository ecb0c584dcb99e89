//! The sandbox's HTTP front: one request's way from hyper to an operation and back.
//!
//! Order for an API call: route (`routes::match_route`, the gateway's own table) → count in
//! stats → injected fault → bearer token for the API's audience → body (≤ 1 MiB) → `X-Partner`
//! → idempotency (creating POSTs with a key) → operation. Every outcome is a [`Reply`]; the
//! service never fails, except that a `close_connection` fault deliberately drops the
//! connection through the kill switch of its connection task.
//!
//! The top of the sandbox's files: it calls the token endpoint (`oauth`), the test endpoints
//! (`control`) and, through `dispatch`, the API operations; they all take the shared [`Call`]
//! and [`Reply`] from `call.rs` and `reply.rs`, never from here.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::json;
use tokio::sync::Notify;

use super::{
    call::Call,
    control, dispatch,
    faults::{FaultAction, OAUTH_TOKEN},
    idempotency::{self, Begin},
    oauth,
    reply::{decline, invalid_fields, Reply},
    state::{lock, Sandbox},
};
use crate::routes::{self, Api};

/// Largest request body accepted; larger ones get 413.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// Reads a body of at most [`MAX_BODY`] bytes.
async fn read_body<B>(headers: &HeaderMap, body: B) -> Result<Bytes, Reply>
where
    B: http_body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || {
        Reply::json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"error": "payload_too_large", "message": format!("request bodies are limited to {MAX_BODY} bytes")}),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(Reply::json(
            StatusCode::BAD_REQUEST,
            &json!({"error": "bad_request", "message": "the request body could not be read"}),
        )),
    }
}

/// What to do after consulting the faults.
enum Faulted {
    /// Go on, as the (possibly empty) action says: sleep `latency` just before executing, add
    /// `age` to the answer, issue a token for `expires_in`.
    Proceed(FaultAction),
    /// Answer this instead of executing.
    Answer(Reply),
    /// Drop the connection.
    Close,
}

async fn apply_fault(sandbox: &Sandbox, operation: &str) -> Faulted {
    let action: Option<FaultAction> = {
        let mut inner = lock(&sandbox.inner);
        let inner = &mut *inner;
        inner.faults.select(operation, &mut inner.fault_rng)
    };
    let Some(a) = action else {
        return Faulted::Proceed(FaultAction::default());
    };
    if a.proceeds() {
        return Faulted::Proceed(a);
    }
    if let Some(d) = a.latency {
        tokio::time::sleep(d).await;
    }
    if a.close_connection {
        return Faulted::Close;
    }
    let status = a
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut reply = Reply::json(
        status,
        &json!({"error": "sandbox_fault", "message": format!("injected fault for {operation}"), "status": status.as_u16()}),
    );
    if let Some(secs) = a.retry_after {
        reply = reply.with_header(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(secs) = a.age {
        reply = reply.with_header(header::AGE, HeaderValue::from(secs));
    }
    Faulted::Answer(reply)
}

/// Answers one request. `kill` drops the connection (for `close_connection` faults).
pub(crate) async fn handle<B>(
    sandbox: Arc<Sandbox>,
    req: Request<B>,
    kill: Arc<Notify>,
) -> Response<Full<Bytes>>
where
    B: http_body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let reply = match route(&sandbox, req).await {
        Some(r) => r,
        None => {
            // Wake the connection task, which drops the connection; never answer.
            kill.notify_one();
            std::future::pending::<()>().await;
            Reply::json(StatusCode::SERVICE_UNAVAILABLE, &json!({}))
        }
    };
    reply.into_response()
}

/// `None` means "drop the connection".
async fn route<B>(sandbox: &Arc<Sandbox>, req: Request<B>) -> Option<Reply>
where
    B: http_body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut age = None;
    let reply = route_shaped(sandbox, req, &mut age).await?;
    // Added after the idempotency store saw the answer, so a replay carries no fault's `Age`.
    Some(match age {
        Some(secs) => reply.with_header(header::AGE, HeaderValue::from(secs)),
        None => reply,
    })
}

/// [`route`], noting in `age` the `Age` an `age` fault adds to an executed call's answer.
async fn route_shaped<B>(
    sandbox: &Arc<Sandbox>,
    req: Request<B>,
    age: &mut Option<u64>,
) -> Option<Reply>
where
    B: http_body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    if path == "/_sandbox" || path.starts_with("/_sandbox/") {
        let body = match read_body(&parts.headers, body).await {
            Ok(b) => b,
            Err(r) => return Some(r),
        };
        return Some(control::handle(sandbox, &parts.method, path, &body));
    }
    if path == "/oauth/token" {
        lock(&sandbox.inner).stats.token_request();
        if parts.method != Method::POST {
            return Some(method_not_allowed("POST"));
        }
        let lifetime = match apply_fault(sandbox, OAUTH_TOKEN).await {
            Faulted::Answer(r) => return Some(r),
            Faulted::Close => return None,
            Faulted::Proceed(a) => {
                if let Some(d) = a.latency {
                    tokio::time::sleep(d).await;
                }
                *age = a.age;
                a.expires_in.map(std::time::Duration::from_secs)
            }
        };
        let body = match read_body(&parts.headers, body).await {
            Ok(b) => b,
            Err(r) => return Some(r),
        };
        return Some(oauth::token(sandbox, &parts.headers, &body, lifetime));
    }
    let m = match routes::match_route(&parts.method, path) {
        Err(e) => return Some(invalid_fields("$.path", &e.to_string())),
        Ok(None) if routes::path_known(path) => {
            return Some(method_not_allowed("GET, POST, PATCH"))
        }
        Ok(None) => {
            return Some(decline(
                StatusCode::NOT_FOUND,
                "RESOURCE_NOT_FOUND",
                &["NOT_FOUND"],
                "no such endpoint",
            ))
        }
        Ok(Some(m)) => m,
    };
    let op = m.operation;
    lock(&sandbox.inner).stats.request(
        op.name,
        parts.version,
        parts.headers.get("idempotency-key"),
    );
    let delay = match apply_fault(sandbox, op.name).await {
        Faulted::Answer(r) => return Some(r),
        Faulted::Close => return None,
        Faulted::Proceed(a) => {
            *age = a.age;
            a.latency
        }
    };
    let a = &sandbox.config.audiences;
    let audience = match op.api {
        Api::Payment => &a.payment,
        Api::Status => &a.status,
        Api::Hpp => &a.hpp,
    };
    let client = match oauth::authenticate(sandbox, &parts.headers, audience) {
        Ok(c) => c,
        Err(e) => return Some(oauth::unauthorized(&e)),
    };
    let body = match read_body(&parts.headers, body).await {
        Ok(b) => b,
        Err(r) => return Some(r),
    };
    let partner = match parts.headers.get("x-partner").map(|v| v.to_str()) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => {
            return Some(invalid_fields(
                "$.headers.X-Partner",
                "X-Partner must be ASCII",
            ))
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(path);
    let call = Call {
        query: parts.uri.query(),
        headers: &parts.headers,
        body: &body,
        client: &client,
        partner,
        params: &m.params,
    };
    let execute = |call: &Call<'_>| dispatch::execute(sandbox, op.id, call);
    // Ratepay: idempotency is applied "if requested by the client"; a creating POST without a
    // key simply executes.
    let key = match parts.headers.get("idempotency-key") {
        Some(raw) if op.creating() => match idempotency::validate_key(raw.as_bytes()) {
            Ok(k) => Some(k),
            Err(e) => return Some(invalid_fields("$.headers.Idempotency-Key", &e.to_string())),
        },
        _ => None,
    };
    let Some(key) = key else {
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        return Some(execute(&call));
    };
    let fp = idempotency::fingerprint(parts.method.as_str(), path_and_query, partner, &body);
    loop {
        let begin = lock(&sandbox.idempotency).begin(&client, &key, fp, Instant::now());
        match begin {
            Begin::Replay(r) => return Some(r),
            Begin::Conflict => {
                return Some(decline(
                    StatusCode::CONFLICT,
                    "CONFLICT",
                    &["IDEMPOTENCY_KEY_REUSED"],
                    "this Idempotency-Key was used for a different request",
                ))
            }
            Begin::Wait(mut rx) => {
                // Resolves (with Err) once the running call dropped its sender; then ask again.
                let _ = rx.changed().await;
            }
            Begin::Execute { generation, done } => {
                let mut run = InFlight {
                    sandbox,
                    client: &client,
                    key: &key,
                    generation,
                    finished: false,
                    _done: done,
                };
                // The delay sits inside the in-flight window so a test can make a duplicate
                // arrive while this call is still running.
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                let reply = execute(&call);
                run.finish(&reply);
                return Some(reply);
            }
        }
    }
}

/// A running keyed call; if it is dropped unfinished (the client went away), the key is freed
/// so a retry executes instead of waiting forever.
struct InFlight<'a> {
    sandbox: &'a Sandbox,
    client: &'a str,
    key: &'a str,
    generation: u64,
    finished: bool,
    /// Dropped after the store is updated, which wakes waiting duplicates.
    _done: tokio::sync::watch::Sender<()>,
}

impl InFlight<'_> {
    fn finish(&mut self, reply: &Reply) {
        lock(&self.sandbox.idempotency).finish(
            self.client,
            self.key,
            self.generation,
            reply,
            Instant::now(),
        );
        self.finished = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.finished {
            lock(&self.sandbox.idempotency).abandon(self.client, self.key, self.generation);
        }
    }
}

fn method_not_allowed(allow: &'static str) -> Reply {
    Reply::json(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": "method_not_allowed", "message": format!("allowed: {allow}")}),
    )
    .with_header(header::ALLOW, HeaderValue::from_static(allow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let big = Full::new(Bytes::from(vec![b'a'; MAX_BODY + 1]));
        let err = read_body(&HeaderMap::new(), big).await.unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        let ok = Full::new(Bytes::from_static(b"{}"));
        assert_eq!(&read_body(&HeaderMap::new(), ok).await.unwrap()[..], b"{}");
    }
}
