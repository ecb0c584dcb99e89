//! Start-up recovery of the audit log: intents a previous run left without an outcome (the
//! gateway died mid-call) are closed, after asking Ratepay what became of them.
//!
//! Runs once in [`crate::gateway::Gateway::build`], before the listeners open. For each open
//! intent the gateway lists the transaction's resources of that kind at Ratepay (cancellations,
//! captures or refunds). When one carries the intent's `partner_operation_id`, the call is
//! settled as `success` with its id. Otherwise the outcome stays `unknown`, and its `error`
//! records what Ratepay listed, so whoever reviews it has the facts at hand. Ratepay being
//! unreachable never blocks start-up: the intent is closed as `unknown` and says so.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::{
    audit::{AuditEntry, AuditLog, AuditRecord, Outcome, OutcomeKind},
    client::HttpClient,
    error::BuildError,
    token::TokenSource,
};

/// How to ask Ratepay about an open intent.
pub struct Ratepay<'a> {
    /// The pooled client.
    pub client: &'a HttpClient,
    /// Origin of the Payment API.
    pub origin: &'a Uri,
    /// Token source for the Payment API audience.
    pub token: &'a TokenSource,
    /// Per-lookup timeout.
    pub timeout: Duration,
}

/// The list resource and id field of an audited operation.
fn resource(operation: &str) -> Option<(&'static str, &'static str)> {
    match operation {
        "payment.cancellations.create" => Some(("cancellations", "ratepay_cancellation_id")),
        "payment.captures.create" => Some(("captures", "ratepay_capture_id")),
        "payment.refunds.create" => Some(("refunds", "ratepay_refund_id")),
        _ => None,
    }
}

/// What Ratepay's list says about one intent.
#[derive(Debug, PartialEq, Eq)]
pub enum Finding {
    /// A listed resource carries the intent's `partner_operation_id`: this is its id.
    Matched(String),
    /// The ids Ratepay lists, none attributable to the intent.
    Listed(Vec<String>),
}

/// Matches an intent against Ratepay's list body (`_embedded.<kind>[]`).
pub fn settle(intent: &AuditRecord, list: &Value, kind: &str, id_field: &str) -> Finding {
    let items = list["_embedded"][kind]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(op_id) = &intent.partner_operation_id {
        for item in &items {
            if item["partner_operation_id"].as_str() == Some(op_id) {
                if let Some(id) = item[id_field].as_str() {
                    return Finding::Matched(id.to_owned());
                }
            }
        }
    }
    Finding::Listed(
        items
            .iter()
            .filter_map(|i| i[id_field].as_str().map(str::to_owned))
            .collect(),
    )
}

async fn ask(r: &Ratepay<'_>, intent: &AuditRecord, kind: &str) -> Result<Value, String> {
    let bearer = r.token.bearer().await.map_err(|e| e.to_string())?;
    let uri: Uri = format!(
        "{}/transaction/management/v2/transactions/{}/{kind}",
        r.origin.to_string().trim_end_matches('/'),
        intent.ratepay_transaction_id.as_deref().unwrap_or_default()
    )
    .parse()
    .map_err(|e| format!("lookup URI: {e}"))?;
    let mut req = Request::get(uri)
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    req.headers_mut()
        .insert(header::AUTHORIZATION, bearer.header);
    if let Some(p) = &intent.partner {
        if let Ok(v) = http::HeaderValue::from_str(p) {
            req.headers_mut().insert("x-partner", v);
        }
    }
    let resp = tokio::time::timeout(r.timeout, r.client.request(req))
        .await
        .map_err(|_| "Ratepay did not answer in time".to_owned())?
        .map_err(|e| crate::client::describe_client_error(&e))?;
    let status = resp.status();
    let body = tokio::time::timeout(r.timeout, resp.into_body().collect())
        .await
        .map_err(|_| "Ratepay's answer did not arrive in time".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("Ratepay answered {}", status.as_u16()));
    }
    serde_json::from_slice(&body).map_err(|_| "Ratepay's list was not JSON".to_owned())
}

/// Closes every open intent; `ratepay` is `None` when no Payment API is configured.
pub async fn recover(
    log: &AuditLog,
    open: &[AuditRecord],
    ratepay: Option<&Ratepay<'_>>,
) -> Result<(), BuildError> {
    for intent in open {
        let Some(mut outcome) = Outcome::for_open_intent(intent, OutcomeKind::Unknown) else {
            continue;
        };
        let stopped = "the gateway stopped before the outcome was recorded";
        outcome.error = Some(match (ratepay, resource(intent.operation.as_deref().unwrap_or_default())) {
            (Some(r), Some((kind, id_field))) => match ask(r, intent, kind).await {
                Ok(list) => match settle(intent, &list, kind, id_field) {
                    Finding::Matched(id) => {
                        outcome.outcome = OutcomeKind::Success;
                        outcome.ratepay_cancellation_id = Some(id);
                        format!("{stopped}; settled from Ratepay's {kind} list by partner_operation_id")
                    }
                    Finding::Listed(ids) => format!(
                        "{stopped}; Ratepay lists {} {kind} for the transaction ({}), none attributable to this intent",
                        ids.len(),
                        ids.join(", ")
                    ),
                },
                Err(e) => format!("{stopped}; asking Ratepay for the transaction's {kind} failed: {e}"),
            },
            _ => format!("{stopped}; check the transaction at Ratepay"),
        });
        log.append(AuditEntry::Outcome(outcome))
            .await
            .map_err(|e| BuildError(format!("closing an open audit intent: {e}")))?;
    }
    if !open.is_empty() {
        tracing::warn!(
            count = open.len(),
            "closed audit intents left open by a previous run"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(op_id: Option<&str>) -> AuditRecord {
        let line = serde_json::json!({
            "seq": 1, "ts": "2026-11-21T08:00:00.000Z", "prev": "0".repeat(64), "kind": "intent",
            "request_id": "r", "caller": "c", "operation": "payment.cancellations.create",
            "ratepay_transaction_id": "t", "partner_operation_id": op_id,
        });
        let mut v = line;
        if op_id.is_none() {
            v.as_object_mut().unwrap().remove("partner_operation_id");
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn settles_by_partner_operation_id_or_lists_what_ratepay_has() {
        let list = serde_json::json!({"_embedded": {"cancellations": [
            {"ratepay_cancellation_id": "c1", "partner_operation_id": "op-1"},
            {"ratepay_cancellation_id": "c2"}
        ]}});
        let id = "ratepay_cancellation_id";
        assert_eq!(
            settle(&intent(Some("op-1")), &list, "cancellations", id),
            Finding::Matched("c1".into())
        );
        assert_eq!(
            settle(&intent(Some("op-9")), &list, "cancellations", id),
            Finding::Listed(vec!["c1".into(), "c2".into()])
        );
        assert_eq!(
            settle(&intent(None), &list, "cancellations", id),
            Finding::Listed(vec!["c1".into(), "c2".into()])
        );
        assert_eq!(
            settle(&intent(None), &serde_json::json!({}), "cancellations", id),
            Finding::Listed(vec![])
        );
    }
}
