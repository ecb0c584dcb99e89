//! Payment API v2, One Time Passcode and Transaction Status API operations.
//!
//! Parses and validates requests (400 `INVALID_JSON` / `INVALID_FIELDS`), finds the caller's
//! transaction (404 `TRANSACTION_NOT_FOUND`, also for other clients' or partners'), asks the
//! ledger (`ledger.rs`) whether the operation is allowed (422 with Ratepay's reason) and
//! renders `application/hal+json` resources with `_links.self.href`.
//!
//! Ratepay's integration test e-mails drive outcomes of an authorization
//! (`buyer.contact.email`): `otp_required@ratepay.com` → 202 `OTP_REQUIRED`;
//! `buyer_identity@`, `payment_attribute@`, `risk_decision@`, `transaction_risk@ratepay.com` →
//! 422 decline of that category. The sandbox's one-time passcode is always [`OTP_CODE`].
//!
//! Files: `validate.rs` (field rules shared by the operations) · `authorize.rs` (create and
//! change a transaction) · `follow_ups.rs` (authorizations, captures, refunds, cancellations,
//! shipping information) · `otp.rs` (the passcode) · `render.rs` (resources as Ratepay renders
//! them, and the reads). The sandbox's `dispatch.rs` calls the operations re-exported here.

mod authorize;
mod follow_ups;
mod otp;
mod render;
mod validate;

use http::StatusCode;
use time::Duration;

pub(crate) use authorize::{authorize, update};
pub(crate) use follow_ups::{follow_up, follow_up_get, follow_up_list, shipping_information};
pub(crate) use otp::{regenerate, verify};
pub(crate) use render::{status, transaction};

use crate::sandbox::{
    call::Call,
    ledger::Transaction,
    reply::{decline, Reply},
    state::{lock, Inner, Sandbox},
};

/// Path prefix of transaction resources.
const BASE: &str = "/transaction/management/v2/transactions";
/// Path prefix of the One Time Passcode API.
const OTP_BASE: &str = "/transaction/management/2fa/v1";
/// The passcode the sandbox "sends" to every buyer.
pub const OTP_CODE: &str = "123456";
/// Wrong passcodes allowed before the transaction is declined.
const OTP_ATTEMPTS: u32 = 3;
/// Passcode regenerations allowed.
const OTP_REGENERATIONS: u32 = 3;
/// Default `authorization_expires` when the request gives none (Ratepay: "a default expiry
/// time is generated"; its length is not documented).
const DEFAULT_EXPIRY: Duration = Duration::days(30);
/// Latest `authorization_expires` accepted, counted from now. Ratepay publishes no maximum;
/// a year bounds the obvious mistakes (a year typed wrong, seconds sent as milliseconds).
pub const MAX_EXPIRY_DAYS: i64 = 365;

fn tx_not_found() -> Reply {
    decline(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        &["TRANSACTION_NOT_FOUND"],
        "no such transaction for this client and partner",
    )
}

/// Runs `f` on the caller's transaction from the path, or answers 404.
fn with_tx(
    sandbox: &Sandbox,
    call: &Call<'_>,
    f: impl FnOnce(&mut Transaction, &mut Inner) -> Reply,
) -> Reply {
    let Some(id) = call.params.transaction_id.as_deref() else {
        return tx_not_found();
    };
    let mut guard = lock(&sandbox.inner);
    let inner = &mut *guard;
    // Take the transaction out while `f` runs so that `f` may also draw ids from `inner`.
    let Some(tx) = inner.ledger.get_mut(id, call.client, call.partner) else {
        return tx_not_found();
    };
    let mut tx = tx.clone();
    let reply = f(&mut tx, inner);
    inner.ledger.insert(tx);
    reply
}
