//! HTTPS backends: a private CA given with `--upstream-ca-file` is trusted; without it the
//! handshake fails and the client gets a 502 that says so.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::json;

use crate::harness::{chat, post, raw_post, single, sse_data, Gateway, Mock};

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it, written to `dir`.
/// Returns the CA file, the server certificate chain and the server key paths.
fn make_pki(dir: &std::path::Path) -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ditto integration test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");

    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "mock-upstream");
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("server cert");

    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write pem");
        p.to_str().expect("utf-8 path").to_string()
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("server.pem", cert.pem()),
        write("server.key", key.serialize_pem()),
    )
}

#[test]
fn https_backend_with_private_ca_serves_chat_and_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = make_pki(dir.path());
    let mock = Mock::start_with(&["--tls-cert", &cert, "--tls-key", &key]);
    assert!(mock.url.starts_with("https://"), "{}", mock.url);
    let gw = Gateway::builder(&single("tls", &mock.v1(), json!({"timeout_seconds": 5})))
        .args(&["--upstream-ca-file", &ca])
        .start();
    let r = post(&gw.url("/v1/chat/completions"), &chat("gpt-4o", false), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "chat.completion");
    assert_eq!(r.header("x-ditto-backend"), Some("tls"));

    // A stream, with events arriving separately, over one client connection that is reused
    // (and so over a pooled TLS connection the second time).
    let mut c = gw.raw();
    for _ in 0..2 {
        c.send(&raw_post(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o","stream":true}"#,
            "x-mock-events: 5\r\nx-mock-delay-ms: 20\r\n",
        ));
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert!(r.complete);
        let data = sse_data(&r.text());
        assert_eq!(data.len(), 6);
        assert_eq!(data[5], "[DONE]");
    }
    // Every request above went over one pooled upstream connection per gateway core (a TLS
    // 1.3 session ticket left unread must not make the pool discard it).
    let stats = mock_stats_over_tls(&mock, &ca);
    assert_eq!(stats["requests"], 3, "{stats}");
    assert!(
        stats["connections"].as_u64().expect("connections") <= 3,
        "{stats}"
    );

    // Through localhost too (SNI with a DNS name).
    let url = mock.v1().replace("127.0.0.1", "localhost");
    let gw = Gateway::builder(&single("tls-name", &url, json!({"timeout_seconds": 5})))
        .args(&["--upstream-ca-file", &ca])
        .start();
    let r = post(&gw.url("/v1/chat/completions"), &chat("gpt-4o", false), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn https_backend_without_the_ca_is_a_502_naming_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_ca, cert, key) = make_pki(dir.path());
    let mock = Mock::start_with(&["--tls-cert", &cert, "--tls-key", &key]);
    let gw = Gateway::start(&single("tls", &mock.v1(), json!({"timeout_seconds": 5})));
    let mut c = gw.raw();
    c.send(&raw_post(
        "/v1/chat/completions",
        r#"{"model":"gpt-4o"}"#,
        "",
    ));
    let r = c.read_response();
    let v = r.gateway_error(502, "backend_error");
    let msg = v["error"]["message"].as_str().expect("message");
    assert!(msg.contains("TLS"), "{msg}");
    assert!(msg.contains("\"tls\""), "{msg}");
}

/// `GET /mock/stats` over HTTPS, trusting `ca`.
fn mock_stats_over_tls(mock: &Mock, ca: &str) -> serde_json::Value {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let pem = std::fs::read(ca).expect("read CA");
    let cert = Certificate::from_pem(&pem).expect("CA pem");
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(std::sync::Arc::new(vec![cert])))
        .build();
    let cfg = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build();
    let agent = ureq::Agent::new_with_config(cfg);
    crate::harness::get_with(&agent, &format!("{}/mock/stats", mock.url), &[]).json()
}
