//! The gateway's log subscriber: `tracing_subscriber`'s formatter for the diagnostic events, and
//! a formatter of its own for the access records (target [`ACCESS_TARGET`]), one per request.
//!
//! The access record is the one event on the hot path, and `tracing_subscriber`'s generic
//! formatter was a tenth of a cache hit's CPU (a `Debug` round trip per field, padding, ANSI
//! styling, a timestamp formatted from scratch). [`AccessLayer`] writes the same fields into a
//! reused per-thread buffer: strings as they are (JSON: escaped by `serde_json`; text: quoted and
//! escaped only when they hold anything but plain token characters), integers with `itoa`, and
//! the timestamp's date and time of day formatted once per second per thread. The line goes to
//! the same writer as every other event, in the same shape as the diagnostic lines:
//!
//! ```text
//! 2026-11-21T10:00:00.123456Z  INFO ratepay_gateway::access: request request_id=… method=GET path=/… status=200 …
//! {"timestamp":"2026-11-21T10:00:00.123456Z","level":"INFO","target":"ratepay_gateway::access","message":"request","request_id":"…",…}
//! ```
//!
//! Filtering is unchanged: `RUST_LOG` (an `EnvFilter`) decides for both, so
//! `RUST_LOG=info,ratepay_gateway::access=off` turns the access log off.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
    io::Write,
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{field::Field, Event, Subscriber};
use tracing_subscriber::{
    filter::{filter_fn, EnvFilter},
    fmt::MakeWriter,
    layer::{Context, Layer, SubscriberExt},
    registry::Registry,
};

/// The target of the per-request access records.
pub const ACCESS_TARGET: &str = "ratepay_gateway::access";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `timestamp  LEVEL target: message key=value …`
    Text,
    /// One JSON object per line, fields flattened.
    Json,
}

/// The whole subscriber: `filter` for everything, access records through [`AccessLayer`], every
/// other event through `tracing_subscriber`'s formatter; all lines to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Clone + Send + Sync + 'static,
{
    let access = AccessLayer {
        format,
        writer: writer.clone(),
    }
    .with_filter(filter_fn(|m| m.target() == ACCESS_TARGET));
    let not_access = filter_fn(|m| m.target() != ACCESS_TARGET);
    let base = Registry::default().with(filter).with(access);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(base.with(fmt.with_filter(not_access))),
        LogFormat::Json => {
            Box::new(base.with(fmt.json().flatten_event(true).with_filter(not_access)))
        }
    }
}

/// Formats access records (see the module docs). Install it behind a filter on
/// [`ACCESS_TARGET`]; [`subscriber`] does.
pub struct AccessLayer<W> {
    format: LogFormat,
    writer: W,
}

thread_local! {
    static LINE: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
}

/// A thread's reused buffers.
struct Scratch {
    /// The line being formatted.
    line: Vec<u8>,
    /// A `Debug` value's text before it is escaped.
    debug: String,
    /// The second whose `YYYY-MM-DDTHH:MM:SS` was last written, and that text.
    second: Option<(u64, [u8; 19])>,
}

impl Scratch {
    const fn new() -> Self {
        Self {
            line: Vec::new(),
            debug: String::new(),
            second: None,
        }
    }
}

impl<S, W> Layer<S> for AccessLayer<W>
where
    S: Subscriber,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let now = SystemTime::now();
        let write = |scratch: &mut Scratch| {
            scratch.line.clear();
            format_line(scratch, self.format, now, event);
            let _ = self.writer.make_writer().write_all(&scratch.line);
            // One very long path must not pin a large buffer on this thread for good.
            if scratch.line.capacity() > 16 * 1024 {
                scratch.line = Vec::new();
            }
        };
        // A record logged while one is being formatted on this thread (never, today) gets
        // buffers of its own rather than a panic.
        let done = LINE.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => {
                write(&mut scratch);
                true
            }
            Err(_) => false,
        });
        if done != Ok(true) {
            write(&mut Scratch::new());
        }
    }
}

fn format_line(scratch: &mut Scratch, format: LogFormat, now: SystemTime, event: &Event<'_>) {
    let Scratch {
        line,
        debug,
        second,
    } = scratch;
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, micros) = (since.as_secs(), since.subsec_micros());
    let date_time = match second {
        Some((s, text)) if *s == secs => *text,
        _ => {
            let text = date_time(secs);
            *second = Some((secs, text));
            text
        }
    };
    let level = event.metadata().level().as_str();
    let target = event.metadata().target();
    match format {
        LogFormat::Text => {
            line.extend_from_slice(&date_time);
            push_micros(line, micros);
            line.extend_from_slice(b"Z ");
            // The level right-aligned in five columns, as tracing_subscriber writes it.
            for _ in level.len()..5 {
                line.push(b' ');
            }
            line.extend_from_slice(level.as_bytes());
            line.push(b' ');
            line.extend_from_slice(target.as_bytes());
            line.push(b':');
            event.record(&mut Fields {
                format,
                line,
                debug,
            });
        }
        LogFormat::Json => {
            line.extend_from_slice(b"{\"timestamp\":\"");
            line.extend_from_slice(&date_time);
            push_micros(line, micros);
            line.extend_from_slice(b"Z\",\"level\":\"");
            line.extend_from_slice(level.as_bytes());
            line.extend_from_slice(b"\",\"target\":");
            push_json_str(line, target);
            event.record(&mut Fields {
                format,
                line,
                debug,
            });
            line.push(b'}');
        }
    }
    line.push(b'\n');
}

/// `.uuuuuu`
fn push_micros(line: &mut Vec<u8>, micros: u32) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(micros);
    line.push(b'.');
    for _ in digits.len()..6 {
        line.push(b'0');
    }
    line.extend_from_slice(digits.as_bytes());
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix second.
fn date_time(secs: u64) -> [u8; 19] {
    let mut out = *b"1970-01-01T00:00:00";
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(secs as i64) else {
        return out;
    };
    let mut text = String::with_capacity(19);
    let _ = write!(
        text,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if text.len() == out.len() {
        out.copy_from_slice(text.as_bytes());
    }
    out
}

/// Writes the event's fields: text ` key=value` (the message bare), JSON `,"key":value`.
struct Fields<'a> {
    format: LogFormat,
    line: &'a mut Vec<u8>,
    debug: &'a mut String,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        match self.format {
            LogFormat::Text => {
                self.line.push(b' ');
                if field.name() != "message" {
                    self.line.extend_from_slice(field.name().as_bytes());
                    self.line.push(b'=');
                }
            }
            LogFormat::Json => {
                self.line.push(b',');
                push_json_str(self.line, field.name());
                self.line.push(b':');
            }
        }
    }
}

/// Characters a text value may hold unquoted: what ids, names, methods and paths are made of.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| PLAIN[usize::from(b)])
}

/// [`plain`]'s characters as a table: one load per byte instead of a chain of range checks
/// (every access record runs it over its path, ids and names).
static PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'_' | b'.' | b':' | b'/' | b'~' | b'%' | b'+' | b'@'
            );
        b += 1;
    }
    table
};

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        match self.format {
            LogFormat::Text if plain(value) => self.line.extend_from_slice(value.as_bytes()),
            // Quoted, with quotes, backslashes and control characters escaped: a path can't
            // forge a second record.
            LogFormat::Text => {
                let _ = write!(self.line, "{value:?}");
            }
            LogFormat::Json => push_json_str(self.line, value),
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        push_int(self.line, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        push_int(self.line, value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line
            .extend_from_slice(if value { b"true" } else { b"false" });
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // The message (`format_args!`) and anything recorded with `?`/`%`, escaped as a string.
        let mut text = std::mem::take(self.debug);
        text.clear();
        let _ = write!(text, "{value:?}");
        self.record_str(field, &text);
        *self.debug = text;
    }
}

/// A quoted, escaped JSON string.
fn push_json_str(line: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(line, s);
}

fn push_int(line: &mut Vec<u8>, value: impl itoa::Integer) {
    line.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat, filter: &str, log: impl FnOnce()) -> String {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = subscriber(format, EnvFilter::new(filter), false, move || {
            writer.clone()
        });
        tracing::subscriber::with_default(subscriber, log);
        let bytes = lines.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn access_record(path: &str, bytes: Option<u64>) {
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = "req-1",
            method = "GET",
            path,
            caller = "svc",
            status = 200u16,
            latency_us = 41u64,
            bytes,
            replayed = false,
            "request"
        );
    }

    #[test]
    fn json_records_are_one_object_with_typed_and_escaped_fields() {
        let path = "/p\"a\\th\nnext";
        let text = logged(LogFormat::Json, "info", || {
            access_record(path, Some(239));
            access_record("/q", None);
        });
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), 2, "{text}");
        let r = &records[0];
        assert_eq!(r["target"], ACCESS_TARGET);
        assert_eq!(r["level"], "INFO");
        assert_eq!(r["message"], "request");
        assert_eq!(r["request_id"], "req-1");
        assert_eq!(r["path"], path);
        assert_eq!(r["status"], 200);
        assert_eq!(r["latency_us"], 41);
        assert_eq!(r["bytes"], 239);
        assert_eq!(r["replayed"], false);
        assert!(
            records[1].get("bytes").is_none(),
            "an absent size is left out"
        );
    }

    #[test]
    fn plain_is_exactly_the_token_characters() {
        assert!(plain("Az09-_.:/~%+@"));
        assert!(!plain(""));
        for c in [
            " ", "\"", "\\", "=", "\n", "\t", ",", ";", "\u{7f}", "é", "\0",
        ] {
            assert!(!plain(c), "{c:?}");
        }
        let allowed = (0u8..=255).filter(|b| PLAIN[usize::from(*b)]).count();
        assert_eq!(allowed, 26 + 26 + 10 + 9);
    }

    #[test]
    fn text_records_quote_only_what_is_not_plain() {
        let text = logged(LogFormat::Text, "info", || {
            access_record("/transactions/tx-1", Some(239));
            access_record("/a b\"\nforged=1", None);
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            2,
            "a newline in a value stays inside its record: {text}"
        );
        let (stamp, rest) = lines[0].split_once(' ').unwrap();
        assert!(stamp.len() == 27 && stamp.ends_with('Z'), "{stamp}");
        assert_eq!(
            rest,
            " INFO ratepay_gateway::access: request request_id=req-1 method=GET \
             path=/transactions/tx-1 caller=svc status=200 latency_us=41 bytes=239 replayed=false"
        );
        assert!(
            lines[1].contains(r#" path="/a b\"\nforged=1" caller=svc"#),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn the_filter_decides_for_access_records_and_other_events_alike() {
        let text = logged(LogFormat::Text, "info,ratepay_gateway::access=off", || {
            access_record("/x", None);
            tracing::info!(target: "ratepay_gateway::server", "diagnostic");
            tracing::debug!(target: "ratepay_gateway::server", "too fine");
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("INFO ratepay_gateway::server: diagnostic"),
            "{text}"
        );
        let text = logged(LogFormat::Text, "warn,ratepay_gateway::access=info", || {
            access_record("/x", None);
            tracing::info!(target: "ratepay_gateway::server", "diagnostic");
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("ratepay_gateway::access: request"), "{text}");
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        assert_eq!(&date_time(1_795_255_200), b"2026-11-21T10:00:00");
        assert_eq!(&date_time(0), b"1970-01-01T00:00:00");
        let mut line = Vec::new();
        push_micros(&mut line, 5);
        push_micros(&mut line, 123_456);
        assert_eq!(line, b".000005.123456");
    }
}
