//! Header rewriting in both directions, written straight into the outgoing head buffer.
//!
//! Upstream-bound: drop hop-by-hop fields (RFC 9110 7.6.1, plus any the client's `Connection`
//! names), our own `x-ditto-*` controls, framing (we set it), `Host`, `Expect` (we answer
//! 100-continue ourselves) and `Proxy-Authorization`; backend `headers` replace client fields
//! of the same name (Mode A); the client's `Authorization` passes when the backend sets none
//! (Mode B). Client-bound: drop hop-by-hop and framing, add the request-id and backend headers.

use std::fmt::Write;

use bytes::BytesMut;

use crate::http::{RequestHead, ResponseHead};
use crate::upstream::Backend;

/// Fields that describe one connection or the framing, never forwarded: we recompute them.
/// The config refuses them as injected backend headers for the same reason.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "proxy-authenticate",
];

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// True when the `Connection` field of `fields` lists `name` (it is then hop-by-hop too).
fn named_by_connection(connection: Option<&[u8]>, name: &str) -> bool {
    connection.is_some_and(|v| {
        v.split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    })
}

/// How the body of an outgoing message is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFraming {
    None,
    Length(u64),
    Chunked,
}

fn write_framing(out: &mut BytesMut, f: OutFraming) {
    match f {
        OutFraming::None => {}
        OutFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        OutFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
}

/// Write the upstream request head for `head`, sent to `backend` at `path` (already `/v1/...`).
pub fn upstream_request(
    out: &mut BytesMut,
    head: &RequestHead,
    backend: &Backend,
    path: &str,
    request_id: &str,
    strip: Option<&[u8]>,
    framing: OutFraming,
) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    backend.write_target(&mut ByteWriter(out), path, head.query());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(backend.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    let connection = head.fields.get("connection");
    for (name, value) in head.fields.iter() {
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("host")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("proxy-authorization")
            || name.eq_ignore_ascii_case("x-request-id")
            || starts_with_ignore_case(name, "x-ditto-")
            || named_by_connection(connection, name)
            || (head.probe.traced() && name.eq_ignore_ascii_case("traceparent"))
            // Any key header carrying the virtual key: the gateway's credential, never the
            // upstream's (a client may send it in more than one header).
            || strip.is_some_and(|token| crate::auth::carries_token(name, value, token))
            || backend
                .headers
                .iter()
                .any(|(k, _)| name.eq_ignore_ascii_case(k))
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    write_backend_headers(out, backend);
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    head.probe.write_traceparent(out);
    write_framing(out, framing);
    out.extend_from_slice(b"\r\n");
}

/// Write a GET request of the gateway's own to `backend` at `path`: the backend's headers and
/// the request id, nothing from any client.
pub fn own_request(out: &mut BytesMut, backend: &Backend, path: &str, request_id: &str) {
    out.extend_from_slice(b"GET ");
    backend.write_target(&mut ByteWriter(out), path, None);
    let _ = write!(
        out,
        " HTTP/1.1\r\nhost: {}\r\naccept: application/json\r\n",
        backend.authority
    );
    write_backend_headers(out, backend);
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// The backend's configured headers (credentials, organisation ...), one line each.
fn write_backend_headers(out: &mut BytesMut, backend: &Backend) {
    for (k, v) in &backend.headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Write the client response head for an upstream response. `connection_field` is the whole
/// `Connection` line to send, or empty (see [`crate::http::Version::connection_field`]).
pub fn client_response(
    out: &mut BytesMut,
    resp: &ResponseHead,
    request_id: &str,
    backend: &str,
    framing: OutFraming,
    keep_upstream_length: bool,
    connection_field: &str,
) {
    let reason = resp.reason();
    let reason = if reason.is_empty() {
        crate::error::reason_phrase(resp.status)
    } else {
        reason
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(resp.status).as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let connection = resp.fields.get("connection");
    for (name, value) in resp.fields.iter() {
        let keep_length = keep_upstream_length && name.eq_ignore_ascii_case("content-length");
        if (is_hop_by_hop(name) && !keep_length) || named_by_connection(connection, name) {
            continue;
        }
        if name.eq_ignore_ascii_case("x-request-id") {
            // The backend's own id stays visible under another name; ours is the x-request-id.
            out.extend_from_slice(b"x-upstream-request-id: ");
        } else if starts_with_ignore_case(name, "x-ditto-") {
            continue;
        } else {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
        }
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in [
        (&b"x-request-id: "[..], request_id),
        (b"x-ditto-request-id: ", request_id),
        (b"x-ditto-backend: ", backend),
    ] {
        out.extend_from_slice(name);
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    write_framing(out, framing);
    out.extend_from_slice(connection_field.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// `fmt::Write` into a `BytesMut` without the intermediate `String`.
struct ByteWriter<'a>(&'a mut BytesMut);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    fn backend(headers: &[(&str, &str)]) -> Backend {
        let c = BackendConfig {
            name: "b".into(),
            base_url: Some("http://127.0.0.1:9/v1".into()),
            max_in_flight: None,
            timeout_seconds: None,
            connect_timeout_seconds: None,
            idle_ttl_seconds: None,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            query_params: vec![("api-version".into(), "1".into())],
            model_map: vec![],
            provider: None,
            provider_config: None,
        };
        Backend::from_config(0, &c).expect("backend")
    }

    fn request(raw: &str) -> RequestHead {
        RequestHead::parse(raw.as_bytes())
            .expect("parse")
            .expect("complete")
            .0
    }

    #[test]
    fn upstream_head_drops_hop_by_hop_and_applies_mode_a() {
        let head = request(
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n\
             Authorization: Bearer client\r\nContent-Length: 2\r\nX-Ditto-Debug: 1\r\nX-Request-Id: abc\r\n\
             Proxy-Authorization: p\r\nExpect: 100-continue\r\nTE: trailers\r\nAccept: */*\r\n\r\n",
        );
        let mut out = BytesMut::new();
        let b = backend(&[("Authorization", "Bearer backend")]);
        upstream_request(
            &mut out,
            &head,
            &b,
            "/v1/chat/completions",
            "abc",
            None,
            OutFraming::Length(2),
        );
        let s = String::from_utf8(out.to_vec()).expect("utf8");
        assert!(
            s.starts_with(
                "POST /v1/chat/completions?x=1&api-version=1 HTTP/1.1\r\nhost: 127.0.0.1:9\r\n"
            ),
            "{s}"
        );
        for gone in [
            "Connection",
            "X-Secret",
            "Bearer client",
            "X-Ditto",
            "Proxy-Authorization",
            "Expect",
            "TE:",
            "Host: gw",
        ] {
            assert!(!s.contains(gone), "{gone} leaked: {s}");
        }
        assert!(s.contains("authorization: Bearer backend\r\n"));
        assert!(s.contains("Accept: */*\r\n"));
        assert!(s.contains("x-request-id: abc\r\n"));
        assert!(s.ends_with("content-length: 2\r\n\r\n"));
        assert_eq!(
            s.matches("content-length").count() + s.matches("Content-Length").count(),
            1
        );
    }

    #[test]
    fn mode_b_forwards_the_client_authorization() {
        let head =
            request("GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer client\r\n\r\n");
        let mut out = BytesMut::new();
        upstream_request(
            &mut out,
            &head,
            &backend(&[]),
            "/v1/models",
            "id",
            None,
            OutFraming::None,
        );
        let s = String::from_utf8(out.to_vec()).expect("utf8");
        assert!(s.contains("Authorization: Bearer client\r\n"));
    }

    #[test]
    fn client_head_replaces_framing_and_adds_ids() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nX-Request-Id: up-1\r\n\r\n";
        let (resp, _) = ResponseHead::parse(raw.as_bytes(), false)
            .expect("parse")
            .expect("complete");
        let mut out = BytesMut::new();
        client_response(
            &mut out,
            &resp,
            "rid",
            "primary",
            OutFraming::Chunked,
            false,
            "",
        );
        let s = String::from_utf8(out.to_vec()).expect("utf8");
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("Content-Type: text/event-stream\r\n"));
        assert!(s.contains("x-upstream-request-id: up-1\r\n"));
        assert!(s.contains(
            "x-request-id: rid\r\nx-ditto-request-id: rid\r\nx-ditto-backend: primary\r\n"
        ));
        assert_eq!(s.matches("chunked").count(), 1);
        assert!(!s.contains("Connection"));
    }
}
