//! The access log's non-blocking sink: data-plane cores hand finished [`AccessRecord`]s to a
//! bounded queue; one writer thread formats them and writes them in batches.
//!
//! - A core never blocks and never formats: [`LogSender::send`] is a `try_send` of the record.
//!   When the queue is full (the writer cannot keep up, or stdout is a stalled pipe) the record
//!   is dropped and counted (`ditto_gateway_log_dropped_total`).
//! - The writer *polls* the queue every few milliseconds instead of sleeping in `recv`: a
//!   blocked receiver would make every sender on a data-plane core pay a futex wake-up (a
//!   syscall) to hand over one record. With polling, a send is a short uncontended lock and a
//!   queue push; lines reach the terminal at most one poll interval later.
//! - Lines are written through a `BufWriter`, flushed after each drained batch, and a line is
//!   never split across writes (so operator lines written to stderr cannot cut into one).

use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::access::AccessRecord;
use crate::metrics::ExternalCounter;

/// Records the queue holds before dropping (about 300 bytes each: a full queue is a few MiB).
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

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

/// The writer thread and its queue. Dropping it (or [`LogSink::close`]) writes what is queued,
/// then stops the thread.
pub struct LogSink {
    tx: Option<flume::Sender<AccessRecord>>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A core's handle to the sink: cheap to clone (do it once per core, at startup).
#[derive(Clone)]
pub struct LogSender {
    tx: flume::Sender<AccessRecord>,
    dropped: Arc<AtomicU64>,
}

impl LogSender {
    /// Queue a record for writing. Never blocks; `false` when the queue was full (or the sink
    /// stopped) and the record was dropped (and counted).
    #[inline]
    pub fn send(&self, record: AccessRecord) -> bool {
        match self.tx.try_send(record) {
            Ok(()) => true,
            Err(_) => {
                // The overload path only; in normal operation no core touches this counter.
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
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

    /// A sink writing to any writer (tests use a shared buffer).
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
                .spawn(move || write_loop(rx, writer, format, poll, &stop, &written, &dropped))?
        };
        Ok(LogSink {
            tx: Some(tx),
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
            dropped: self.dropped.clone(),
        }
    }

    /// Records dropped so far (queue full, sink stopped, or write error).
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
                help: "Access log records dropped because the log queue was full.",
                value: self.dropped.clone(),
            },
        ]
    }

    /// Write everything queued, then stop the writer. Senders still held by cores then drop
    /// (and count) what they send; a record sent in the instant between the writer's last
    /// drain and its exit is lost uncounted, so close the sink after the cores have drained.
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
    rx: flume::Receiver<AccessRecord>,
    writer: W,
    format: LogFormat,
    poll: Duration,
    stop: &AtomicBool,
    written: &AtomicU64,
    dropped: &AtomicU64,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, writer);
    let mut line = String::with_capacity(512);
    loop {
        // Read the flags before draining: once stopped (or every sender is gone), this last
        // drain sees everything queued before.
        let finished = stop.load(Ordering::Relaxed) || rx.is_disconnected();
        let mut n = 0u64;
        let mut failed = 0u64;
        for rec in rx.try_iter() {
            line.clear();
            match format {
                LogFormat::Json => rec.write_json_line(&mut line),
                LogFormat::Text => rec.write_text_line(&mut line),
            }
            // BufWriter flushes whole buffered lines before taking one that does not fit, so a
            // line is only split if it alone exceeds the buffer.
            match out.write_all(line.as_bytes()) {
                Ok(()) => n += 1,
                Err(_) => failed += 1,
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

    #[test]
    fn lines_from_many_threads_arrive_whole_and_redacted() {
        let buf = Shared::default();
        let sink = LogSink::with_writer(
            buf.clone(),
            LogFormat::Json,
            10_000,
            Duration::from_millis(1),
        )
        .expect("sink");
        let senders: Vec<_> = (0..4).map(|_| sink.sender()).collect();
        let threads: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(t, s)| {
                std::thread::spawn(move || {
                    for i in 0..500 {
                        assert!(s.send(record(t as u64 * 1000 + i)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("sender");
        }
        let counters = sink.counters();
        sink.close();
        let text = String::from_utf8(buf.0.lock().expect("buffer").clone()).expect("utf8");
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
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (release, stalled) = flume::unbounded();
        let sink = LogSink::with_writer(
            Stalled(stalled),
            LogFormat::Text,
            8,
            Duration::from_millis(1),
        )
        .expect("sink");
        let s = sink.sender();
        let started = std::time::Instant::now();
        let accepted = (0..1000).filter(|&i| s.send(record(i))).count();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "send never blocks"
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
        let s = sink.sender();
        sink.close();
        assert!(!s.send(record(1)));
    }
}
