//! Allocations per proxied request, counted, not timed.
//!
//! `cargo bench --bench allocs` runs the real gateway in this process (one shard) in front of
//! the mock upstream (a separate process, so its allocations are not counted), drives it with
//! a keep-alive client that allocates nothing per request, and divides the allocator's
//! counters by the number of requests. Prints one line per request shape.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ditto_gateway::config::Config;
use ditto_gateway::proxy::{Gateway, ProxyOptions};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator; the counters are plain atomics
// and allocate nothing themselves.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new as u64, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_mock() -> (Kill, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mock-upstream");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("mock listening line");
    let url = line.trim().rsplit(' ').next().expect("url").to_string();
    (Kill(child), url)
}

/// Send `n` requests on one connection; every response must be a 200 with a Content-Length.
fn drive(addr: &str, request: &[u8], n: usize) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..n {
        s.write_all(request).expect("write");
        let mut have = 0;
        loop {
            let r = s.read(&mut buf[have..]).expect("read");
            assert!(r > 0, "gateway closed the connection");
            have += r;
            let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = &buf[..end];
            assert!(
                head.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(head)
            );
            let cl = head
                .split(|b| *b == b'\n')
                .find_map(|l| {
                    let l = std::str::from_utf8(l).ok()?.trim();
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .expect("content-length");
            while have < end + 4 + cl {
                let r = s.read(&mut buf[have..]).expect("read body");
                assert!(r > 0);
                have += r;
            }
            break;
        }
    }
}

fn main() {
    let (_mock, mock_url) = start_mock();
    let cfg = format!(
        r#"{{"backends":[{{"name":"mock","base_url":"{mock_url}/v1"}}],"virtual_keys":[],"router":{{}}}}"#
    );
    let config = Config::from_str(&cfg, "json", &|_: &str| None).expect("config");
    let opts = ProxyOptions::new(1024, 64 << 20, 1);
    let store = Box::new(ditto_gateway::control::store::memory::MemoryStore::new());
    let (gw, _) = Gateway::build(&config, &opts, store).expect("gateway");
    let handle =
        ditto_gateway::server::start(Arc::new(gw), "127.0.0.1:0", 1, Duration::from_secs(1))
            .expect("start");
    let addr = handle.local_addr.to_string();
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}"#;
    let shapes = [
        ("POST /v1/chat/completions (small JSON)", format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        ("GET /health", "GET /health HTTP/1.1\r\nHost: gw\r\n\r\n".to_string()),
    ];
    const N: usize = 20_000;
    for (label, req) in &shapes {
        drive(&addr, req.as_bytes(), 2_000); // warm: pools, buffers, lazy statics
        let (a0, b0) = (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        drive(&addr, req.as_bytes(), N);
        let (a1, b1) = (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        println!(
            "{label}: {:.2} allocations and {:.0} bytes allocated per request (over {N} requests)",
            (a1 - a0) as f64 / N as f64,
            (b1 - b0) as f64 / N as f64
        );
    }
    handle.shutdown();
}
