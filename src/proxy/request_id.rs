//! Request ids: the client's `x-request-id` when it is sane, else a new one.
//!
//! A new id is a per-process random prefix plus the core number and a per-core counter: unique
//! without any shared counter or syscall, and cheap enough for every request.

use std::cell::Cell;
use std::fmt::Write;

/// Longest client-supplied id we reuse; longer ones are replaced (they end up in logs).
const MAX_CLIENT_ID_LEN: usize = 128;

/// One core's id generator.
pub struct RequestIds {
    /// `ditto-<16 hex>-<2 hex>-`, made once: an id is this plus 12 hex digits.
    head: [u8; HEAD_LEN],
    next: Cell<u64>,
}

const HEAD_LEN: usize = 26;

impl RequestIds {
    pub fn new(core: usize) -> RequestIds {
        let prefix = ahash::RandomState::new().hash_one(core);
        let mut text = String::with_capacity(HEAD_LEN);
        let _ = write!(text, "ditto-{prefix:016x}-{:02x}-", core & 0xff);
        let mut head = [0u8; HEAD_LEN];
        head.copy_from_slice(&text.as_bytes()[..HEAD_LEN]);
        RequestIds {
            head,
            next: Cell::new(0),
        }
    }

    /// A fresh id such as `ditto-5f0c9a1b2c3d4e5f-01-000000000001` (the counter in the last
    /// 12 hex digits). Written by hand: `core::fmt` would cost more than the rest of the id.
    pub fn next_id(&self) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.get().wrapping_add(1);
        self.next.set(n);
        let mut s = RequestId::empty();
        s.buf[..HEAD_LEN].copy_from_slice(&self.head);
        for i in 0..12 {
            s.buf[HEAD_LEN + i] = HEX[((n >> (4 * (11 - i))) & 0xf) as usize];
        }
        s.len = (HEAD_LEN + 12) as u8;
        s
    }

    /// The client's id if it is 1..=128 visible ASCII characters, else a fresh one.
    pub fn from_client_or_new(&self, client: Option<&[u8]>) -> RequestId {
        match client {
            Some(v) if is_valid_id(v) => {
                let mut id = RequestId::empty();
                id.buf[..v.len()].copy_from_slice(v);
                id.len = v.len() as u8;
                id
            }
            _ => self.next_id(),
        }
    }
}

/// A request id held inline (no allocation per request): at most [`MAX_CLIENT_ID_LEN`]
/// visible ASCII bytes. Derefs to `&str`.
#[derive(Clone, Copy)]
pub struct RequestId {
    buf: [u8; MAX_CLIENT_ID_LEN],
    len: u8,
}

impl RequestId {
    fn empty() -> RequestId {
        RequestId {
            buf: [0; MAX_CLIENT_ID_LEN],
            len: 0,
        }
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        // Only visible ASCII is ever stored (checked or generated), so this cannot fail.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

impl std::fmt::Write for RequestId {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let start = self.len as usize;
        let end = start + s.len();
        if end > MAX_CLIENT_ID_LEN || !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(std::fmt::Error);
        }
        self.buf[start..end].copy_from_slice(s.as_bytes());
        self.len = end as u8;
        Ok(())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// Visible ASCII only: an id is echoed in headers and logs, so no spaces or control bytes.
pub fn is_valid_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_CLIENT_ID_LEN && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_client_ids_are_reused_when_sane() {
        let ids = RequestIds::new(1);
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(&*a, &*b);
        assert!(a.starts_with("ditto-"));
        assert_eq!(&*ids.from_client_or_new(Some(b"abc-123")), "abc-123");
        assert_ne!(&*ids.from_client_or_new(Some(b"has space")), "has space");
        assert_ne!(&*ids.from_client_or_new(Some(b"")), "");
        let long = vec![b'a'; 200];
        assert_eq!(ids.from_client_or_new(Some(&long)).len(), a.len());
    }

    #[test]
    fn a_new_id_is_the_core_head_and_twelve_hex_digits() {
        let ids = RequestIds::new(0x1ab);
        ids.next.set(0xabc_def0_1233);
        let id = ids.next_id();
        assert_eq!(id.len(), 38);
        assert!(
            id.starts_with("ditto-") && id.ends_with("-ab-0abcdef01234"),
            "{}",
            &*id
        );
        assert!(id[6..22].bytes().all(|b| b.is_ascii_hexdigit()));
        // The access log's fast path knows this shape.
        assert!(crate::log::redact::is_hex_id(&id));
    }
}
