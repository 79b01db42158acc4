//! The access log's non-blocking sink, shaped like nginx's `access_log ... buffer=`: each
//! data-plane core formats its own lines into its own buffer ([`CoreLog`]) and hands the whole
//! buffer to one writer thread when it holds [`BATCH_BYTES`] or at the core's next tick
//! (every 20 ms); the writer thread only writes.
//!
//! - Formatting where the request is: the line is made from the request's own strings, with
//!   no copy into a record, no allocation and no hand-over per request; one hand-over (and
//!   one allocation) per buffer of about a hundred lines.
//! - A core never blocks: handing over is a `try_send`. When the queue is full (the writer
//!   cannot keep up, or stdout is a stalled pipe) the buffer's lines are dropped and counted
//!   (`ditto_gateway_log_dropped_total`).
//! - The writer *polls* the queue every few milliseconds instead of sleeping in `recv`: a
//!   blocked receiver would make the sending core pay a futex wake-up (a syscall) per buffer.
//! - A buffer holds whole lines and goes out in one `write_all`, so a line is only split
//!   where the kernel makes a short write.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::access::{AccessRecord, LineCache};
use crate::metrics::ExternalCounter;

/// Buffers the queue holds before dropping (up to [`BATCH_BYTES`] and a line each: a full
/// queue is about 8 MiB).
pub const DEFAULT_CAPACITY: usize = 256;

/// A core hands its buffer over once it holds this much (about a hundred lines).
pub const BATCH_BYTES: usize = 32 * 1024;

/// How often the writer drains the queue.
pub const DEFAULT_POLL: Duration = Duration::from_millis(10);

/// Line format of the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// logfmt `key=value` text (the default).
    Text,
    /// One JSON object per line (`--json-logs`).
    Json,
}

/// Where the lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// Whole lines from one core.
struct Batch {
    text: String,
    lines: u64,
}

/// The writer thread and its queue. Dropping it (or [`LogSink::close`]) writes what is queued,
/// then stops the thread.
pub struct LogSink {
    tx: Option<flume::Sender<Batch>>,
    format: LogFormat,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A handle to the sink: cheap to clone; each core turns one into its [`CoreLog`].
#[derive(Clone)]
pub struct LogSender {
    tx: flume::Sender<Batch>,
    format: LogFormat,
    dropped: Arc<AtomicU64>,
}

impl LogSender {
    /// Hand a batch over. Never blocks; `false` when the queue was full (or the sink stopped)
    /// and the batch's lines were dropped (and counted).
    fn send(&self, batch: Batch) -> bool {
        let lines = batch.lines;
        match self.tx.try_send(batch) {
            Ok(()) => true,
            Err(_) => {
                // The overload path only; in normal operation no core touches this counter.
                self.dropped.fetch_add(lines, Ordering::Relaxed);
                false
            }
        }
    }
}

/// One core's access log: the lines it formatted and not yet handed over. Lives on its core
/// (not `Send`); [`CoreLog::flush`] at every tick bounds how late a line can appear.
pub struct CoreLog {
    sender: LogSender,
    buf: RefCell<String>,
    lines: Cell<u64>,
    cache: RefCell<LineCache>,
}

impl CoreLog {
    pub fn new(sender: LogSender) -> CoreLog {
        CoreLog {
            sender,
            buf: RefCell::new(String::with_capacity(BATCH_BYTES + 1024)),
            lines: Cell::new(0),
            cache: RefCell::default(),
        }
    }

    /// Format one request's line into the buffer; hand the buffer over once it is full.
    pub fn push<S: AsRef<str>>(&self, record: &AccessRecord<S>) {
        let full = {
            let mut buf = self.buf.borrow_mut();
            record.write_line(self.sender.format, &mut buf, &mut self.cache.borrow_mut());
            buf.len() >= BATCH_BYTES
        };
        self.lines.set(self.lines.get() + 1);
        if full {
            self.flush();
        }
    }

    /// Hand whatever is buffered to the writer (the core's tick, and its exit); `false` when
    /// the queue was full and the lines were dropped.
    pub fn flush(&self) -> bool {
        let lines = self.lines.replace(0);
        if lines == 0 {
            return true;
        }
        let text = std::mem::replace(
            &mut *self.buf.borrow_mut(),
            String::with_capacity(BATCH_BYTES + 1024),
        );
        self.sender.send(Batch { text, lines })
    }
}

impl Drop for CoreLog {
    fn drop(&mut self) {
        self.flush();
    }
}

impl LogSink {
    /// A sink writing to stdout or stderr, with the default queue size and poll interval.
    pub fn start(target: LogTarget, format: LogFormat) -> io::Result<LogSink> {
        match target {
            LogTarget::Stdout => {
                Self::with_writer(io::stdout(), format, DEFAULT_CAPACITY, DEFAULT_POLL)
            }
            LogTarget::Stderr => {
                Self::with_writer(io::stderr(), format, DEFAULT_CAPACITY, DEFAULT_POLL)
            }
        }
    }

    /// A sink writing to any writer (tests use a shared buffer); `capacity` is in batches.
    pub fn with_writer<W: Write + Send + 'static>(
        writer: W,
        format: LogFormat,
        capacity: usize,
        poll: Duration,
    ) -> io::Result<LogSink> {
        let (tx, rx) = flume::bounded(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (dropped, written, stop) = (dropped.clone(), written.clone(), stop.clone());
            std::thread::Builder::new()
                .name("ditto-access-log".into())
                .spawn(move || write_loop(rx, writer, poll, &stop, &written, &dropped))?
        };
        Ok(LogSink {
            tx: Some(tx),
            format,
            dropped,
            written,
            stop,
            thread: Some(thread),
        })
    }

    /// A handle for one core.
    pub fn sender(&self) -> LogSender {
        let tx = match &self.tx {
            Some(tx) => tx.clone(),
            // Unreachable while `self` lives (only `close` takes it); a closed channel drops.
            None => flume::bounded(0).0,
        };
        LogSender {
            tx,
            format: self.format,
            dropped: self.dropped.clone(),
        }
    }

    /// Lines dropped so far (queue full, sink stopped, or write error).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// The sink's counters, for [`crate::metrics::Registry::add_external`].
    pub fn counters(&self) -> [ExternalCounter; 2] {
        [
            ExternalCounter {
                name: "ditto_gateway_log_lines_total",
                help: "Access log lines written.",
                value: self.written.clone(),
            },
            ExternalCounter {
                name: "ditto_gateway_log_dropped_total",
                help: "Access log lines dropped because the log queue was full.",
                value: self.dropped.clone(),
            },
        ]
    }

    /// Write everything queued, then stop the writer. Cores hand their last lines over when
    /// they exit, so close the sink after the cores have stopped; what a core hands over
    /// later is dropped (and counted).
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx = None;
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_loop<W: Write>(
    rx: flume::Receiver<Batch>,
    mut out: W,
    poll: Duration,
    stop: &AtomicBool,
    written: &AtomicU64,
    dropped: &AtomicU64,
) {
    loop {
        // Read the flags before draining: once stopped (or every sender is gone), this last
        // drain sees everything queued before.
        let finished = stop.load(Ordering::Relaxed) || rx.is_disconnected();
        let (mut n, mut failed) = (0u64, 0u64);
        for batch in rx.try_iter() {
            match out.write_all(batch.text.as_bytes()) {
                Ok(()) => n += batch.lines,
                Err(_) => failed += batch.lines,
            }
        }
        if n > 0 || failed > 0 {
            if out.flush().is_err() {
                failed += n;
                n = 0;
            }
            written.fetch_add(n, Ordering::Relaxed);
            dropped.fetch_add(failed, Ordering::Relaxed);
        }
        if finished {
            return;
        }
        std::thread::sleep(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer that blocks until released: a stalled stdout pipe.
    struct Stalled(flume::Receiver<()>);

    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn record(i: u64) -> AccessRecord {
        AccessRecord {
            request_id: format!("req-{i}"),
            method: "POST".into(),
            path: "/v1/chat/completions?key=sk-abcdefghijklmnop".into(),
            status: 200,
            key_id: Some("k1".into()),
            ..Default::default()
        }
    }

    fn text(buf: &Shared) -> String {
        String::from_utf8(buf.0.lock().expect("buffer").clone()).expect("utf8")
    }

    #[test]
    fn lines_from_many_cores_arrive_whole_and_redacted() {
        let buf = Shared::default();
        let sink = LogSink::with_writer(buf.clone(), LogFormat::Json, 64, Duration::from_millis(1))
            .expect("sink");
        let senders: Vec<_> = (0..4).map(|_| sink.sender()).collect();
        let threads: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(t, s)| {
                std::thread::spawn(move || {
                    let log = CoreLog::new(s);
                    for i in 0..500 {
                        log.push(&record(t as u64 * 1000 + i));
                    }
                    // Dropping the core's log hands over what it still holds.
                })
            })
            .collect();
        for t in threads {
            t.join().expect("sender");
        }
        let counters = sink.counters();
        sink.close();
        let text = text(&buf);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2000);
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l).expect("whole JSON line");
            assert_eq!(v["path"], "/v1/chat/completions?key=[REDACTED]");
        }
        assert!(!text.contains("abcdefghijklmnop"));
        assert_eq!(counters[0].value.load(Ordering::Relaxed), 2000);
        assert_eq!(counters[1].value.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_core_hands_lines_over_when_its_buffer_fills_or_at_its_tick() {
        let buf = Shared::default();
        let sink = LogSink::with_writer(buf.clone(), LogFormat::Text, 64, Duration::from_millis(1))
            .expect("sink");
        let log = CoreLog::new(sink.sender());
        log.push(&record(1));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(text(&buf), "", "one line waits in the core's buffer");
        assert!(log.flush());
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while text(&buf).lines().count() < 1 {
            assert!(
                std::time::Instant::now() < end,
                "the tick's line never arrived"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // A full buffer goes without waiting for the tick.
        let mut n = 1;
        while log.lines.get() > 0 || n == 1 {
            n += 1;
            log.push(&record(n));
        }
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while text(&buf).lines().count() < n as usize {
            assert!(
                std::time::Instant::now() < end,
                "the full buffer never arrived"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(text(&buf).len() >= BATCH_BYTES);
        drop(log);
        sink.close();
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (release, stalled) = flume::unbounded();
        let sink = LogSink::with_writer(
            Stalled(stalled),
            LogFormat::Text,
            8,
            Duration::from_millis(1),
        )
        .expect("sink");
        let log = CoreLog::new(sink.sender());
        let started = std::time::Instant::now();
        let accepted = (0..1000)
            .filter(|&i| {
                log.push(&record(i));
                log.flush()
            })
            .count();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a hand-over never blocks"
        );
        // The writer holds what it drained before stalling, plus a full queue; the rest drop.
        assert!(accepted < 1000, "accepted {accepted}");
        assert_eq!(sink.dropped(), 1000 - accepted as u64);
        // Unstall the writer so the sink can drain and stop.
        for _ in 0..10_000 {
            let _ = release.send(());
        }
        sink.close();
    }

    #[test]
    fn a_stopped_sink_drops() {
        let sink = LogSink::with_writer(io::sink(), LogFormat::Text, 4, Duration::from_millis(1))
            .expect("sink");
        let log = CoreLog::new(sink.sender());
        sink.close();
        log.push(&record(1));
        assert!(!log.flush());
    }
}
