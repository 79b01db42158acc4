//! Everything about talking to backends: what a backend is ([`backend`]), where it lives
//! ([`resolve`], off the hot path), how we connect ([`connector`], [`tls`]), the connection
//! type ([`conn`]) and the per-core keep-alive pool ([`pool`]).

pub mod backend;
pub mod conn;
pub mod connector;
pub mod pool;
pub mod provider;
pub mod resolve;
pub mod tls;

pub use backend::Backend;
pub use conn::{UpConn, UpStream};
pub use pool::Pool;
