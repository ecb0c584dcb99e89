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
//!
//! The edge hands its record to [`access`], not to a `tracing` event: dispatching an event
//! through the layered subscriber (a thread-local lookup, every layer's filter and its per-layer
//! filter bookkeeping, then a visitor call per field) was about half of the access log's cost.
//! [`access`] finds the [`AccessLayer`] in the current subscriber and writes the typed fields
//! directly, in the same bytes. Whether the filter enables access records is decided once, when
//! the subscriber is built, from its static directives; a filter with span directives (which
//! can only be decided per event) gets the record as a `tracing` event, as does a subscriber
//! that is not this one.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
    io::Write,
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{
    callsite::{Callsite, Identifier},
    field::{Field, FieldSet},
    metadata::Kind,
    subscriber::Interest,
    Event, Level, Metadata, Subscriber,
};
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
    let interest = <EnvFilter as Layer<Registry>>::register_callsite(&filter, &ACCESS_META);
    let records = if interest.is_always() {
        Records::Direct
    } else if interest.is_never() {
        Records::Off
    } else {
        Records::AsEvents
    };
    let sink = writer.clone();
    let access = AccessLayer {
        format,
        records,
        write: Box::new(move |line: &[u8]| {
            let _ = sink.make_writer().write_all(line);
        }),
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

/// Formats access records (see the module docs), those [`access`] hands it and those that
/// arrive as events. Install it behind a filter on [`ACCESS_TARGET`]; [`subscriber`] does.
pub struct AccessLayer {
    format: LogFormat,
    records: Records,
    /// Appends one whole line to the log.
    write: LineSink,
}

/// Appends one whole line to the log.
type LineSink = Box<dyn Fn(&[u8]) + Send + Sync>;

/// What the filter makes of access records, decided when the subscriber is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Records {
    /// Enabled by a static directive: [`access`] writes them directly.
    Direct,
    /// Disabled: [`access`] does nothing.
    Off,
    /// Decided per event (span directives): [`access`] sends them as events.
    AsEvents,
}

/// One access record: what the edge knows when it answers.
#[derive(Clone, Copy, Debug)]
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub operation: &'a str,
    pub caller: &'a str,
    pub status: u16,
    pub latency_us: u64,
    pub upstream_attempts: u32,
    pub cache: &'a str,
    /// The response body's size when known before it is streamed; left out otherwise.
    pub bytes: Option<u64>,
    pub queued_us: u64,
}

impl AccessRecord<'_> {
    /// The same record as a `tracing` event (field order as [`AccessRecord::write`] writes it).
    fn emit(&self) {
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = self.request_id,
            method = self.method,
            path = self.path,
            operation = self.operation,
            caller = self.caller,
            status = self.status,
            latency_us = self.latency_us,
            upstream_attempts = self.upstream_attempts,
            cache = self.cache,
            bytes = self.bytes,
            queued_us = self.queued_us,
            "request"
        );
    }

    /// The fields, as the event's visitor would write them.
    fn write(&self, f: &mut Fields<'_>) {
        f.str("message", "request");
        f.str("request_id", self.request_id);
        f.str("method", self.method);
        f.str("path", self.path);
        f.str("operation", self.operation);
        f.str("caller", self.caller);
        f.int("status", self.status);
        f.int("latency_us", self.latency_us);
        f.int("upstream_attempts", self.upstream_attempts);
        f.str("cache", self.cache);
        if let Some(bytes) = self.bytes {
            f.int("bytes", bytes);
        }
        f.int("queued_us", self.queued_us);
    }
}

/// Logs one access record (see the module docs): directly through the current subscriber's
/// [`AccessLayer`] when it has one, as a `tracing` event otherwise.
pub fn access(record: &AccessRecord<'_>) {
    let as_event =
        tracing::dispatcher::get_default(|dispatch| match dispatch.downcast_ref::<AccessLayer>() {
            Some(layer) => match layer.records {
                Records::Direct => {
                    layer.write_line(|scratch, format, now| {
                        let level = Level::INFO.as_str();
                        let f = &mut begin_line(scratch, format, now, level, ACCESS_TARGET);
                        record.write(f);
                    });
                    false
                }
                Records::Off => false,
                Records::AsEvents => true,
            },
            None => true,
        });
    // Outside `get_default`: an event dispatched inside it would find no subscriber.
    if as_event {
        record.emit();
    }
}

/// The access records' callsite, for asking the filter about them once (the field names
/// matter to directives such as `ratepay_gateway::access[{status}]=info`).
struct AccessCallsite;

impl Callsite for AccessCallsite {
    fn set_interest(&self, _: Interest) {}
    fn metadata(&self) -> &Metadata<'_> {
        &ACCESS_META
    }
}

static ACCESS_CALLSITE: AccessCallsite = AccessCallsite;

static ACCESS_META: Metadata<'static> = Metadata::new(
    "request",
    ACCESS_TARGET,
    Level::INFO,
    Some(file!()),
    Some(line!()),
    Some(module_path!()),
    FieldSet::new(
        &[
            "message",
            "request_id",
            "method",
            "path",
            "operation",
            "caller",
            "status",
            "latency_us",
            "upstream_attempts",
            "cache",
            "bytes",
            "queued_us",
        ],
        Identifier(&ACCESS_CALLSITE),
    ),
    Kind::EVENT,
);

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

impl AccessLayer {
    /// Formats one line with `format_fields` into this thread's buffer and writes it.
    fn write_line(&self, format_fields: impl Fn(&mut Scratch, LogFormat, SystemTime)) {
        let now = SystemTime::now();
        let write = |scratch: &mut Scratch| {
            scratch.line.clear();
            format_fields(scratch, self.format, now);
            end_line(&mut scratch.line, self.format);
            (self.write)(&scratch.line);
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

impl<S: Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        self.write_line(|scratch, format, now| {
            let (level, target) = (event.metadata().level(), event.metadata().target());
            event.record(&mut begin_line(
                scratch,
                format,
                now,
                level.as_str(),
                target,
            ));
        });
    }
}

/// Writes a line's timestamp, level and target; returns the writer of its fields.
fn begin_line<'a>(
    scratch: &'a mut Scratch,
    format: LogFormat,
    now: SystemTime,
    level: &str,
    target: &str,
) -> Fields<'a> {
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
        }
        LogFormat::Json => {
            line.extend_from_slice(b"{\"timestamp\":\"");
            line.extend_from_slice(&date_time);
            push_micros(line, micros);
            line.extend_from_slice(b"Z\",\"level\":\"");
            line.extend_from_slice(level.as_bytes());
            line.extend_from_slice(b"\",\"target\":");
            push_json_str(line, target);
        }
    }
    Fields {
        format,
        line,
        debug,
    }
}

/// Closes a line [`begin_line`] began, once its fields are written.
fn end_line(line: &mut Vec<u8>, format: LogFormat) {
    if format == LogFormat::Json {
        line.push(b'}');
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
    fn key(&mut self, name: &str) {
        match self.format {
            LogFormat::Text => {
                self.line.push(b' ');
                if name != "message" {
                    self.line.extend_from_slice(name.as_bytes());
                    self.line.push(b'=');
                }
            }
            LogFormat::Json => {
                self.line.push(b',');
                push_json_str(self.line, name);
                self.line.push(b':');
            }
        }
    }

    fn str(&mut self, name: &str, value: &str) {
        self.key(name);
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

    fn int(&mut self, name: &str, value: impl itoa::Integer) {
        self.key(name);
        self.line
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
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
        self.str(field.name(), value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.int(field.name(), value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.int(field.name(), value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field.name());
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

    fn sample(path: &str, bytes: Option<u64>) -> AccessRecord<'_> {
        AccessRecord {
            request_id: "req-1",
            method: "POST",
            path,
            operation: "payment.cancel",
            caller: "svc",
            status: 201,
            latency_us: 4_321,
            upstream_attempts: 2,
            cache: "-",
            bytes,
            queued_us: 0,
        }
    }

    /// The line without its timestamp, which differs between two records.
    fn untimed(format: LogFormat, text: &str) -> Vec<String> {
        text.lines()
            .map(|l| match format {
                LogFormat::Text => l[27..].to_owned(),
                LogFormat::Json => {
                    let at = l.find("\"timestamp\":\"").unwrap() + 13;
                    format!("{}{}", &l[..at], &l[at + 27..])
                }
            })
            .collect()
    }

    #[test]
    fn direct_records_are_the_bytes_the_event_would_have_written() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let records = [sample("/a b\"\nforged=1", Some(239)), sample("/q", None)];
            let direct = logged(format, "info", || records.iter().for_each(access));
            let events = logged(format, "info", || records.iter().for_each(|r| r.emit()));
            assert_eq!(direct.lines().count(), 2, "{direct}");
            assert_eq!(untimed(format, &direct), untimed(format, &events));
            // A filter that enables them only inside a span gets them as events, which it
            // decides one by one: the same bytes again.
            let dynamic = logged(format, "warn,[request]=info", || {
                access(&records[0]);
                tracing::warn_span!("request").in_scope(|| records.iter().for_each(access));
            });
            assert_eq!(untimed(format, &dynamic), untimed(format, &events));
        }
        let text = logged(LogFormat::Text, "info", || access(&sample("/q", None)));
        assert!(
            text.ends_with(
                " INFO ratepay_gateway::access: request request_id=req-1 method=POST path=/q \
                 operation=payment.cancel caller=svc status=201 latency_us=4321 \
                 upstream_attempts=2 cache=- queued_us=0\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_filter_is_asked_once_about_access_records() {
        let records = |filter: &str| {
            let s = subscriber(
                LogFormat::Text,
                EnvFilter::new(filter),
                false,
                std::io::sink,
            );
            let dispatch = tracing::Dispatch::new(s);
            dispatch.downcast_ref::<AccessLayer>().map(|l| l.records)
        };
        assert_eq!(records("info"), Some(Records::Direct));
        assert_eq!(
            records("warn,ratepay_gateway::access=info"),
            Some(Records::Direct)
        );
        assert_eq!(
            records("info,ratepay_gateway::access=off"),
            Some(Records::Off)
        );
        assert_eq!(records("warn"), Some(Records::Off));
        assert_eq!(records("warn,[request]=info"), Some(Records::AsEvents));
        // What it decided holds: nothing written when off.
        let text = logged(LogFormat::Text, "info,ratepay_gateway::access=off", || {
            access(&sample("/x", None));
        });
        assert_eq!(text, "");
    }

    #[test]
    fn another_subscriber_gets_access_records_as_events() {
        let lines = Lines::default();
        let writer = lines.clone();
        let stock = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(stock, || access(&sample("/x", Some(3))));
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("ratepay_gateway::access: request request_id=\"req-1\"")
                || text.contains("ratepay_gateway::access: request request_id=req-1"),
            "{text}"
        );
        assert!(text.contains("bytes=3"), "{text}");
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
