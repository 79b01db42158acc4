//! Test harness: start the real `ditto-gateway` and `mock-upstream` binaries on port 0, talk to
//! them over raw sockets (for the codec and the faults) or with ureq (for ordinary requests).
//!
//! Nothing here can hang a test: every child is killed when its guard drops, the lines a child
//! prints are read on helper threads with a deadline, and every socket has a read and write
//! timeout. Responses on raw sockets are parsed by a small reader written here, independent of
//! the crate's codec, so a framing bug in the codec cannot hide itself.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest any single socket read or write may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a child may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The mock upstream.

/// A running `mock-upstream`; killed on drop.
pub struct Mock {
    child: Child,
    /// `http://127.0.0.1:PORT` (or `https://`).
    pub url: String,
    pub addr: SocketAddr,
}

impl Mock {
    /// A plain HTTP mock with default options.
    pub fn start() -> Mock {
        Mock::start_with(&[])
    }

    /// A mock with extra command-line options.
    pub fn start_with(args: &[&str]) -> Mock {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mock-upstream");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Read the first line, then keep draining so the mock never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            let _ = io::copy(&mut r, &mut io::sink());
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("mock-upstream did not print its listening line");
            }
        };
        let url = line
            .trim()
            .strip_prefix("mock-upstream listening on ")
            .unwrap_or_else(|| panic!("unexpected mock line {line:?}"))
            .to_string();
        let addr = url
            .split_once("://")
            .map(|(_, a)| a)
            .expect("url with scheme")
            .parse()
            .expect("socket address");
        Mock { child, url, addr }
    }

    /// The passthrough root a backend points at: `http://127.0.0.1:PORT/v1`.
    pub fn v1(&self) -> String {
        format!("{}/v1", self.url)
    }

    /// `GET /mock/stats` on a connection of its own (it counts as one connection).
    pub fn stats(&self) -> Value {
        let mut c = Raw::connect(self.addr);
        c.send(b"GET /mock/stats HTTP/1.1\r\nhost: mock\r\nconnection: close\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 200, "mock stats");
        r.json()
    }

    /// Requests the mock has answered (stats excluded).
    pub fn requests(&self) -> u64 {
        self.stats()["requests"].as_u64().expect("requests")
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An address nobody listens on: port 1 (tcpmux) on loopback. A port freed by a test could be
/// taken again at once by a parallel test's listener; port 1 is never handed out for port 0.
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}

// ---------------------------------------------------------------------------------------------
// The gateway.

/// How to start a gateway.
pub struct GatewayBuilder {
    config: String,
    ext: &'static str,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    files: Vec<(String, String)>,
}

impl GatewayBuilder {
    /// Config file name extension (`json`, `yaml`).
    pub fn ext(mut self, ext: &'static str) -> Self {
        self.ext = ext;
        self
    }

    /// Extra command-line arguments after the config path.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// An environment variable for the gateway process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.to_string(), v.to_string()));
        self
    }

    /// A file written next to the config; `{dir}` in args is replaced by that directory.
    pub fn file(mut self, name: &str, text: &str) -> Self {
        self.files.push((name.to_string(), text.to_string()));
        self
    }

    pub fn start(self) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join(format!("gateway.{}", self.ext));
        std::fs::write(&config, &self.config).expect("write config");
        for (name, text) in &self.files {
            std::fs::write(dir.path().join(name), text).expect("write file");
        }
        let d = dir.path().to_str().expect("utf-8 tempdir").to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ditto-gateway"));
        cmd.arg(&config)
            .args(["--listen", "127.0.0.1:0"])
            .args(self.args.iter().map(|a| a.replace("{dir}", &d)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !self.args.iter().any(|a| a == "--workers") {
            cmd.args(["--workers", "2"]);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn ditto-gateway");
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            // Keep reading stderr for the gateway's whole life: a full pipe would block it.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                    }
                    log.lock().expect("log").push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(a) => a
                .parse()
                .unwrap_or_else(|_| panic!("bad listening address {a:?}")),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "ditto-gateway did not start; stderr:\n{}",
                    log.lock().expect("log").join("\n")
                );
            }
        };
        Gateway {
            child: Some(child),
            addr,
            log,
            _dir: dir,
        }
    }
}

/// A running `ditto-gateway`; killed on drop.
pub struct Gateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// A gateway with `config` (JSON text) and default flags.
    pub fn start(config: &str) -> Gateway {
        Gateway::builder(config).start()
    }

    pub fn builder(config: &str) -> GatewayBuilder {
        GatewayBuilder {
            config: config.to_string(),
            ext: "json",
            args: Vec::new(),
            envs: Vec::new(),
            files: Vec::new(),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn raw(&self) -> Raw {
        Raw::connect(self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Everything the gateway printed on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// Wait up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("running");
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a short-lived gateway run printed and how it ended.
pub struct CliRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run the gateway binary with `args` (no `--listen` added) and wait up to 20 s for it to
/// exit; it is killed and the test fails if it does not.
pub fn run_cli(args: &[&str], envs: &[(&str, &str)], unset: &[&str]) -> CliRun {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ditto-gateway"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().expect("spawn ditto-gateway");
    let drain = |r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let mut r = r;
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ditto-gateway {args:?} did not exit; stderr: {}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CliRun {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Write `text` to `name` in `dir` and return the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

// ---------------------------------------------------------------------------------------------
// Configs.

/// A config with one backend per `(name, base_url, extra fields)` and `router` as given.
pub fn config(backends: &[(&str, &str, Value)], router: Value) -> String {
    let list: Vec<Value> = backends
        .iter()
        .map(|(name, url, extra)| {
            let mut b = serde_json::json!({"name": name, "base_url": url});
            if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
                for (k, v) in e {
                    o.insert(k.clone(), v.clone());
                }
            }
            b
        })
        .collect();
    serde_json::json!({"backends": list, "virtual_keys": [], "router": router}).to_string()
}

/// One backend called `name` at `base_url` with `extra` fields, routed by default.
pub fn single(name: &str, base_url: &str, extra: Value) -> String {
    config(
        &[(name, base_url, extra)],
        serde_json::json!({"default_backends": [{"backend": name, "weight": 1.0}]}),
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP over ureq.

/// A response read whole through ureq.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Header lookup and body decoding, shared by ureq and raw-socket responses.
macro_rules! response_accessors {
    ($t:ty) => {
        impl $t {
            pub fn header(&self, name: &str) -> Option<&str> {
                self.headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
            }

            pub fn json(&self) -> Value {
                serde_json::from_slice(&self.body).unwrap_or_else(|e| {
                    panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body))
                })
            }

            pub fn text(&self) -> String {
                String::from_utf8_lossy(&self.body).into_owned()
            }
        }
    };
}

response_accessors!(Resp);
response_accessors!(Response);

/// A ureq agent that returns error statuses as responses and cannot wait forever.
pub fn agent() -> ureq::Agent {
    let cfg = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build();
    ureq::Agent::new_with_config(cfg)
}

/// A ureq result as a [`Resp`] (for requests built by a test itself).
pub fn into_resp_pub(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
    into_resp(r)
}

fn into_resp(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
    let mut r = r.unwrap_or_else(|e| panic!("request failed: {e}"));
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .expect("read body");
    Resp {
        status,
        headers,
        body,
    }
}

/// `GET url` with extra headers.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    get_with(&agent(), url, headers)
}

pub fn get_with(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    into_resp(req.call())
}

/// `POST url` with a JSON body and extra headers.
pub fn post(url: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
    post_with(&agent(), url, body, headers)
}

pub fn post_with(agent: &ureq::Agent, url: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    into_resp(req.send_json(body))
}

/// A small chat request body.
pub fn chat(model: &str, stream: bool) -> Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello."}],
    })
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.trim_start_matches('\n').strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// The echo of `/v1/echo`: header value by name (case-insensitive), all values joined.
pub fn echo_header(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .map(|h| h[1].as_str().unwrap_or("").to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Raw sockets.

/// A response head and body read from a raw socket.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended as its framing says (false: the peer closed or reset it early).
    pub complete: bool,
}

impl Response {
    /// A gateway-made error: OpenAI-shaped body and the request-id headers. Returns the body.
    pub fn gateway_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "status; body: {}", self.text());
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(v["error"]["type"].is_string(), "{v}");
        let id = self
            .header("x-request-id")
            .expect("x-request-id on a gateway error");
        assert_eq!(self.header("x-ditto-request-id"), Some(id));
        v
    }
}

/// Is this error the peer closing or resetting the connection (not a timeout)?
fn is_eof_like(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// A client connection driven byte by byte.
pub struct Raw {
    pub reader: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        s.set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        s.set_nodelay(true).expect("nodelay");
        Raw {
            reader: BufReader::new(s),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream()
            .set_read_timeout(Some(t))
            .expect("read timeout");
    }

    /// Write everything; panics on failure.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("send");
    }

    /// Write, reporting failure (the peer may already have closed).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Half-close our side.
    pub fn shutdown_write(&self) {
        let _ = self.stream().shutdown(Shutdown::Write);
    }

    /// One CRLF-terminated line without the CRLF. `Err` on EOF/reset; panics on timeout.
    pub fn line(&mut self) -> io::Result<String> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => Err(ErrorKind::UnexpectedEof.into()),
            Ok(_) if !buf.ends_with(b"\r\n") => {
                if buf.ends_with(b"\n") {
                    panic!("line without CR: {:?}", String::from_utf8_lossy(&buf));
                }
                Err(ErrorKind::UnexpectedEof.into())
            }
            Ok(_) => {
                buf.truncate(buf.len() - 2);
                Ok(String::from_utf8_lossy(&buf).into_owned())
            }
            Err(e) if is_timeout(&e) => panic!("timed out reading a line"),
            Err(e) => Err(e),
        }
    }

    /// Read a response head (status line and fields), skipping nothing.
    pub fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.line().expect("status line");
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().expect("header line");
            if line.is_empty() {
                break;
            }
            let (n, v) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("header without colon: {line:?}"));
            headers.push((n.to_string(), v.trim().to_string()));
        }
        (status, headers)
    }

    /// Read one response to a non-HEAD request.
    pub fn read_response(&mut self) -> Response {
        self.read_response_for(false)
    }

    /// Read one response; `head_request` says the body is empty whatever the fields say.
    pub fn read_response_for(&mut self, head_request: bool) -> Response {
        let (status, headers) = self.read_head();
        let mut res = Response {
            status,
            headers,
            body: Vec::new(),
            complete: true,
        };
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return res;
        }
        let chunked = res
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            loop {
                match self.read_chunk() {
                    Ok(Some(data)) => res.body.extend_from_slice(&data),
                    Ok(None) => break,
                    Err(_) => {
                        res.complete = false;
                        break;
                    }
                }
            }
        } else if let Some(len) = res.header("content-length") {
            let len: usize = len.parse().expect("numeric content-length");
            let mut body = vec![0; len];
            let mut got = 0;
            while got < len {
                match self.reader.read(&mut body[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if is_timeout(&e) => panic!("timed out reading a body"),
                    Err(_) => break,
                }
            }
            body.truncate(got);
            res.complete = got == len;
            res.body = body;
        } else {
            match self.reader.read_to_end(&mut res.body) {
                Ok(_) => {}
                Err(e) if is_timeout(&e) => panic!("timed out reading a close-delimited body"),
                Err(_) => res.complete = false,
            }
        }
        res
    }

    /// One chunk of a chunked body: `Some(data)`, or `None` for the last chunk (trailers
    /// read). `Err` when the connection ended first.
    pub fn read_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let size_line = self.line()?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
        if size == 0 {
            loop {
                if self.line()?.is_empty() {
                    return Ok(None);
                }
            }
        }
        let mut data = vec![0; size];
        let mut got = 0;
        while got < size {
            match self.reader.read(&mut data[got..]) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if is_timeout(&e) => panic!("timed out reading chunk data"),
                Err(e) => return Err(e),
            }
        }
        let crlf = self.line()?;
        assert!(crlf.is_empty(), "chunk data not followed by CRLF");
        Ok(Some(data))
    }

    /// True if the peer closes (EOF or reset) within `limit` without sending anything more.
    /// Panics if it sends bytes.
    pub fn closes_within(&mut self, limit: Duration) -> bool {
        self.set_read_timeout(limit);
        let mut b = [0u8; 256];
        let r = self.reader.read(&mut b);
        self.set_read_timeout(IO_TIMEOUT);
        match r {
            Ok(0) => true,
            Ok(n) => panic!(
                "expected a close, got {:?}",
                String::from_utf8_lossy(&b[..n])
            ),
            Err(e) if is_timeout(&e) => false,
            Err(e) if is_eof_like(&e) => true,
            Err(e) => panic!("unexpected error waiting for a close: {e}"),
        }
    }

    /// Assert the peer closes the connection within two seconds.
    pub fn assert_closed(&mut self) {
        assert!(
            self.closes_within(Duration::from_secs(2)),
            "connection still open"
        );
    }

    /// Whether a byte is waiting (within `limit`), without consuming it.
    pub fn readable_within(&mut self, limit: Duration) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        self.set_read_timeout(limit);
        let r = self.reader.fill_buf().map(|b| !b.is_empty());
        self.set_read_timeout(IO_TIMEOUT);
        match r {
            Ok(any) => any,
            Err(e) if is_timeout(&e) => false,
            Err(_) => true,
        }
    }
}

/// `POST path` with a JSON body as raw bytes (Content-Length framing), plus extra header lines.
pub fn raw_post(path: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An admin call with a raw (possibly invalid) body, over a raw socket.
pub fn raw_admin(gw: &Gateway, method: &str, path: &str, body: &str, token: &str) -> Response {
    let mut c = gw.raw();
    c.send(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    c.read_response()
}

/// Elapsed time since `t0` in milliseconds.
pub fn ms_since(t0: Instant) -> u128 {
    t0.elapsed().as_millis()
}
