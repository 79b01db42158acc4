//! Limits that protect the gateway and its backends. Today: in-flight permits.

pub mod inflight;
pub mod rate;

pub use inflight::{InflightLimiter, InflightPermit};
