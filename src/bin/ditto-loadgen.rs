//! `ditto-loadgen`: the load generator of `loadtest/compare.py`, for what wrk cannot measure.
//!
//! - `--mode requests`: closed-loop keep-alive requests on `--conns` connections for
//!   `--duration` seconds; prints req/s and p50/p90/p99/p99.9 latency.
//! - `--mode sse`: `--conns` concurrent streaming requests; records when each SSE event arrives
//!   and prints time to first event and inter-event gaps (p50/p99/max).
//!
//! Output is one JSON object on stdout. Plain HTTP/1.1 to 127.0.0.1 only; it reuses the
//! gateway's own response parser and chunked decoder.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ditto_gateway::http::io::{read_append_timeout, write_all};
use ditto_gateway::http::{BodyFraming, ChunkedDecoder, ResponseHead};
use monoio::net::TcpStream;

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

const USAGE: &str = "usage: ditto-loadgen --url http://127.0.0.1:PORT/path [--mode requests|sse] [--conns N] \
[--threads N] [--duration SECS] [--method POST] [--body JSON | --body-size BYTES] [--header 'k: v']...";

struct Opts {
    addr: SocketAddr,
    host: String,
    path: String,
    mode: String,
    conns: usize,
    threads: usize,
    duration: Duration,
    method: String,
    body: Vec<u8>,
    headers: Vec<String>,
}

fn parse() -> Result<Opts, String> {
    let mut url = None;
    let mut o = Opts {
        addr: "127.0.0.1:1".parse().map_err(|_| "addr")?,
        host: String::new(),
        path: "/".into(),
        mode: "requests".into(),
        conns: 64,
        threads: 1,
        duration: Duration::from_secs(5),
        method: "POST".into(),
        body: br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}"#
            .to_vec(),
        headers: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--url" => url = Some(val()?),
            "--mode" => o.mode = val()?,
            "--conns" => o.conns = val()?.parse().map_err(|e| format!("--conns: {e}"))?,
            "--threads" => o.threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--duration" => {
                o.duration =
                    Duration::from_secs_f64(val()?.parse().map_err(|e| format!("--duration: {e}"))?)
            }
            "--method" => o.method = val()?,
            "--body" => o.body = val()?.into_bytes(),
            "--body-size" => {
                let n: usize = val()?.parse().map_err(|e| format!("--body-size: {e}"))?;
                let pad = "x".repeat(n.saturating_sub(80));
                o.body = format!(
                    r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{pad}"}}]}}"#
                )
                .into_bytes();
            }
            "--header" => o.headers.push(val()?),
            "--help" | "-h" => return Err(USAGE.into()),
            _ => return Err(format!("unknown flag {a}\n{USAGE}")),
        }
    }
    let url = url.ok_or(USAGE)?;
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    o.addr = authority
        .parse()
        .map_err(|e| format!("{authority}: {e} (use IP:PORT)"))?;
    o.host = authority.to_string();
    o.path = if path.is_empty() {
        "/".into()
    } else {
        path.into()
    };
    o.threads = o.threads.clamp(1, o.conns.max(1));
    Ok(o)
}

fn request_bytes(o: &Opts) -> Vec<u8> {
    let mut r = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n",
        o.method, o.path, o.host
    );
    for h in &o.headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    if !o.body.is_empty() || o.method == "POST" {
        r.push_str(&format!("content-length: {}\r\n", o.body.len()));
    }
    r.push_str("\r\n");
    let mut b = r.into_bytes();
    b.extend_from_slice(&o.body);
    b
}

#[derive(Default)]
struct Samples {
    latencies_us: Vec<u32>,
    first_event_us: Vec<u32>,
    gaps_us: Vec<u32>,
    events: u64,
    errors: u64,
    completed: u64,
}

/// Read one response; calls `on_payload(now, bytes)` for body bytes. Returns false on error.
async fn read_response(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    mut on_payload: impl FnMut(Instant, &[u8]),
) -> Result<u16, String> {
    let to = Duration::from_secs(30);
    let (head, len) = loop {
        if let Some(h) = ResponseHead::parse(buf, false).map_err(|e| e.reason().to_string())? {
            break h;
        }
        if read_append_timeout(s, buf, 16 * 1024, to)
            .await
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err("closed".into());
        }
    };
    let _ = buf.split_to(len);
    let mut dec = ChunkedDecoder::new();
    let mut left = match head.framing {
        BodyFraming::Length(n) => n as usize,
        _ => 0,
    };
    loop {
        let now = Instant::now();
        match head.framing {
            BodyFraming::Empty => return Ok(head.status),
            BodyFraming::Length(_) => {
                let take = left.min(buf.len());
                on_payload(now, &buf[..take]);
                let _ = buf.split_to(take);
                left -= take;
                if left == 0 {
                    return Ok(head.status);
                }
            }
            BodyFraming::Chunked => {
                let mut pieces = Vec::new();
                let p = dec
                    .decode(buf, |r| pieces.push(r))
                    .map_err(|e| e.to_string())?;
                for r in pieces {
                    on_payload(now, &buf[r]);
                }
                let _ = buf.split_to(p.consumed);
                if p.done {
                    return Ok(head.status);
                }
            }
            BodyFraming::UntilClose => {
                on_payload(now, buf);
                buf.clear();
            }
        }
        match read_append_timeout(s, buf, 16 * 1024, to).await {
            Ok(0) if head.framing == BodyFraming::UntilClose => return Ok(head.status),
            Ok(0) => return Err("closed mid-body".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn requests_conn(o: Arc<Opts>, req: bytes::Bytes, end: Instant, out: Rc<RefCell<Samples>>) {
    let Ok(mut s) = TcpStream::connect_addr(o.addr).await else {
        out.borrow_mut().errors += 1;
        return;
    };
    let _ = s.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(32 * 1024);
    while Instant::now() < end {
        let t0 = Instant::now();
        if write_all(&mut s, req.clone()).await.is_err() {
            out.borrow_mut().errors += 1;
            return;
        }
        match read_response(&mut s, &mut buf, |_, _| {}).await {
            Ok(status) if (200..300).contains(&status) => {
                let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                let mut o = out.borrow_mut();
                o.latencies_us.push(us);
                o.completed += 1;
            }
            Ok(_) => out.borrow_mut().errors += 1,
            Err(_) => {
                out.borrow_mut().errors += 1;
                return;
            }
        }
    }
}

async fn sse_conn(o: Arc<Opts>, req: bytes::Bytes, out: Rc<RefCell<Samples>>) {
    let Ok(mut s) = TcpStream::connect_addr(o.addr).await else {
        out.borrow_mut().errors += 1;
        return;
    };
    let _ = s.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(32 * 1024);
    let t0 = Instant::now();
    if write_all(&mut s, req).await.is_err() {
        out.borrow_mut().errors += 1;
        return;
    }
    let mut last: Option<Instant> = None;
    let mut pending_nl = false;
    let mut local = Samples::default();
    let r = read_response(&mut s, &mut buf, |now, data| {
        // An event ends at a blank line ("\n\n"), possibly split across reads.
        let mut ends = 0;
        for &b in data {
            if b == b'\n' {
                if pending_nl {
                    ends += 1;
                    pending_nl = false;
                } else {
                    pending_nl = true;
                }
            } else {
                pending_nl = false;
            }
        }
        for _ in 0..ends {
            match last {
                None => local
                    .first_event_us
                    .push(now.duration_since(t0).as_micros() as u32),
                Some(prev) => local
                    .gaps_us
                    .push(now.duration_since(prev).as_micros() as u32),
            }
            last = Some(now);
            local.events += 1;
        }
    })
    .await;
    let mut o = out.borrow_mut();
    match r {
        Ok(st) if (200..300).contains(&st) => o.completed += 1,
        _ => o.errors += 1,
    }
    o.first_event_us.extend(local.first_event_us);
    o.gaps_us.extend(local.gaps_us);
    o.events += local.events;
}

fn pct(v: &mut [u32], p: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let req = bytes::Bytes::from(request_bytes(&o));
    let o = Arc::new(o);
    let start = Instant::now();
    let end = start + o.duration;
    let threads: Vec<_> = (0..o.threads)
        .map(|t| {
            let o = o.clone();
            let req = req.clone();
            std::thread::spawn(move || {
                let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .with_entries(4096)
                    .enable_timer()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let out = Rc::new(RefCell::new(Samples::default()));
                    let opts = o.clone();
                    let mine = (o.conns + o.threads - 1 - t) / o.threads;
                    let mut tasks = Vec::new();
                    for _ in 0..mine {
                        let (opts, req, out) = (opts.clone(), req.clone(), out.clone());
                        let task: Task = if o.mode == "sse" {
                            Box::pin(sse_conn(opts, req, out))
                        } else {
                            Box::pin(requests_conn(opts, req, end, out))
                        };
                        tasks.push(monoio::spawn(task));
                    }
                    for t in tasks {
                        t.await;
                    }
                    Rc::try_unwrap(out)
                        .map(RefCell::into_inner)
                        .unwrap_or_default()
                })
            })
        })
        .collect();
    let mut all = Samples::default();
    for t in threads {
        if let Ok(s) = t.join() {
            all.latencies_us.extend(s.latencies_us);
            all.first_event_us.extend(s.first_event_us);
            all.gaps_us.extend(s.gaps_us);
            all.events += s.events;
            all.errors += s.errors;
            all.completed += s.completed;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "mode": o.mode,
        "conns": o.conns,
        "completed": all.completed,
        "errors": all.errors,
        "elapsed_s": elapsed,
        "rps": all.completed as f64 / elapsed,
        "p50_us": pct(&mut all.latencies_us, 0.50),
        "p90_us": pct(&mut all.latencies_us, 0.90),
        "p99_us": pct(&mut all.latencies_us, 0.99),
        "p999_us": pct(&mut all.latencies_us, 0.999),
        "events": all.events,
        "first_event_p50_us": pct(&mut all.first_event_us, 0.50),
        "first_event_p99_us": pct(&mut all.first_event_us, 0.99),
        "gap_p50_us": pct(&mut all.gaps_us, 0.50),
        "gap_p99_us": pct(&mut all.gaps_us, 0.99),
        "gap_max_us": pct(&mut all.gaps_us, 1.0),
    });
    println!("{out}");
}
