//! The admin API over HTTP: who is calling (admin, read-only or tenant token), the JSON body,
//! and the answer. What each call does is decided on the control plane
//! ([`crate::control::admin`]), which owns the state it changes.
//!
//! The API exists only when a token is configured (else these paths are 404, as in the
//! original). Tokens are held as SHA-256 digests and every configured token is compared in
//! constant time, so neither timing nor memory gives one away.

use bytes::BytesMut;
use monoio::net::TcpStream;
use subtle::ConstantTimeEq;

use super::body::{self, BodyError};
use super::{reply_error, reply_json, After, Core};
use crate::control::{AdminRequest, Role};
use crate::error::{ErrorType, GatewayError};
use crate::http::RequestHead;

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// The configured admin tokens, as digests.
#[derive(Debug, Clone, Default)]
pub struct AdminTokens {
    admin: Option<[u8; 32]>,
    read: Option<[u8; 32]>,
    /// (tenant, digest, may write)
    tenants: Vec<(String, [u8; 32], bool)>,
}

impl AdminTokens {
    pub fn new(
        admin: Option<&str>,
        read: Option<&str>,
        tenants: &[(String, String, bool)],
    ) -> AdminTokens {
        let d = |t: &str| crate::auth::digest(t.as_bytes());
        AdminTokens {
            admin: admin.map(d),
            read: read.map(d),
            tenants: tenants
                .iter()
                .map(|(tenant, token, write)| (tenant.clone(), d(token), *write))
                .collect(),
        }
    }

    /// True when any token is set: the API is mounted.
    pub fn is_enabled(&self) -> bool {
        self.admin.is_some() || self.read.is_some() || !self.tenants.is_empty()
    }

    /// The role a presented token has. Every configured token is compared (no early exit),
    /// so the time taken does not tell which one nearly matched.
    pub fn role(&self, token: &[u8]) -> Option<Role> {
        let d = crate::auth::digest(token);
        let eq = |x: &Option<[u8; 32]>| x.is_some_and(|x| bool::from(x.ct_eq(&d)));
        let mut found = None;
        if eq(&self.admin) {
            found = Some(Role::Admin);
        }
        if eq(&self.read) && found.is_none() {
            found = Some(Role::Read);
        }
        for (tenant, digest, write) in &self.tenants {
            if bool::from(digest.ct_eq(&d)) && found.is_none() {
                found = Some(Role::Tenant {
                    tenant: tenant.clone(),
                    write: *write,
                });
            }
        }
        found
    }
}

/// Paths served by the admin API (original `/admin/*` and LiteLLM's `/key/*`).
pub fn is_admin_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/") || path == "/key" || path.starts_with("/key/")
}

fn admin_error(status: u16, code: &'static str, message: impl Into<String>) -> GatewayError {
    let etype = if status == 401 {
        ErrorType::Authentication
    } else if status == 403 {
        ErrorType::Policy
    } else {
        ErrorType::InvalidRequest
    };
    GatewayError::new(status, etype, code, message)
}

/// The token of an admin call: `Authorization: Bearer` or `x-admin-token`.
fn presented(head: &RequestHead) -> Option<&[u8]> {
    if let Some(v) = head.fields.get("authorization") {
        let v = v.trim_ascii();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(v[7..].trim_ascii());
        }
    }
    head.fields
        .get("x-admin-token")
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Serve one admin call.
pub async fn handle(
    core: &Core,
    client: &mut TcpStream,
    cbuf: &mut BytesMut,
    head: &RequestHead,
    request_id: &str,
) -> After {
    let tokens = &core.gw.admin;
    let unread = head.framing.has_body();
    if !tokens.is_enabled() {
        let e = GatewayError::not_found(format!(
            "no route for {} {} (the admin API needs --admin-token)",
            head.method.as_str(),
            head.path()
        ));
        return reply_error(client, head, request_id, e, unread).await;
    }
    let role = match presented(head).map(|t| tokens.role(t)) {
        Some(Some(role)) => role,
        Some(None) => {
            let e = admin_error(401, "invalid_admin_token", "the admin token is not valid");
            return reply_error(client, head, request_id, e, unread).await;
        }
        None => {
            let e = admin_error(
                401,
                "missing_admin_token",
                "an admin token is required (Authorization: Bearer <token> or x-admin-token)",
            );
            return reply_error(client, head, request_id, e, unread).await;
        }
    };
    let method = head.method.as_str().to_string();
    if method != "GET" && !role.can_write() {
        let e = admin_error(403, "read_only_token", "this admin token is read-only");
        return reply_error(client, head, request_id, e, unread).await;
    }
    let body = if unread {
        match body::read_whole(client, cbuf, head, MAX_ADMIN_BODY).await {
            Ok(b) if b.is_empty() => None,
            Ok(b) => match serde_json::from_slice::<serde_json::Value>(&b) {
                Ok(v) => Some(v),
                Err(e) => {
                    let e = admin_error(
                        400,
                        "invalid_json",
                        format!("the body is not valid JSON: {e}"),
                    );
                    return reply_error(client, head, request_id, e, false).await;
                }
            },
            Err(BodyError::Closed) => return After::Close,
            Err(BodyError::TooLarge) => {
                let e = super::body_too_large(MAX_ADMIN_BODY);
                return reply_error(client, head, request_id, e, true).await;
            }
            Err(BodyError::Timeout) => {
                let e = admin_error(408, "request_timeout", "timed out reading the body");
                return reply_error(client, head, request_id, e, true).await;
            }
            Err(BodyError::Malformed(m)) => {
                let e = admin_error(400, "invalid_request", m);
                return reply_error(client, head, request_id, e, true).await;
            }
        }
    } else {
        None
    };
    if head.path() == "/admin/proxy_cache/purge" {
        return crate::cache::serve::purge(core, client, head, request_id, &role).await;
    }
    let target = head.target();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let reply = core
        .gw
        .control
        .admin(AdminRequest {
            method,
            path,
            query,
            body,
            role,
        })
        .await;
    let out = serde_json::to_vec(&reply.body).unwrap_or_default();
    reply_json(client, head, request_id, reply.status, &out, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_token() {
        let t = AdminTokens::new(
            Some("adm"),
            Some("ro"),
            &[
                ("acme".into(), "ten".into(), true),
                ("beta".into(), "tro".into(), false),
            ],
        );
        assert_eq!(t.role(b"adm"), Some(Role::Admin));
        assert_eq!(t.role(b"ro"), Some(Role::Read));
        assert_eq!(
            t.role(b"ten"),
            Some(Role::Tenant {
                tenant: "acme".into(),
                write: true
            })
        );
        assert!(!t.role(b"tro").is_some_and(|r| r.can_write()));
        assert_eq!(t.role(b"nope"), None);
        assert!(!AdminTokens::default().is_enabled());
        assert!(is_admin_path("/admin/keys") && is_admin_path("/key/generate"));
        assert!(!is_admin_path("/keys") && !is_admin_path("/administrator"));
    }
}
