//! Log lines: to stderr, as text or JSON, through a background writer.

use crate::cli::args::{LogFormat, LogLevel};

/// Logs go to stderr through a background writer ([`LogWriter`]), so a request never waits on
/// a write(2) nor wakes a thread to log a line. Returns the writer's guard (keep it: dropping
/// it writes what is still buffered) and the access log writing to the same place.
pub fn init_logging(format: LogFormat, level: LogLevel) -> (LogGuard, AccessLog) {
    let level = match level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Trace => tracing::Level::TRACE,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = LogWriter::start(std::io::stderr());
    let access = if level >= tracing::Level::INFO {
        AccessLog::Direct {
            writer: writer.clone(),
            json: format == LogFormat::Json,
        }
    } else {
        AccessLog::Off
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => tracing::subscriber::set_global_default(builder.finish()),
        LogFormat::Json => tracing::subscriber::set_global_default(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .finish(),
        ),
    };
    (guard, access)
}

/// How long a line may wait in the [`LogWriter`]'s buffer before it is written.
pub const LOG_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(20);
/// Bytes buffered at which the [`LogWriter`]'s thread is woken to write at once.
const LOG_FLUSH_BYTES: usize = 64 * 1024;
/// Most bytes buffered: a writer that finds this many waiting writes them itself (the log
/// slows down the requests rather than drop lines or grow without bound).
const LOG_MAX_BUFFERED: usize = 1024 * 1024;

/// The log's writer: a line is appended to a shared buffer under a lock, and a background
/// thread writes the buffer out every [`LOG_FLUSH_EVERY`] (sooner once it holds 64 KiB), in
/// one write(2) for all the lines gathered. Logging a line costs a copy, not a system call
/// or a thread wake-up per line, which is what a channel to a writer thread costs when lines
/// come one at a time. Lines reach the output at most [`LOG_FLUSH_EVERY`] late; the buffer is
/// bounded ([`LOG_MAX_BUFFERED`]); dropping the [`LogGuard`] writes what is left.
#[derive(Clone)]
pub struct LogWriter {
    shared: std::sync::Arc<LogBuffer>,
}

struct LogBuffer {
    lines: std::sync::Mutex<Vec<u8>>,
    /// Woken when the buffer passes [`LOG_FLUSH_BYTES`] or the guard is dropped.
    wake: std::sync::Condvar,
    /// Where the lines go; locked by whoever writes them out (the thread, or a writer that
    /// found the buffer full), so lines keep their order.
    output: std::sync::Mutex<Box<dyn std::io::Write + Send>>,
    closed: std::sync::atomic::AtomicBool,
}

impl LogBuffer {
    /// Writes out whatever is buffered. Takes the output lock first, then swaps the buffer
    /// out, so that what one flush took is written before what the next one takes.
    fn flush(&self, spare: &mut Vec<u8>) {
        let mut output = self.output.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *lines, spare);
        }
        if !spare.is_empty() {
            // Nowhere to report a failed log write; the lines are dropped.
            let _ = output.write_all(spare);
            let _ = output.flush();
            spare.clear();
        }
        // Give back a buffer grown by a burst rather than keep it.
        spare.shrink_to(LOG_FLUSH_BYTES * 2);
    }
}

impl LogWriter {
    /// A writer to `output` and the guard that ends its thread.
    pub fn start(output: impl std::io::Write + Send + 'static) -> (Self, LogGuard) {
        let shared = std::sync::Arc::new(LogBuffer {
            lines: std::sync::Mutex::new(Vec::with_capacity(LOG_FLUSH_BYTES)),
            wake: std::sync::Condvar::new(),
            output: std::sync::Mutex::new(Box::new(output)),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("keygate-log".into())
                .spawn(move || {
                    use std::sync::atomic::Ordering;
                    let mut spare = Vec::with_capacity(LOG_FLUSH_BYTES);
                    loop {
                        let closed = shared.closed.load(Ordering::Acquire);
                        shared.flush(&mut spare);
                        if closed {
                            return;
                        }
                        let lines = shared.lines.lock().unwrap_or_else(|p| p.into_inner());
                        if lines.len() < LOG_FLUSH_BYTES && !shared.closed.load(Ordering::Acquire) {
                            drop(
                                shared
                                    .wake
                                    .wait_timeout(lines, LOG_FLUSH_EVERY)
                                    .unwrap_or_else(|p| p.into_inner()),
                            );
                        }
                    }
                })
                .expect("start the log writer thread")
        };
        let guard = LogGuard {
            shared: shared.clone(),
            thread: Some(thread),
        };
        (Self { shared }, guard)
    }
}

impl LogWriter {
    /// Appends `buf` (whole lines) to the buffer.
    pub fn append(&self, buf: &[u8]) {
        let full = {
            let mut lines = self.shared.lines.lock().unwrap_or_else(|p| p.into_inner());
            lines.extend_from_slice(buf);
            if lines.len() >= LOG_FLUSH_BYTES && lines.len() - buf.len() < LOG_FLUSH_BYTES {
                self.shared.wake.notify_one();
            }
            lines.len() >= LOG_MAX_BUFFERED
        };
        if full {
            self.shared.flush(&mut Vec::new());
        }
    }
}

/// One log event's writer (what [`LogWriter`] makes for the log's formatter): it gathers
/// the event's writes and appends them as one piece when dropped, so lines from several
/// threads never interleave, however the formatter splits its writes.
pub struct EventWriter {
    log: LogWriter,
    line: Vec<u8>,
}

impl std::io::Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.log.append(&self.line);
        }
    }
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventWriter")
    }
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogWriter")
    }
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogGuard")
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter {
            log: self.clone(),
            line: Vec::new(),
        }
    }
}

/// Ends the [`LogWriter`]'s thread when dropped, after it has written every buffered line.
pub struct LogGuard {
    shared: std::sync::Arc<LogBuffer>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        {
            let _lines = self.shared.lines.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The access log: one line per request — time, request id, method, route template (never the
/// raw path or query: they may hold a key), status and latency.
///
/// In production the line is formatted here, in the same shape the log's formatter gives other
/// lines (text or JSON), and appended to the [`LogWriter`]'s buffer in one write: no event
/// dispatch, no field visitors, the timestamp's date part formatted once a second, no system
/// call. That takes the access log from about a sixth of a `/v1/verify` request's cost to a
/// fraction of it.
#[derive(Clone, Default)]
pub enum AccessLog {
    /// No access log (log level above `info`).
    Off,
    /// Through `tracing`, like any other event (tests that capture events use this).
    #[default]
    Tracing,
    /// Formatted here and written to the log's background writer.
    Direct {
        /// The log's writer.
        writer: LogWriter,
        /// JSON lines rather than text.
        json: bool,
    },
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Off => "AccessLog::Off",
            Self::Tracing => "AccessLog::Tracing",
            Self::Direct { json: false, .. } => "AccessLog::Direct(text)",
            Self::Direct { json: true, .. } => "AccessLog::Direct(json)",
        })
    }
}

/// The target the access log's lines name (the module that emits them).
const TARGET: &str = "keygate_server::api";
/// The target the gateway's access lines name, as its [`keygate_gateway::TracingAccessLog`]
/// events do.
const GATEWAY_TARGET: &str = "keygate_gateway::access";

impl AccessLog {
    /// Logs one finished request. `id` and `route` are safe text (checked request ids, route
    /// templates), so nothing needs escaping.
    pub fn record(
        &self,
        id: &str,
        method: &str,
        route: &str,
        status: u16,
        took: std::time::Duration,
    ) {
        match self {
            Self::Off => {}
            Self::Tracing => tracing::info!(
                request_id = %id,
                %method,
                route,
                status,
                latency_ms = took.as_secs_f64() * 1000.0,
                "request finished"
            ),
            Self::Direct { writer, json } => {
                let mut line = Line::start(*json, TARGET, "request finished");
                line.plain("request_id", id);
                line.plain("method", method);
                line.plain("route", route);
                line.number("status", status.into());
                line.millis("latency_ms", took);
                writer.append(line.finish(TARGET).as_bytes());
            }
        }
    }
}

/// The gateway's access log: the same line its `tracing` event gives (text fields quoted as
/// `Debug` quotes them), formatted here and appended to the log's writer.
impl keygate_gateway::AccessLogger for AccessLog {
    fn log(&self, record: &keygate_gateway::AccessRecord<'_>) {
        match self {
            Self::Off => {}
            Self::Tracing => keygate_gateway::TracingAccessLog.log(record),
            Self::Direct { writer, json } => {
                let mut line = Line::start(*json, GATEWAY_TARGET, "request");
                // The gateway takes a client's request id only in `A-Z a-z 0-9 - _ .`.
                line.quoted_plain("request_id", record.request_id);
                line.plain("method", record.method);
                line.quoted("route", record.route);
                line.quoted("key_id", record.key_id);
                line.number("status", record.status.into());
                if let Some(upstream) = record.upstream {
                    line.millis("upstream_ms", upstream);
                }
                line.millis("duration_ms", record.duration);
                line.number("bytes", record.bytes);
                line.quoted_plain("body", record.body);
                writer.append(line.finish(GATEWAY_TARGET).as_bytes());
            }
        }
    }
}

/// One `INFO` line in the shape the log's formatter gives an event (text, or JSON with the
/// event's fields flattened), built from pieces: no event dispatch, no field visitors, no
/// `core::fmt` for numbers, the timestamp's date part formatted once a second.
struct Line {
    out: String,
    json: bool,
}

impl Line {
    /// The timestamp, level, target (text) and message.
    fn start(json: bool, target: &str, message: &'static str) -> Self {
        let mut out = String::with_capacity(256);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if json {
            out.push_str("{\"timestamp\":\"");
            push_timestamp(&mut out, now);
            out.push_str("\",\"level\":\"INFO\",\"message\":");
            push_json_string(&mut out, message);
        } else {
            push_timestamp(&mut out, now);
            out.push_str("  INFO ");
            out.push_str(target);
            out.push_str(": ");
            out.push_str(message);
        }
        Self { out, json }
    }

    fn name(&mut self, name: &str) {
        if self.json {
            self.out.push_str(",\"");
            self.out.push_str(name);
            self.out.push_str("\":");
        } else {
            self.out.push(' ');
            self.out.push_str(name);
            self.out.push('=');
        }
    }

    /// A field of safe text, as `Display` writes it (`%value` in an event): bare in text.
    fn plain(&mut self, name: &str, value: &str) {
        self.name(name);
        if self.json {
            push_json_string(&mut self.out, value);
        } else {
            self.out.push_str(value);
        }
    }

    /// [`Line::quoted`] for text known to need no escaping (checked request ids, fixed
    /// words): quoted as it is.
    fn quoted_plain(&mut self, name: &str, value: &str) {
        debug_assert!(value.bytes().all(plain_byte), "{value:?} needs escaping");
        self.name(name);
        push_quoted(&mut self.out, value);
    }

    /// A text field as an event's `&str` field is written: quoted and escaped as `Debug`
    /// does in text.
    fn quoted(&mut self, name: &str, value: &str) {
        self.name(name);
        if self.json {
            push_json_string(&mut self.out, value);
        } else if value.bytes().all(plain_byte) {
            push_quoted(&mut self.out, value);
        } else {
            use std::fmt::Write as _;
            let _ = write!(self.out, "{value:?}");
        }
    }

    fn number(&mut self, name: &str, value: u64) {
        self.name(name);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    /// A duration in milliseconds with three decimals (microseconds).
    fn millis(&mut self, name: &str, took: std::time::Duration) {
        self.name(name);
        // u64 microseconds last 584,000 years; u128 arithmetic costs several times as much.
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.out.push_str(itoa::Buffer::new().format(micros / 1000));
        self.out.push('.');
        push_padded::<3>(&mut self.out, micros % 1000);
    }

    /// The line, ended (JSON: the target, then the closing brace) with its newline.
    fn finish(mut self, target: &str) -> String {
        if self.json {
            self.out.push_str(",\"target\":");
            push_json_string(&mut self.out, target);
            self.out.push('}');
        }
        self.out.push('\n');
        self.out
    }
}

/// Printable ASCII that neither `Debug` nor JSON escapes.
fn plain_byte(b: u8) -> bool {
    (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\'
}

/// Appends `text` between double quotes, as it is (text of [`plain_byte`]s only: the same in
/// `Debug`'s quoting and in JSON).
fn push_quoted(out: &mut String, text: &str) {
    out.push('"');
    out.push_str(text);
    out.push('"');
}

/// Appends `text` as a JSON string.
fn push_json_string(out: &mut String, text: &str) {
    if text.bytes().all(plain_byte) {
        push_quoted(out, text);
    } else {
        out.push_str(&serde_json::Value::from(text).to_string());
    }
}

/// Appends `since_epoch` as RFC 3339 UTC with microseconds (`2026-11-30T12:00:01.123456Z`),
/// formatting the date and time of day once per second per thread.
fn push_timestamp(out: &mut String, since_epoch: std::time::Duration) {
    use std::cell::RefCell;
    use std::fmt::Write as _;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let secs = since_epoch.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let t = time::OffsetDateTime::from_unix_timestamp(secs as i64)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            cached.1.clear();
            let _ = write!(
                cached.1,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            cached.0 = secs;
        }
        out.push_str(&cached.1);
    });
    out.push('.');
    push_padded::<6>(out, since_epoch.subsec_micros().into());
    out.push('Z');
}

/// Appends the last `N` decimal digits of `n`, zero-padded (`format!("{n:0N$}")` for `n` below
/// 10^N, without the formatting machinery).
fn push_padded<const N: usize>(out: &mut String, mut n: u64) {
    let mut digits = [b'0'; N];
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // ASCII digits: always UTF-8.
    out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read back.
    #[derive(Clone, Default)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn access_lines_have_the_log_formatters_shape_in_text_and_json() {
        let took = std::time::Duration::from_micros(12_045);
        let mut lines = Vec::new();
        for json in [false, true] {
            let sink = Sink::default();
            let (writer, guard) = LogWriter::start(sink.clone());
            AccessLog::Direct { writer, json }.record("0a1b", "POST", "/v1/verify", 200, took);
            drop(guard);
            lines.push(String::from_utf8(sink.0.lock().unwrap().clone()).unwrap());
        }
        let text = &lines[0];
        assert!(text.ends_with("Z  INFO keygate_server::api: request finished request_id=0a1b method=POST route=/v1/verify status=200 latency_ms=12.045\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(json["request_id"], "0a1b");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["route"], "/v1/verify");
        assert_eq!(json["status"], 200);
        assert_eq!(json["latency_ms"], 12.045);
        assert_eq!(json["level"], "INFO");
        assert_eq!(json["target"], "keygate_server::api");
        let stamp = json["timestamp"].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{stamp}"
        );
    }

    #[test]
    fn gateway_access_lines_are_the_tracing_events_lines_in_text_and_json() {
        use keygate_gateway::{AccessLogger as _, AccessRecord};
        let record = AccessRecord {
            request_id: "b63f507f00000001",
            method: "GET",
            route: "/api \"v2\"",
            key_id: "key_01M8QJ48RTB3XWF2FAJSFR1W1H",
            status: 200,
            upstream: Some(std::time::Duration::from_micros(2_818)),
            duration: std::time::Duration::from_micros(3_128),
            bytes: 61,
            body: "complete",
        };
        let mut lines = Vec::new();
        for (json, record) in [
            (false, record),
            (true, record),
            (
                false,
                AccessRecord {
                    upstream: None,
                    ..record
                },
            ),
        ] {
            let sink = Sink::default();
            let (writer, guard) = LogWriter::start(sink.clone());
            AccessLog::Direct { writer, json }.log(&record);
            drop(guard);
            lines.push(String::from_utf8(sink.0.lock().unwrap().clone()).unwrap());
        }
        let text = &lines[0];
        assert!(text.ends_with("Z  INFO keygate_gateway::access: request request_id=\"b63f507f00000001\" method=GET route=\"/api \\\"v2\\\"\" key_id=\"key_01M8QJ48RTB3XWF2FAJSFR1W1H\" status=200 upstream_ms=2.818 duration_ms=3.128 bytes=61 body=\"complete\"\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(json["message"], "request");
        assert_eq!(json["request_id"], "b63f507f00000001");
        assert_eq!(json["method"], "GET");
        assert_eq!(json["route"], "/api \"v2\"");
        assert_eq!(json["key_id"], "key_01M8QJ48RTB3XWF2FAJSFR1W1H");
        assert_eq!(json["status"], 200);
        assert_eq!(json["upstream_ms"], 2.818);
        assert_eq!(json["duration_ms"], 3.128);
        assert_eq!(json["bytes"], 61);
        assert_eq!(json["body"], "complete");
        assert_eq!(json["target"], "keygate_gateway::access");
        assert!(!lines[2].contains("upstream_ms"), "{}", lines[2]);
    }

    #[test]
    fn the_log_writer_keeps_every_line_whole_and_in_order_through_its_guard() {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::start(sink.clone());
        // Four threads, enough lines to pass the wake-up and the full-buffer bounds.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    use std::io::Write as _;
                    use tracing_subscriber::fmt::MakeWriter as _;
                    for i in 0..20_000 {
                        // As the log's formatter writes: an event's writer, written in pieces.
                        let mut event = writer.make_writer();
                        writeln!(event, "thread {t} line {i:06} {}", "x".repeat(40)).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard); // writes what is still buffered
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 5, "a whole line: {line:?}");
            let t: usize = fields[1].parse().unwrap();
            assert_eq!(fields[3].parse::<usize>().unwrap(), next[t], "in order");
            next[t] += 1;
        }
        assert_eq!(next, [20_000; 4], "every line arrived");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut out = String::new();
        push_timestamp(
            &mut out,
            std::time::Duration::from_micros(1_767_225_600_123_456),
        );
        assert_eq!(out, "2026-01-01T00:00:00.123456Z");
        out.clear();
        push_timestamp(
            &mut out,
            std::time::Duration::from_micros(1_767_225_601_000_007),
        );
        assert_eq!(
            out, "2026-01-01T00:00:01.000007Z",
            "the next second is formatted anew"
        );
    }
}
