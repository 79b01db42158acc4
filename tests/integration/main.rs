//! Integration tests: the real `ditto-gateway` binary against the real `mock-upstream`, over
//! real sockets. One test binary (`cargo test --test integration`), one module per concern.
//!
//! The gateway runs with whatever `MONOIO_FORCE_LEGACY_DRIVER` this process has, so running the
//! suite twice (with and without it) covers both the io_uring and the epoll driver.

mod harness;

mod cache;
mod cli;
mod codec;
mod control;
mod faults;
mod guardrails;
mod keys;
mod limits;
mod observability;
mod pool;
mod proxy;
mod replicas;
mod resilience;
mod review;
mod routing;
mod shutdown;
mod streaming;
mod tls;
mod translate;
