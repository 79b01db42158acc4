//! The mock upstream binary, checked from the outside with plain blocking sockets: the shapes
//! it answers with, keep-alive, the SSE stream, the echo, faults and HTTPS.
//!
//! Responses are parsed here by a small independent reader rather than the crate's codec, so a
//! framing bug shared by the codec and the mock cannot hide itself. Every socket has a read
//! timeout, so a broken mock fails a test instead of hanging it.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A running mock; killed when dropped, so a failing assertion does not leak the process.
struct Mock {
    child: Child,
    /// `http://127.0.0.1:PORT` or `https://...` as printed.
    url: String,
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mock {
    fn start(args: &[&str]) -> Mock {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mock-upstream");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut mock = Mock {
            child,
            url: String::new(),
        };
        // Read the line on a helper thread so a mock that never prints cannot hang the test.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("mock-upstream printed its listening line");
        mock.url = line
            .trim()
            .strip_prefix("mock-upstream listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        mock
    }

    /// `127.0.0.1:PORT`.
    fn addr(&self) -> &str {
        self.url
            .split_once("://")
            .map(|(_, a)| a)
            .expect("url has a scheme")
    }

    fn connect(&self) -> BufReader<TcpStream> {
        let s = TcpStream::connect(self.addr()).expect("connect to mock");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        s.set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        BufReader::new(s)
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

fn read_line<R: BufRead>(r: &mut R) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("read a line");
    assert!(line.ends_with("\r\n"), "line without CRLF: {line:?}");
    line.truncate(line.len() - 2);
    line
}

/// Read one response: head, then a Content-Length, chunked or close-delimited body.
fn read_response<R: BufRead>(r: &mut R) -> Response {
    let status_line = read_line(r);
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let line = read_line(r);
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').expect("header has a colon");
        headers.push((n.to_string(), v.trim().to_string()));
    }
    let mut res = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = res.header("content-length") {
        let mut body = vec![0; len.parse().expect("numeric content-length")];
        r.read_exact(&mut body).expect("read body");
        res.body = body;
    } else if res.header("transfer-encoding") == Some("chunked") {
        loop {
            let size = usize::from_str_radix(&read_line(r), 16).expect("hex chunk size");
            if size == 0 {
                assert_eq!(read_line(r), "", "no trailers, then the final CRLF");
                break;
            }
            let start = res.body.len();
            res.body.resize(start + size, 0);
            r.read_exact(&mut res.body[start..]).expect("chunk data");
            assert_eq!(read_line(r), "", "CRLF after chunk data");
        }
    } else {
        r.read_to_end(&mut res.body).expect("close-delimited body");
    }
    res
}

/// Send `head` (request line and fields, without the final CRLF) and `body`, with a
/// Content-Length when there is a body, and read the answer.
fn exchange(conn: &mut BufReader<TcpStream>, head: &str, body: &str) -> Response {
    let mut req = format!("{head}\r\nhost: mock\r\n");
    if !body.is_empty() {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    conn.get_mut().write_all(req.as_bytes()).expect("send");
    read_response(conn)
}

/// The `data:` payloads of an SSE body, checking each event ends with a blank line.
fn sse_data(body: &str) -> Vec<&str> {
    assert!(body.ends_with("\n\n"), "stream ends with a complete event");
    body.split_terminator("\n\n")
        .map(|e| {
            e.strip_prefix("data: ")
                .expect("every event is a data line")
        })
        .collect()
}

#[test]
fn models_completions_streams_and_echo_over_one_keep_alive_connection() {
    let mock = Mock::start(&["--workers", "2", "--events", "4", "--models", "a,b"]);
    assert!(mock.url.starts_with("http://127.0.0.1:"), "{}", mock.url);
    let mut conn = mock.connect();

    let res = exchange(&mut conn, "GET /v1/models HTTP/1.1", "");
    assert_eq!(res.status, 200);
    let ids: Vec<Value> = res.json()["data"]
        .as_array()
        .expect("data is a list")
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(
        exchange(&mut conn, "GET /v1/models/b HTTP/1.1", "").json()["object"],
        "model"
    );
    let missing = exchange(&mut conn, "GET /v1/models/zz HTTP/1.1", "");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "model_not_found");

    // A whole completion: the model is echoed, the content is the stream's tokens.
    let ask = r#"{"model":"gpt-x","messages":[{"role":"user","content":"two words"}]}"#;
    let res = exchange(&mut conn, "POST /v1/chat/completions HTTP/1.1", ask);
    assert_eq!(res.status, 200);
    let v = res.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-x");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "tok0 tok1 tok2 tok3 "
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    assert_eq!(v["usage"]["total_tokens"], 6);
    assert!(v["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("chatcmpl-mock-")));

    // A stream with a usage chunk: 4 content events, usage, [DONE].
    let ask = r#"{"model":"gpt-x","stream":true,"stream_options":{"include_usage":true}}"#;
    let res = exchange(&mut conn, "POST /v1/chat/completions HTTP/1.1", ask);
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("text/event-stream"));
    assert_eq!(res.header("transfer-encoding"), Some("chunked"));
    let data = sse_data(res.text());
    assert_eq!(data.len(), 6, "{data:?}");
    assert_eq!(data[5], "[DONE]");
    let chunks: Vec<Value> = data[..5]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk is JSON"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks[..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(content, "tok0 tok1 tok2 tok3 ");
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[4]["choices"], serde_json::json!([]));
    assert_eq!(chunks[4]["usage"]["completion_tokens"], 4);

    // Per-request knobs: fewer events, no usage chunk.
    let res = exchange(
        &mut conn,
        "POST /v1/chat/completions HTTP/1.1\r\nx-mock-events: 2",
        r#"{"stream":true}"#,
    );
    assert_eq!(sse_data(res.text()).len(), 3);

    // The echo shows a chunked request body decoded and the fields in order, as received.
    let req = "POST /echo/sub?q=1 HTTP/1.1\r\nhost: mock\r\nX-First: 1\r\nx-second: two\r\n\
               transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    conn.get_mut().write_all(req.as_bytes()).expect("send");
    let v = read_response(&mut conn).json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["target"], "/echo/sub?q=1");
    assert_eq!(v["body"], "hello world");
    assert_eq!(v["body_len"], 11);
    assert_eq!(v["framing"], "chunked");
    let names: Vec<&str> = v["headers"]
        .as_array()
        .expect("headers list")
        .iter()
        .filter_map(|h| h[0].as_str())
        .collect();
    assert_eq!(names, ["host", "X-First", "x-second", "transfer-encoding"]);
    assert_eq!(v["headers"][2][1], "two");

    // Expect: 100-continue gets its interim answer before the body is sent.
    let head =
        "POST /v1/echo HTTP/1.1\r\nhost: mock\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n";
    conn.get_mut()
        .write_all(head.as_bytes())
        .expect("send head");
    assert_eq!(read_line(&mut conn), "HTTP/1.1 100 Continue");
    assert_eq!(read_line(&mut conn), "");
    conn.get_mut().write_all(b"{}").expect("send body");
    assert_eq!(read_response(&mut conn).json()["body"], "{}");

    // An error status with retry-after, OpenAI-shaped.
    let res = exchange(
        &mut conn,
        "POST /v1/chat/completions HTTP/1.1\r\nx-mock-status: 429\r\nx-mock-retry-after: 2",
        "{}",
    );
    assert_eq!(res.status, 429);
    assert_eq!(res.header("retry-after"), Some("2"));
    assert_eq!(res.json()["error"]["type"], "rate_limit_error");

    // Everything above went over one connection.
    let stats = exchange(&mut conn, "GET /mock/stats HTTP/1.1", "").json();
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(stats["requests"], 9, "{stats}");

    // Connection: close is honoured: the answer, then EOF.
    let res = exchange(
        &mut conn,
        "GET /v1/models HTTP/1.1\r\nconnection: close",
        "",
    );
    assert_eq!(res.header("connection"), Some("close"));
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("EOF after a close");
    assert!(rest.is_empty());
}

#[test]
fn faults_break_the_connection_as_asked() {
    let mock = Mock::start(&[]);
    let send = |head: &str, body: &str| {
        let mut conn = mock.connect();
        let req = format!(
            "{head}\r\nhost: mock\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.get_mut().write_all(req.as_bytes()).expect("send");
        conn
    };

    // close-before-headers, by header and by model name: EOF without a single byte.
    for (head, body) in [
        (
            "POST /v1/chat/completions HTTP/1.1\r\nx-mock-fault: close-before-headers",
            "{}",
        ),
        (
            "POST /v1/chat/completions HTTP/1.1",
            r#"{"model":"mock-fault-close-before-headers"}"#,
        ),
    ] {
        let mut got = Vec::new();
        send(head, body).read_to_end(&mut got).expect("clean EOF");
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }

    // reset-before-headers: the read fails with a reset instead of ending cleanly.
    let mut got = Vec::new();
    let err = send(
        "POST /v1/chat/completions HTTP/1.1\r\nx-mock-fault: reset-before-headers",
        "{}",
    )
    .read_to_end(&mut got)
    .expect_err("a RST, not a FIN");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(got.is_empty());

    // close-mid-stream: a head and some events, then EOF without [DONE] or the last chunk.
    let mut got = Vec::new();
    send(
        "POST /v1/chat/completions HTTP/1.1\r\nx-mock-fault: close-mid-stream\r\nx-mock-events: 4",
        r#"{"stream":true}"#,
    )
    .read_to_end(&mut got)
    .expect("clean EOF");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert_eq!(text.matches("data: ").count(), 2, "{text}");
    assert!(
        !text.contains("[DONE]") && !text.ends_with("0\r\n\r\n"),
        "{text}"
    );
}

#[test]
fn https_with_a_generated_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, ck.cert.pem()).expect("write cert");
    std::fs::write(&key_path, ck.key_pair.serialize_pem()).expect("write key");
    let mock = Mock::start(&[
        "--tls-cert",
        cert_path.to_str().expect("utf-8 path"),
        "--tls-key",
        key_path.to_str().expect("utf-8 path"),
    ]);
    assert!(mock.url.starts_with("https://127.0.0.1:"), "{}", mock.url);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("trust the cert");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let tls = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = mock.connect().into_inner();
    let mut conn = BufReader::new(rustls::StreamOwned::new(tls, tcp));
    for _ in 0..2 {
        conn.get_mut()
            .write_all(b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .expect("send over TLS");
        let res = read_response(&mut conn);
        assert_eq!(res.status, 200);
        assert_eq!(res.json()["data"][0]["id"], "gpt-4o-mini");
    }
}
