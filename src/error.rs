//! Gateway-made errors: one status, an OpenAI-shaped JSON body, and the request-id headers.
//!
//! Upstream errors pass through unchanged; only errors the gateway itself decides on are built
//! here, so a client can always tell them apart by `x-ditto-backend` being absent or by `code`.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

/// The OpenAI error `type`s the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    InvalidRequest,
    Authentication,
    RateLimit,
    Policy,
    InsufficientQuota,
    Api,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequest => "invalid_request_error",
            ErrorType::Authentication => "authentication_error",
            ErrorType::RateLimit => "rate_limit_error",
            ErrorType::Policy => "policy_error",
            ErrorType::InsufficientQuota => "insufficient_quota",
            ErrorType::Api => "api_error",
        }
    }
}

/// An error the gateway answers itself.
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub status: u16,
    pub etype: ErrorType,
    /// Machine-readable code, e.g. `backend_timeout`, `inflight_limit`.
    pub code: &'static str,
    pub message: String,
    /// The backend involved, if any (sent as `x-ditto-backend`).
    pub backend: Option<String>,
    /// Extra response headers (rate-limit state, `retry-after`); names are lower-case
    /// constants, values are built by the gateway (never from client input).
    pub headers: Vec<(&'static str, String)>,
}

impl GatewayError {
    pub fn new(
        status: u16,
        etype: ErrorType,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        GatewayError {
            status,
            etype,
            code,
            message: message.into(),
            backend: None,
            headers: Vec::new(),
        }
    }

    /// Add a response header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn with_backend(mut self, backend: &str) -> Self {
        self.backend = Some(backend.to_string());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, ErrorType::InvalidRequest, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, ErrorType::InvalidRequest, "not_found", message)
    }

    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(502, ErrorType::Api, "backend_error", message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, ErrorType::Api, "backend_timeout", message)
    }

    /// The JSON body: `{"error":{"message","type","param","code"}}`.
    pub fn body(&self) -> Bytes {
        let v = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.etype.as_str(),
                "param": null,
                "code": self.code,
            }
        });
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    }

    /// The full response (head and body) for this error, to an HTTP/1.1 client.
    pub fn to_response(&self, request_id: &str, close: bool) -> Bytes {
        self.to_response_with(request_id, if close { "connection: close\r\n" } else { "" })
    }

    /// The full response with `connection_field` (a whole field line or empty, see
    /// [`crate::http::Version::connection_field`]) as its `Connection` field.
    pub fn to_response_with(&self, request_id: &str, connection_field: &str) -> Bytes {
        let body = self.body();
        let mut out = BytesMut::with_capacity(256 + body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            self.status,
            reason_phrase(self.status),
            body.len()
        );
        if !request_id.is_empty() {
            let _ = write!(
                out,
                "x-request-id: {request_id}\r\nx-ditto-request-id: {request_id}\r\n"
            );
        }
        if let Some(b) = &self.backend {
            let _ = write!(out, "x-ditto-backend: {b}\r\n");
        }
        for (k, v) in &self.headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        if self.status == 429 && !self.headers.iter().any(|(k, _)| *k == "retry-after") {
            out.put_slice(b"retry-after: 1\r\n");
        }
        out.put_slice(connection_field.as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(&body);
        out.freeze()
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for GatewayError {}

/// Reason phrase for the statuses the gateway produces itself.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_openai_shaped_with_request_id() {
        let e = GatewayError::timeout("backend \"a\" timed out").with_backend("a");
        let r = e.to_response("req-1", true);
        let text = String::from_utf8(r.to_vec()).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"));
        assert!(text.contains("x-request-id: req-1\r\n"));
        assert!(text.contains("x-ditto-request-id: req-1\r\n"));
        assert!(text.contains("x-ditto-backend: a\r\n"));
        assert!(text.contains("connection: close\r\n"));
        let body = &text[text.find("\r\n\r\n").expect("head end") + 4..];
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["error"]["code"], "backend_timeout");
    }
}
