//! Our HTTP/1.1 codec, server and client side, on httparse.
//!
//! monoio-http was measured and rejected (DESIGN.md point 2): it holds small writes, reads whole
//! chunked responses before returning and buffers whole bodies. This codec only parses heads and
//! frames bodies; the proxy moves the body bytes itself, as `Bytes`, as soon as they arrive.
//!
//! - [`head`]: request and response heads, framing and keep-alive decisions, smuggling checks.
//! - [`chunked`]: a streaming, zero-copy chunked-transfer decoder.
//! - [`limits`]: every size and time cap.
//! - [`io`]: the thin I/O seam (read-append, write-all with timeouts).

pub mod chunked;
pub mod head;
pub mod io;
pub mod limits;

pub use chunked::{ChunkError, ChunkedDecoder};
pub use head::{BodyFraming, HeadError, Method, RequestHead, ResponseHead, Version};
