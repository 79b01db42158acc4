//! Virtual keys: which key a request presents, and whether it may pass (REFERENCE section 4).
//!
//! Tokens are never kept in clear: the table maps SHA-256 digests to keys, and the digest a
//! request presents is compared in constant time, so neither memory dumps nor response timing
//! give a token away. A config token may be given as `sha256:<hex>` (the persisted form).
//!
//! The table is built once from config and shared read-only by every core; the control plane
//! (keys from the admin API and stores) will swap it as a whole snapshot.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ErrorType, GatewayError};
use crate::http::head::Fields;

/// Headers that may carry a virtual key, in lookup order. `Bearer ` is optional in the first
/// and required in `authorization`.
pub const KEY_HEADERS: [&str; 4] = [
    "x-litellm-api-key",
    "authorization",
    "x-ditto-virtual-key",
    "x-api-key",
];

/// A virtual key as the data plane needs it.
#[derive(Debug)]
pub struct VirtualKey {
    pub id: String,
    pub enabled: bool,
    pub tenant_id: Option<String>,
    pub project_id: Option<String>,
    pub user_id: Option<String>,
    /// Backend index the key is pinned to, if any.
    pub route: Option<usize>,
    /// Scopes with a limit or budget that every request of this key is charged to: its own,
    /// then its tenant's, project's and user's.
    pub scopes: Vec<Arc<crate::control::ScopeInfo>>,
    /// Sections read by other parts (guardrails, cache, ...), as stored.
    pub extra: serde_json::Map<String, serde_json::Value>,
    pub digest: [u8; 32],
    /// `extra["guardrails"]`, compiled once per snapshot (`None`: no rule).
    pub guardrails: Option<Arc<crate::guardrails::Guardrails>>,
}

/// Every virtual key, by token digest.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_digest: ahash::AHashMap<[u8; 32], Arc<VirtualKey>>,
}

/// The key a request was admitted with, and the header that carried it (never forwarded).
#[derive(Debug, Clone)]
pub struct Admitted {
    pub key: Arc<VirtualKey>,
    pub carrier: &'static str,
}

/// Why a request was refused: 401 `authentication_error` for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    Missing,
    Unknown,
    Disabled,
}

impl Denial {
    pub fn to_error(self) -> GatewayError {
        let (code, message) = match self {
            Denial::Missing => (
                "missing_api_key",
                "a virtual key is required (Authorization: Bearer <key>)",
            ),
            Denial::Unknown => (
                "invalid_api_key",
                "unauthorized: the virtual key is not valid",
            ),
            Denial::Disabled => ("key_disabled", "the virtual key is disabled"),
        };
        GatewayError::new(401, ErrorType::Authentication, code, message)
    }
}

/// SHA-256 of a token.
pub fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl KeyTable {
    /// Build from keys; two keys with the same token are an error naming the second.
    pub fn from_keys(keys: impl IntoIterator<Item = Arc<VirtualKey>>) -> Result<KeyTable, String> {
        let mut by_digest = ahash::AHashMap::new();
        for key in keys {
            let id = key.id.clone();
            if by_digest.insert(key.digest, key).is_some() {
                return Err(format!("key \"{id}\": the same token as another key"));
            }
        }
        Ok(KeyTable { by_digest })
    }

    /// True when keys are configured, so every proxied request must present one.
    pub fn is_enforced(&self) -> bool {
        !self.by_digest.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The key a token belongs to (enabled or not).
    pub fn key_for_token(&self, token: &str) -> Option<Arc<VirtualKey>> {
        self.by_digest.get(&digest(token.as_bytes())).cloned()
    }

    /// Admit or refuse a request by its headers.
    pub fn authenticate(&self, fields: &Fields) -> Result<Admitted, Denial> {
        let (token, carrier) = presented(fields).ok_or(Denial::Missing)?;
        let d = digest(token);
        let key = self.by_digest.get(&d).ok_or(Denial::Unknown)?;
        // The map lookup found the slot by digest; confirm in constant time all the same, so
        // the answer's timing never depends on how much of a digest matched.
        if !bool::from(key.digest.ct_eq(&d)) {
            return Err(Denial::Unknown);
        }
        if !key.enabled {
            return Err(Denial::Disabled);
        }
        Ok(Admitted {
            key: key.clone(),
            carrier,
        })
    }
}

/// The token a request presents and the header it came in, following [`KEY_HEADERS`].
pub fn presented(fields: &Fields) -> Option<(&[u8], &'static str)> {
    for name in KEY_HEADERS {
        let Some(v) = fields.get(name) else { continue };
        let v = v.trim_ascii();
        let token = match strip_bearer(v) {
            Some(t) => t,
            // `Authorization` must be a bearer credential; the others may be the bare key.
            None if name == "authorization" => continue,
            None => v,
        };
        if !token.is_empty() {
            return Some((token, name));
        }
    }
    None
}

/// True when the field `name: value` is a key header whose key is `token`.
pub fn carries_token(name: &str, value: &[u8], token: &[u8]) -> bool {
    if !KEY_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
        return false;
    }
    let v = value.trim_ascii();
    strip_bearer(v).unwrap_or(v) == token
}

fn strip_bearer(v: &[u8]) -> Option<&[u8]> {
    (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::RequestHead;

    fn key(id: &str, token: &str, enabled: bool) -> Arc<VirtualKey> {
        let hash = crate::control::keys::token_hash(token).expect("hash");
        Arc::new(VirtualKey {
            id: id.into(),
            enabled,
            tenant_id: Some("t".into()),
            project_id: None,
            user_id: None,
            route: None,
            scopes: Vec::new(),
            extra: Default::default(),
            digest: crate::control::keys::hash_bytes(&hash).expect("digest"),
            guardrails: None,
        })
    }

    fn fields(headers: &str) -> Fields {
        let raw = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n{headers}\r\n");
        RequestHead::parse(raw.as_bytes())
            .expect("parse")
            .expect("complete")
            .0
            .fields
    }

    fn table() -> KeyTable {
        let hashed = format!("sha256:{}", hex::encode(digest(b"sk-hashed")));
        KeyTable::from_keys([
            key("a", "sk-a", true),
            key("off", "sk-off", false),
            key("h", &hashed, true),
        ])
        .expect("table")
    }

    #[test]
    fn lookup_order_and_carriers() {
        let t = table();
        let ok = |h: &str| {
            t.authenticate(&fields(h))
                .map(|a| (a.key.id.clone(), a.carrier))
        };
        assert_eq!(
            ok("Authorization: Bearer sk-a\r\n"),
            Ok(("a".into(), "authorization"))
        );
        assert_eq!(ok("x-api-key: sk-a\r\n"), Ok(("a".into(), "x-api-key")));
        assert_eq!(
            ok("X-Ditto-Virtual-Key: sk-a\r\n"),
            Ok(("a".into(), "x-ditto-virtual-key"))
        );
        assert_eq!(
            ok("x-litellm-api-key: Bearer sk-a\r\n"),
            Ok(("a".into(), "x-litellm-api-key"))
        );
        assert_eq!(
            ok("x-litellm-api-key: sk-a\r\n"),
            Ok(("a".into(), "x-litellm-api-key"))
        );
        // The first header in lookup order decides, even if a later one holds a valid key.
        assert_eq!(
            ok("Authorization: Bearer wrong\r\nx-litellm-api-key: sk-a\r\n"),
            Ok(("a".into(), "x-litellm-api-key"))
        );
        assert_eq!(
            ok("Authorization: Bearer wrong\r\nx-api-key: sk-a\r\n"),
            Err(Denial::Unknown)
        );
        // A non-bearer Authorization is skipped, not taken as a key.
        assert_eq!(
            ok("Authorization: Basic Zm9v\r\nx-api-key: sk-a\r\n"),
            Ok(("a".into(), "x-api-key"))
        );
    }

    #[test]
    fn missing_unknown_disabled_and_hashed_tokens() {
        let t = table();
        assert_eq!(t.authenticate(&fields("")).err(), Some(Denial::Missing));
        assert_eq!(
            t.authenticate(&fields("Authorization: Bearer \r\n")).err(),
            Some(Denial::Missing)
        );
        assert_eq!(
            t.authenticate(&fields("Authorization: Bearer sk-b\r\n"))
                .err(),
            Some(Denial::Unknown)
        );
        assert_eq!(
            t.authenticate(&fields("Authorization: Bearer sk-off\r\n"))
                .err(),
            Some(Denial::Disabled)
        );
        assert_eq!(
            t.authenticate(&fields("Authorization: Bearer sk-hashed\r\n"))
                .map(|a| a.key.id.clone()),
            Ok("h".to_string())
        );
        assert_eq!(Denial::Unknown.to_error().status, 401);
    }

    #[test]
    fn duplicate_tokens_are_refused_without_echoing_them() {
        let dup = format!("sha256:{}", hex::encode(digest(b"sk-a")));
        let e = KeyTable::from_keys([key("a", "sk-a", true), key("b", &dup, true)]).unwrap_err();
        assert!(e.contains("key \"b\""), "{e}");
        assert!(!e.contains("sk-a"), "errors never echo a token: {e}");
    }
}
