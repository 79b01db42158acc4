//! Limits that protect the gateway and its backends. Today: in-flight permits.

pub mod inflight;
pub mod quota;

pub use inflight::{InflightLimiter, InflightPermit};
