//! A backend compiled from config: parsed URL, headers and query ready to emit, timeouts and
//! its in-flight cap. Built once at startup and shared read-only by every core.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::resolve::Addrs;
use crate::config::BackendConfig;
use crate::limits::InflightLimiter;

/// How long to wait for response headers (and between body chunks) when the backend sets no
/// `timeout_seconds`. Long, because a non-streamed completion can take minutes to produce.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Connect (TCP and TLS handshake) deadline when the backend sets none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pool idle TTL: below the 5 s keep-alive of uvicorn-based servers (vLLM and friends), so we
/// never send a request on a connection the server is about to close.
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(4);

/// One configured passthrough backend.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    /// Position in the backend list; the key of per-core pools.
    pub index: usize,
    pub tls: bool,
    /// Host for DNS and SNI (no brackets for IPv6).
    pub host: String,
    pub port: u16,
    /// Value of the `Host` header we send (port omitted when it is the scheme's default).
    pub authority: String,
    /// Path prefix of `base_url` without a trailing slash (`/v1`, `` for a bare host).
    pub base_path: String,
    /// Injected headers, names lower-cased; they replace client headers of the same name.
    pub headers: Vec<(String, String)>,
    /// `query_params`, already percent-encoded, without `?`.
    pub query: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_ttl: Duration,
    pub inflight: Option<InflightLimiter>,
    pub addrs: Arc<Addrs>,
    pub server_name: Option<ServerName<'static>>,
    /// Translation provider and provider options (default: plain passthrough).
    pub native: super::provider::Native,
    /// `model_map`: (from, to), `*` for every other model.
    pub model_map: Vec<(String, String)>,
}

/// The configured headers, plus `Authorization: Bearer <provider_config.api_key>` for an
/// OpenAI-compatible provider backend that sets no authorization header of its own
/// (translation backends send their key in the provider's own header instead).
fn with_provider_key(c: &BackendConfig, native: &super::provider::Native) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = c
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if let (None, Some(key)) = (native.kind, &native.api_key) {
        if !headers.iter().any(|(k, _)| k == "authorization") {
            headers.push(("authorization".into(), format!("Bearer {key}")));
        }
    }
    headers
}

fn secs(v: Option<f64>, default: Duration) -> Duration {
    v.filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(default)
}

impl Backend {
    /// Compile a passthrough backend. Errors name the problem; the config layer has already
    /// named the field path for anything it validates.
    pub fn from_config(index: usize, c: &BackendConfig) -> Result<Backend, String> {
        let native = super::provider::Native::from_config(c)?;
        // A provider backend's root may come from provider_config or the provider's default.
        let base = super::provider::Native::base_url(c)
            .ok_or_else(|| format!("backend \"{}\" has no base_url", c.name))?;
        let base = base.as_str();
        let url =
            url::Url::parse(base).map_err(|e| format!("backend \"{}\": base_url: {e}", c.name))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            s => return Err(format!("backend \"{}\": unsupported scheme {s}", c.name)),
        };
        let host_str = url
            .host_str()
            .ok_or_else(|| format!("backend \"{}\": base_url has no host", c.name))?;
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let authority = match url.port() {
            Some(p) => format!("{host_str}:{p}"),
            None => host_str.to_string(),
        };
        let host = host_str
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let base_path = url.path().trim_end_matches('/').to_string();
        let query = {
            let mut s = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &c.query_params {
                s.append_pair(k, v);
            }
            s.finish()
        };
        let server_name = if tls {
            Some(
                ServerName::try_from(host.clone())
                    .map_err(|e| format!("backend \"{}\": invalid TLS server name: {e}", c.name))?,
            )
        } else {
            None
        };
        Ok(Backend {
            name: c.name.clone(),
            index,
            tls,
            addrs: Arc::new(Addrs::new(&host, port)),
            host,
            port,
            authority,
            base_path,
            headers: with_provider_key(c, &native),
            query,
            timeout: secs(c.timeout_seconds, DEFAULT_TIMEOUT),
            connect_timeout: secs(c.connect_timeout_seconds, DEFAULT_CONNECT_TIMEOUT),
            idle_ttl: secs(c.idle_ttl_seconds, DEFAULT_IDLE_TTL),
            inflight: c.max_in_flight.map(InflightLimiter::new),
            server_name,
            native,
            model_map: c.model_map.clone(),
        })
    }

    /// The model this backend should receive for `model` (`model_map`: an exact entry, then
    /// `*`), or `None` when the model is sent as is.
    pub fn map_model(&self, model: &str) -> Option<&str> {
        let to = self
            .model_map
            .iter()
            .find(|(from, _)| from == model)
            .or_else(|| self.model_map.iter().find(|(from, _)| from == "*"))
            .map(|(_, to)| to.as_str())?;
        (to != model).then_some(to)
    }

    /// True when the backend injects a header called `name` (lower-case).
    pub fn sets_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(k, _)| k == name)
    }

    /// Append the upstream request target for a client path (always starting with `/v1` or
    /// another absolute path) and query to `out`. `/v1` is never doubled: a base of
    /// `https://h/v1` and a path of `/v1/chat/completions` give `/v1/chat/completions`.
    pub fn write_target(&self, out: &mut impl std::fmt::Write, path: &str, query: Option<&str>) {
        let rest = if self.base_path.ends_with("/v1") {
            match path.strip_prefix("/v1") {
                Some(r) if r.is_empty() || r.starts_with('/') => r,
                _ => path,
            }
        } else {
            path
        };
        let _ = out.write_str(&self.base_path);
        let _ = out.write_str(if rest.is_empty() && self.base_path.is_empty() {
            "/"
        } else {
            rest
        });
        let client_q = query.filter(|q| !q.is_empty());
        // Pieces, not `write!`: this runs for every proxied request.
        match (client_q, self.query.is_empty()) {
            (Some(q), true) => {
                let _ = out.write_str("?");
                let _ = out.write_str(q);
            }
            (Some(q), false) => {
                let _ = out.write_str("?");
                let _ = out.write_str(q);
                let _ = out.write_str("&");
                let _ = out.write_str(&self.query);
            }
            (None, false) => {
                let _ = out.write_str("?");
                let _ = out.write_str(&self.query);
            }
            (None, true) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn cfg(name: &str, url: &str) -> BackendConfig {
        BackendConfig {
            name: name.to_string(),
            base_url: Some(url.to_string()),
            max_in_flight: None,
            timeout_seconds: None,
            connect_timeout_seconds: None,
            idle_ttl_seconds: None,
            headers: vec![("Authorization".into(), "Bearer x".into())],
            query_params: vec![],
            model_map: vec![],
            provider: None,
            provider_config: None,
        }
    }

    fn target(url: &str, path: &str, q: Option<&str>, params: &[(&str, &str)]) -> String {
        let mut c = cfg("b", url);
        c.query_params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let b = Backend::from_config(0, &c).expect("backend");
        let mut s = String::new();
        b.write_target(&mut s, path, q);
        s
    }

    #[test]
    fn joins_without_doubling_v1() {
        assert_eq!(
            target(
                "https://api.openai.com/v1",
                "/v1/chat/completions",
                None,
                &[]
            ),
            "/v1/chat/completions"
        );
        assert_eq!(
            target("https://api.openai.com/v1/", "/v1/models", None, &[]),
            "/v1/models"
        );
        assert_eq!(
            target("http://127.0.0.1:9000", "/v1/models", None, &[]),
            "/v1/models"
        );
        assert_eq!(
            target("http://h/openai", "/v1/models", None, &[]),
            "/openai/v1/models"
        );
        assert_eq!(target("http://h/v1", "/v1", None, &[]), "/v1");
        assert_eq!(
            target("http://h/v1", "/v1beta/x", None, &[]),
            "/v1/v1beta/x"
        );
    }

    #[test]
    fn appends_query_params_after_the_clients() {
        assert_eq!(
            target(
                "http://h/v1",
                "/v1/x",
                Some("a=1"),
                &[("api-version", "2024-01 01")]
            ),
            "/v1/x?a=1&api-version=2024-01+01"
        );
        assert_eq!(
            target("http://h/v1", "/v1/x", None, &[("k", "v&")]),
            "/v1/x?k=v%26"
        );
        assert_eq!(target("http://h/v1", "/v1/x", Some(""), &[]), "/v1/x");
    }

    #[test]
    fn authority_and_defaults() {
        let b = Backend::from_config(3, &cfg("b", "https://[::1]:8443/v1")).expect("backend");
        assert_eq!(b.authority, "[::1]:8443");
        assert_eq!(b.host, "::1");
        assert_eq!(b.port, 8443);
        assert!(b.tls);
        assert_eq!(b.idle_ttl, DEFAULT_IDLE_TTL);
        assert!(b.sets_header("authorization"));
        let b = Backend::from_config(0, &cfg("b", "https://api.openai.com/v1")).expect("backend");
        assert_eq!(b.authority, "api.openai.com");
        assert_eq!(b.port, 443);
    }
}
