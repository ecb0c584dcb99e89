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
};

use futures_util::FutureExt;

use super::{idempotency::IDEMPOTENCY_KEY, GwRequest, GwResponse, Handler};
use crate::{
    audit::{
        ratepay_cancellation_id, AttemptCounter, AuditLog, CancellationFields, Intent, Outcome,
        OutcomeKind, CUT_OFF,
    },
    body,
    context::Call,
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

/// What the final answer says, copied into the prepared outcome.
struct Settled {
    outcome: OutcomeKind,
    status: Option<u16>,
    ratepay_cancellation_id: Option<String>,
    error: Option<String>,
}

impl Default for Settled {
    fn default() -> Self {
        Settled {
            outcome: OutcomeKind::Unknown,
            status: None,
            ratepay_cancellation_id: None,
            error: None,
        }
    }
}

impl Settled {
    fn fill(self, o: &mut Outcome) {
        o.outcome = self.outcome;
        o.status = self.status;
        o.ratepay_cancellation_id = self.ratepay_cancellation_id;
        o.error = self.error;
    }
}

fn intent(call: &Call, req: &GwRequest) -> Intent {
    let (ctx, auth) = (&call.ctx, &call.auth);
    let fields = CancellationFields::from_body(req.body());
    Intent {
        request_id: ctx.request_id.to_string(),
        caller: auth.caller.name.to_string(),
        source: ctx.peer.addr.ip(),
        operation: ctx.route.operation.name.to_owned(),
        ratepay_transaction_id: ctx.route.params.transaction_id.clone().unwrap_or_default(),
        partner: auth.partner.as_deref().map(str::to_owned),
        gross_amount: fields.gross_amount,
        partner_operation_id: fields.partner_operation_id,
        partner_shop_id: fields.partner_shop_id,
        body_sha256: crate::audit::record::sha256_hex(req.body()),
        idempotency_key: req
            .headers()
            .get(&IDEMPOTENCY_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

impl<S: Handler> Handler for Audit<S> {
    async fn handle(&self, call: &Call, req: GwRequest) -> Result<GwResponse, GatewayError> {
        if !self.operations.contains(call.ctx.route.operation.name) {
            return self.inner.handle(call, req).await;
        }
        let log = &self.log;
        let intent = intent(call, &req);
        let stats = call.ctx.stats.clone();
        let attempts: AttemptCounter = Arc::new(move || stats.attempts.load(Ordering::Relaxed));
        // From here an outcome follows on every path: below, or from the guard if this future
        // unwinds or is dropped, or from the log's close at shutdown.
        let (open, appended) = log.begin(intent, attempts).await.map_err(|e| {
            tracing::error!(error = %e, "audit intent not written; refusing the call");
            GatewayError::AuditUnavailable(e.to_string())
        })?;
        let result = std::panic::AssertUnwindSafe(self.inner.handle(call, req))
            .catch_unwind()
            .await;
        let result = match result {
            Ok(r) => r,
            Err(panic) => {
                // Settle the intent first, then let the panic go on to the edge (500, counted).
                let written = open
                    .finish(|o| {
                        o.outcome = OutcomeKind::Unknown;
                        o.error = Some(CUT_OFF.to_owned());
                    })
                    .await;
                if let Err(e) = written {
                    tracing::error!(error = %e, intent_seq = appended.seq, "audit outcome not written");
                }
                std::panic::resume_unwind(panic);
            }
        };
        let mut fields = Settled::default();
        let response = match result {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let (clock, deadline) = (call.ctx.peer.clock.as_deref(), call.ctx.deadline);
                let read = body::read_limited_by(clock, deadline, body, MAX_AUDITED_BODY).await;
                fields.status = Some(parts.status.as_u16());
                match read {
                    Ok(bytes) => {
                        fields.ratepay_cancellation_id = ratepay_cancellation_id(&bytes);
                        fields.outcome = if parts.status.is_success() {
                            OutcomeKind::Success
                        } else {
                            OutcomeKind::Failure
                        };
                        if !parts.status.is_success() {
                            fields.error =
                                Some(format!("ratepay answered {}", parts.status.as_u16()));
                        }
                        Ok(GwResponse::from_parts(parts, body::full(bytes)))
                    }
                    Err(e) => {
                        // The status arrived but the body broke off: the money may have moved.
                        fields.error = Some(format!("reading ratepay's answer failed: {e}"));
                        Err(GatewayError::UpstreamUnreachable {
                            upstream: "payment",
                            reason: "the answer broke off while being read".into(),
                        })
                    }
                }
            }
            Err(e) => {
                // Never sent (no token) is a failure; a transport error leaves it unknown.
                fields.outcome = match e {
                    GatewayError::TokenUnavailable { .. } | GatewayError::NoUpstream(_) => {
                        OutcomeKind::Failure
                    }
                    _ => OutcomeKind::Unknown,
                };
                fields.error = Some(e.to_string());
                Err(e)
            }
        };
        if let Err(e) = open.finish(|o| fields.fill(o)).await {
            // The call already happened; answering it is right. The open intent is closed as
            // `unknown` by the recovery at the next start.
            tracing::error!(error = %e, intent_seq = appended.seq, "audit outcome not written");
        }
        response
    }
}
