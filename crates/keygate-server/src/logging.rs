//! Log lines: to stderr, as text or JSON, through a background writer.

use crate::cli::args::{LogFormat, LogLevel};

/// Logs go to stderr through a background writer, so a request never waits on a write(2);
/// the queue blocks rather than drop lines when it is full. Returns the writer's guard (keep
/// it: dropping it flushes what is queued) and the access log writing to the same place.
pub fn init_logging(
    format: LogFormat,
    level: LogLevel,
) -> (tracing_appender::non_blocking::WorkerGuard, AccessLog) {
    let level = match level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Trace => tracing::Level::TRACE,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
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

/// The access log: one line per request — time, request id, method, route template (never the
/// raw path or query: they may hold a key), status and latency.
///
/// In production the line is formatted here, in the same shape the log's formatter gives other
/// lines (text or JSON), and handed to the log's background writer in one write: no event
/// dispatch, no field visitors, the timestamp's date part formatted once a second. That takes
/// the access log from about a sixth of a `/v1/verify` request's cost to a fraction of it.
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
        writer: tracing_appender::non_blocking::NonBlocking,
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
        use std::fmt::Write as _;
        use std::io::Write as _;
        let micros = took.as_micros();
        let (whole, frac) = (micros / 1000, micros % 1000);
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
                let mut line = String::with_capacity(192);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                if *json {
                    line.push_str("{\"timestamp\":\"");
                    push_timestamp(&mut line, now);
                    let _ = write!(
                        line,
                        "\",\"level\":\"INFO\",\"message\":\"request finished\",\
                         \"request_id\":\"{id}\",\"method\":\"{method}\",\"route\":\"{route}\",\
                         \"status\":{status},\"latency_ms\":{whole}.{frac:03},\"target\":\"{TARGET}\"}}"
                    );
                } else {
                    push_timestamp(&mut line, now);
                    let _ = write!(
                        line,
                        "  INFO {TARGET}: request finished request_id={id} method={method} \
                         route={route} status={status} latency_ms={whole}.{frac:03}"
                    );
                }
                line.push('\n');
                let _ = writer.clone().write_all(line.as_bytes());
            }
        }
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
    let _ = write!(out, ".{:06}Z", since_epoch.subsec_micros());
}

#[cfg(test)]
mod tests {
    use super::*;

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
