//! ratepay-gateway (crate docs written later).

pub mod audit;
pub mod crypto;
pub mod routes;
pub mod sandbox;
