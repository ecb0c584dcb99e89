//! Which code answers each operation: one exhaustive `match` on the route table's
//! [`OperationId`], so an operation added to `routes.rs` does not compile until the sandbox
//! answers it. Called by the HTTP front (`http.rs`) once a call is authenticated, read and past
//! idempotency.

use http::StatusCode;
use time::OffsetDateTime;

use super::{
    call::Call,
    hpp, payment,
    reply::{decline, Reply},
    state::Sandbox,
};
use crate::routes::OperationId;

/// Runs one Payment, OTP, Status or HPP operation.
pub(crate) fn execute(sandbox: &Sandbox, op: OperationId, call: &Call<'_>) -> Reply {
    let now = OffsetDateTime::now_utc();
    match op {
        OperationId::TransactionsCreate => payment::authorize(sandbox, call, now),
        OperationId::TransactionsGet => payment::transaction(sandbox, call),
        OperationId::TransactionsUpdate => payment::update(sandbox, call, now),
        OperationId::FollowUpsCreate(k) => payment::follow_up(sandbox, call, k.into(), now),
        OperationId::FollowUpsList(k) => payment::follow_up_list(sandbox, call, k.into()),
        OperationId::FollowUpsGet(k) => payment::follow_up_get(sandbox, call, k.into()),
        OperationId::ShippingInformationCreate => payment::shipping_information(sandbox, call, now),
        OperationId::OtpVerify => payment::verify(sandbox, call, now),
        OperationId::OtpRegenerate => payment::regenerate(sandbox, call, now),
        OperationId::StatusTransactionsGet => payment::status(sandbox, call),
        OperationId::HppSessionsCreate => hpp::create(sandbox, call, now),
        OperationId::HppSessionRecordsList => hpp::records(sandbox, call, now),
        OperationId::HppSessionRecordsGet => hpp::record(sandbox, call, now),
        // The gateway's own endpoint: not in the route table, so never routed here.
        OperationId::GatewayOauthToken => decline(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            &["NOT_FOUND"],
            "unknown operation",
        ),
    }
}
