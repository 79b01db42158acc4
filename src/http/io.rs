//! The thin I/O seam: everything the codec and proxy do with a socket goes through these few
//! functions, so a move from monoio to another completion-based runtime touches one file.
//!
//! monoio's `read` takes the buffer by value and fills it from its start, not from `len()`
//! (DESIGN.md pitfalls); [`read_append`] hides that by reading into the spare capacity.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

/// Anything we can read from and write to: plain TCP, TLS, test pipes.
pub trait Io: AsyncReadRent + AsyncWriteRent {}
impl<T: AsyncReadRent + AsyncWriteRent> Io for T {}

/// Read once, appending to `buf`; reserves `min_spare` bytes of room first. Returns the number
/// of bytes read, 0 on end of stream. If the future is dropped mid-read, `buf` is left empty:
/// the caller must then close the connection (the kernel may still complete the read).
pub async fn read_append<R: AsyncReadRent>(
    io: &mut R,
    buf: &mut BytesMut,
    min_spare: usize,
) -> io::Result<usize> {
    let mut owned = std::mem::take(buf);
    if owned.capacity() - owned.len() < min_spare {
        owned.reserve(min_spare);
    }
    let len = owned.len();
    let (res, slice) = io.read(owned.slice_mut(len..)).await;
    *buf = slice.into_inner();
    res
}

/// [`read_append`] bounded by `limit`; a timeout is reported as `ErrorKind::TimedOut`.
pub async fn read_append_timeout<R: AsyncReadRent>(
    io: &mut R,
    buf: &mut BytesMut,
    min_spare: usize,
    limit: Duration,
) -> io::Result<usize> {
    match monoio::time::timeout(limit, read_append(io, buf, min_spare)).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Write all of `data`.
pub async fn write_all<W: AsyncWriteRent>(io: &mut W, data: Bytes) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let (res, _) = io.write_all(data).await;
    res.map(|_| ())
}

/// [`write_all`] bounded by `limit`; a timeout is reported as `ErrorKind::TimedOut`.
pub async fn write_all_timeout<W: AsyncWriteRent>(
    io: &mut W,
    data: Bytes,
    limit: Duration,
) -> io::Result<()> {
    match monoio::time::timeout(limit, write_all(io, data)).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}
