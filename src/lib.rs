//! ratepay-gateway (crate docs written later).

pub mod crypto;
pub mod routes;
pub mod sandbox;
