//! The audit layer: an `intent` record on disk before a money-moving call leaves the gateway, an
//! `outcome` record after its final answer.
//!
//! Sits after idempotency (a replay or a 409 moves no money) and before header hygiene, token and
//! retry, so the outcome covers every attempt. If the intent cannot be made durable the call is
//! refused with 503 and never forwarded: nothing moves unaudited. Operations that are not audited
//! pass straight through and never wait on the log. The log itself is [`crate::audit`].

use std::{
    collections::HashSet,
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use super::{idempotency::IDEMPOTENCY_KEY, GwRequest, GwResponse, Handler};
use crate::{
    audit::{
        ratepay_cancellation_id, AuditEntry, AuditLog, CancellationFields, Intent, OutcomeKind,
    },
    body,
    context::{Authenticated, RequestContext},
    error::GatewayError,
};

/// Answers to audited calls are small JSON; only this much is read to find the resource id.
const MAX_AUDITED_BODY: usize = 256 * 1024;

/// Layer for [`Audit`].
#[derive(Clone)]
pub struct AuditLayer {
    log: AuditLog,
    operations: Arc<HashSet<&'static str>>,
}

impl std::fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLayer")
            .field("operations", &self.operations)
            .finish()
    }
}

impl AuditLayer {
    /// Audits `operations` into `log`.
    pub fn new(log: AuditLog, operations: &[&'static str]) -> Self {
        AuditLayer {
            log,
            operations: Arc::new(operations.iter().copied().collect()),
        }
    }
}

impl<S> tower::Layer<S> for AuditLayer {
    type Service = Audit<S>;
    fn layer(&self, inner: S) -> Audit<S> {
        Audit {
            inner,
            log: self.log.clone(),
            operations: self.operations.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Audit<S> {
    inner: S,
    log: AuditLog,
    operations: Arc<HashSet<&'static str>>,
}

fn intent(req: &GwRequest) -> Result<Intent, GatewayError> {
    let ctx = req
        .extensions()
        .get::<RequestContext>()
        .ok_or_else(|| GatewayError::Internal("request context missing".into()))?;
    let auth = req
        .extensions()
        .get::<Authenticated>()
        .ok_or_else(|| GatewayError::Internal("caller missing before audit".into()))?;
    let fields = CancellationFields::from_body(req.body());
    Ok(Intent {
        request_id: ctx.request_id.to_string(),
        caller: auth.caller.name.to_string(),
        source: ctx.source.ip(),
        operation: ctx.route.operation.name.to_owned(),
        ratepay_transaction_id: ctx.route.params.transaction_id.clone().unwrap_or_default(),
        partner: auth.partner.as_deref().map(str::to_owned),
        gross_amount: fields.gross_amount,
        partner_operation_id: fields.partner_operation_id,
        partner_shop_id: fields.partner_shop_id,
        idempotency_key: req
            .headers()
            .get(&IDEMPOTENCY_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    })
}

impl<S: Handler> Handler for Audit<S> {
    async fn handle(&self, req: GwRequest) -> Result<GwResponse, GatewayError> {
        let audited = req
            .extensions()
            .get::<RequestContext>()
            .is_some_and(|c| self.operations.contains(c.route.operation.name));
        if !audited {
            return self.inner.handle(req).await;
        }
        let log = &self.log;
        let intent = intent(&req)?;
        let attempts = req
            .extensions()
            .get::<RequestContext>()
            .map(|c| c.stats.clone());
        let appended = log
            .append(AuditEntry::Intent(intent.clone()))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "audit intent not written; refusing the call");
                GatewayError::AuditUnavailable(e.to_string())
            })?;
        let started = Instant::now();
        let result = self.inner.handle(req).await;
        let mut outcome = intent.outcome(appended.seq, OutcomeKind::Unknown);
        outcome.attempts = attempts.map_or(0, |s| s.attempts.load(Ordering::Relaxed));
        outcome.latency_ms = started.elapsed().as_millis() as u64;
        let response = match result {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let read = body::read_limited(body, MAX_AUDITED_BODY).await;
                outcome.status = Some(parts.status.as_u16());
                match read {
                    Ok(bytes) => {
                        outcome.ratepay_cancellation_id = ratepay_cancellation_id(&bytes);
                        outcome.outcome = if parts.status.is_success() {
                            OutcomeKind::Success
                        } else {
                            OutcomeKind::Failure
                        };
                        if !parts.status.is_success() {
                            outcome.error =
                                Some(format!("ratepay answered {}", parts.status.as_u16()));
                        }
                        Ok(GwResponse::from_parts(parts, body::full(bytes)))
                    }
                    Err(e) => {
                        // The status arrived but the body broke off: the money may have moved.
                        outcome.error = Some(format!("reading ratepay's answer failed: {e}"));
                        Err(GatewayError::UpstreamUnreachable {
                            upstream: "payment",
                            reason: "the answer broke off while being read".into(),
                        })
                    }
                }
            }
            Err(e) => {
                // Never sent (no token) is a failure; a transport error leaves it unknown.
                outcome.outcome = match e {
                    GatewayError::TokenUnavailable { .. } | GatewayError::NoUpstream(_) => {
                        OutcomeKind::Failure
                    }
                    _ => OutcomeKind::Unknown,
                };
                outcome.error = Some(e.to_string());
                Err(e)
            }
        };
        if let Err(e) = log.append(AuditEntry::Outcome(outcome)).await {
            // The call already happened; answering it is right. The open intent is closed as
            // `unknown` by the recovery at the next start.
            tracing::error!(error = %e, intent_seq = appended.seq, "audit outcome not written");
        }
        response
    }
}
