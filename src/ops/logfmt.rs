//! Log line formatting for the hot path. Every request writes one access line,
//! so what `tracing-subscriber` does per line is paid per request. Measured
//! with callgrind (`BENCHMARKS.md`): the default fields formatter styles every
//! field name through `nu_ansi_term` even when colours are off, and the default
//! clock converts and formats the full date on every line. The two pieces here
//! write the same text without that work:
//!
//! * [`Utc`]: RFC 3339 UTC with microseconds (`2026-11-28T18:31:01.123456Z`), as
//!   `tracing_subscriber::fmt::time::SystemTime` prints it, with the part up to
//!   the second formatted once per second and thread.
//! * [`PlainFields`]: `name=value` pairs separated by spaces, the message bare
//!   (control characters escaped) and strings quoted, as `DefaultFields` prints
//!   them without colour.
//! * [`write_access`]: the access line in the text format, written by hand into
//!   a reused buffer and handed straight to the log writer (the same background
//!   writer, so lines keep their order): the same bytes as the `tracing` event
//!   [`access_event`] (pinned by `access_line_by_hand_is_the_events_text`),
//!   without the event's per-field `dyn Value` dispatch and `fmt` machinery
//!   (~6 000 of a cache hit's ~63 000 instructions under callgrind, BENCHMARKS.md).

use arc_swap::ArcSwapOption;
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use tracing::field::{Field, Visit};
use tracing_appender::non_blocking::NonBlocking;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// The log timestamp: UTC, microseconds, `Z`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Utc;

thread_local! {
    /// The last whole second this thread formatted, and its text up to `:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for Utc {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let mut stamp = [0u8; 27];
        w.write_str(timestamp(&mut stamp))
    }
}

/// The timestamp's text, `2026-11-28T18:31:01.123456Z`, into `buf`.
fn timestamp(buf: &mut [u8; 27]) -> &str {
    // A clock before 1970 prints as the epoch; it cannot happen on a
    // machine that validated a TLS certificate or a token's `exp`.
    let since = crate::resilience::clock::Clock::now(&crate::resilience::clock::SystemClock)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            let i = i64::try_from(secs).unwrap_or(i64::MAX);
            let formatted = match chrono::DateTime::from_timestamp(i, 0) {
                Some(t) => write!(cached.1, "{}", t.format("%Y-%m-%dT%H:%M:%S")),
                None => Err(fmt::Error),
            };
            // Years past 9999 (or a formatting failure) print as the last
            // second of 9999: the text keeps its 19 bytes.
            if formatted.is_err() || cached.1.len() != 19 {
                cached.1.clear();
                cached.1.push_str("9999-12-31T23:59:59");
            }
            cached.0 = secs;
        }
        buf[..19].copy_from_slice(cached.1.as_bytes());
    });
    // `.{:06}Z` without the formatting machinery.
    let mut us = since.subsec_micros();
    for d in buf[20..26].iter_mut().rev() {
        *d = b'0' + (us % 10) as u8;
        us /= 10;
    }
    buf[19] = b'.';
    buf[26] = b'Z';
    // Only ASCII was written.
    std::str::from_utf8(buf).unwrap_or("1970-01-01T00:00:00.000000Z")
}

/// One access line's fields, as the pipeline has them.
#[derive(Debug, Clone, Copy)]
pub struct AccessFields<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub route: &'a str,
    pub latency_ms: f64,
    pub cache: &'a str,
    pub subject: &'a str,
    pub token: &'a str,
    pub binding: &'a str,
}

/// The access line as a `tracing` event: what every format but plain text
/// (JSON, colours, a test's subscriber) prints.
pub fn access_event(f: &AccessFields<'_>) {
    tracing::info!(
        target: "tokengate::access",
        method = %f.method,
        path = %f.path,
        status = f.status,
        route = f.route,
        latency_ms = f.latency_ms,
        cache = f.cache,
        subject = f.subject,
        token = f.token,
        binding = f.binding,
    );
}

/// The log writer, while the installed format is plain text without colours
/// (`config::reload` keeps it in step with the format layer); empty otherwise.
static TEXT_SINK: ArcSwapOption<NonBlocking> = ArcSwapOption::const_empty();

/// Called by whoever installs or swaps the global format layer.
pub fn set_text_sink(writer: Option<NonBlocking>) {
    TEXT_SINK.store(writer.map(Arc::new));
}

thread_local! {
    /// The access line being built: one buffer per thread, reused.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Writes the access line by hand if the text format is installed; `false`
/// when the caller must emit [`access_event`] instead. The filter (`RUST_LOG`)
/// is asked as the event would be. Inside a span of the global subscriber the
/// format layer would print the span's context: that line is left to it.
pub fn write_access(f: &AccessFields<'_>) -> bool {
    let sink = TEXT_SINK.load();
    let Some(writer) = sink.as_deref() else {
        return false;
    };
    if !tracing::enabled!(target: "tokengate::access", tracing::Level::INFO) {
        return true;
    }
    if tracing::dispatcher::get_default(|d| d.current_span().id().is_some()) {
        return false;
    }
    LINE.with(|cell| {
        let Ok(mut line) = cell.try_borrow_mut() else {
            return false;
        };
        line.clear();
        if format_access(&mut line, f).is_err() {
            return false;
        }
        // As the format layer does, a failed write is not the request's error.
        let _ = writer.clone().write_all(line.as_bytes());
        // A rare huge line (a long path) does not keep its buffer.
        if line.capacity() > 4096 {
            *line = String::new();
        }
        true
    })
}

/// A string field as [`PlainVisitor::record_str`] prints it.
fn quoted(line: &mut String, s: &str) -> fmt::Result {
    if plain(s) {
        line.push('"');
        line.push_str(s);
        line.push('"');
        Ok(())
    } else {
        write!(line, "{s:?}")
    }
}

/// The text format's access line: timestamp, level, target, fields, newline.
fn format_access(line: &mut String, f: &AccessFields<'_>) -> fmt::Result {
    line.push_str(timestamp(&mut [0u8; 27]));
    line.push_str("  INFO tokengate::access: method=");
    line.push_str(f.method);
    line.push_str(" path=");
    line.push_str(f.path);
    line.push_str(" status=");
    write_u64(line, u64::from(f.status))?;
    line.push_str(" route=");
    quoted(line, f.route)?;
    line.push_str(" latency_ms=");
    match Millis::of(f.latency_ms) {
        Some(m) => m.write(line)?,
        None => write!(line, "{:?}", f.latency_ms)?,
    }
    for (name, value) in [
        (" cache=", f.cache),
        (" subject=", f.subject),
        (" token=", f.token),
        (" binding=", f.binding),
    ] {
        line.push_str(name);
        quoted(line, value)?;
    }
    line.push('\n');
    Ok(())
}

/// The text format's field formatter (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainFields;

impl<'w> MakeVisitor<Writer<'w>> for PlainFields {
    type Visitor = PlainVisitor<'w>;

    fn make_visitor(&self, writer: Writer<'w>) -> Self::Visitor {
        PlainVisitor {
            writer,
            first: true,
            result: Ok(()),
        }
    }
}

pub struct PlainVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    fn separate(&mut self) -> fmt::Result {
        if self.first {
            self.first = false;
            Ok(())
        } else {
            self.writer.write_char(' ')
        }
    }

    /// `name=` (after the separator); the value follows.
    fn name(&mut self, field: &Field) -> fmt::Result {
        self.separate()?;
        let name = field.name();
        self.writer
            .write_str(name.strip_prefix("r#").unwrap_or(name))?;
        self.writer.write_char('=')
    }

    fn record_with(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = self.name(field).and_then(|()| value(&mut self.writer));
    }
}

/// Printable ASCII without `"` and `\`: what `{:?}` prints unchanged between
/// the quotes, so the common access-log values skip the escaping machinery.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

/// Decimal digits without the formatting machinery (the same text as `{}`).
fn write_u64(w: &mut impl fmt::Write, mut v: u64) -> fmt::Result {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf[i..]
        .iter()
        .try_for_each(|&d| w.write_char(char::from(d)))
}

/// An `f64` that is a whole number of thousandths (the access log's
/// `latency_ms`: whole microseconds ÷ 1000), printed with integer digits only.
/// Float formatting (the shortest round-trip digits, ~900 instructions under
/// callgrind) made it the costliest field of the access line.
struct Millis {
    whole: u64,
    thousandths: u64,
}

impl Millis {
    /// `None` unless `value` is exactly `n as f64 / 1000.0` for an `n` below
    /// 10¹²: then the shortest decimal that parses back to `value` is `n`'s
    /// digits with the point three places in (a float near 10⁹ is exact to
    /// ~10⁻⁷, so no other decimal with at most three places parses to it),
    /// which is what `{:?}` prints. `{:?}` switches to exponent notation only
    /// below 10⁻⁴ (never, here, except 0) and from 10¹⁶ on.
    fn of(value: f64) -> Option<Self> {
        if !(0.0..1e9).contains(&value) {
            return None;
        }
        let n = (value * 1000.0).round() as u64;
        (n as f64 / 1000.0 == value).then_some(Self {
            whole: n / 1000,
            thousandths: n % 1000,
        })
    }

    /// `{:?}`'s text: `4.234`, `4.23`, `4.0`.
    fn write(&self, w: &mut impl fmt::Write) -> fmt::Result {
        write_u64(w, self.whole)?;
        w.write_char('.')?;
        let t = self.thousandths;
        let digits = [t / 100, t / 10 % 10, t % 10].map(|d| b'0' + d as u8);
        // Trailing zeros go, but one digit stays: `4.0`, not `4.`.
        let mut len = 3;
        while len > 1 && digits[len - 1] == b'0' {
            len -= 1;
        }
        digits[..len]
            .iter()
            .try_for_each(|&d| w.write_char(char::from(d)))
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else if plain(value) {
            self.record_with(field, |w| {
                w.write_char('"')?;
                w.write_str(value)?;
                w.write_char('"')
            });
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_with(field, |w| write_u64(w, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_with(field, |w| {
            if value < 0 {
                w.write_char('-')?;
            }
            write_u64(w, value.unsigned_abs())
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        match Millis::of(value) {
            Some(m) => self.record_with(field, |w| m.write(w)),
            None => self.record_debug(field, &value),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record_with(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            if self.result.is_err() {
                return;
            }
            // A message may quote a peer's words: no terminal escapes in the log.
            self.result = self
                .separate()
                .and_then(|()| write!(Escaping(&mut self.writer), "{value:?}"));
        } else {
            self.record_with(field, |w| write!(w, "{value:?}"));
        }
    }
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Escapes C0 controls that start terminal sequences, DEL and C1 controls, as
/// `tracing-subscriber` does for messages.
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(|c: char| {
            matches!(
                c,
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
            )
        }) {
            self.0.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or_default();
            match c {
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => {
                    write!(self.0, "\\x{:02x}", c as u32)?
                }
                _ => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// Logs the same events through tracing-subscriber's defaults and through
    /// ours; the lines must be identical but for the timestamp.
    fn emit() {
        let token = "ab12";
        tracing::info!(
            target: "tokengate::access",
            method = %"GET",
            path = %"/a b",
            status = 200u16,
            route = "routes[0]",
            latency_ms = 1.25f64,
            cache = "hit",
            subject = "al\"ice\u{1b}[31m",
            token,
            r#type = "x",
        );
        tracing::warn!(error = %"boom", ok = true, no = false, n = -3i64, min = i64::MIN, max = u64::MAX, zero = 0u64, "message with \u{1b}[2J and \u{9b}");
        tracing::info!(
            empty = "",
            tab = "a\tb",
            quote = "say \"hi\"",
            backslash = "a\\b",
            uni = "café",
            del = "x\u{7f}",
            "m"
        );
        tracing::info!(
            a = 0.1 + 0.2,
            b = 1e-7,
            c = -1.5,
            d = 1e17,
            e = 4.0,
            f = 0.734,
            "floats"
        );
        tracing::info!("plain");
    }

    fn lines(ours: bool) -> Vec<String> {
        let out = Capture::default();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(out.clone());
        let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = if ours {
            Box::new(builder.fmt_fields(PlainFields).with_timer(Utc).finish())
        } else {
            Box::new(builder.finish())
        };
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        text.lines()
            .map(|l| {
                // `2026-11-28T18:31:01.123456Z  INFO ...`: drop the timestamp.
                let (ts, rest) = l.split_once(' ').unwrap_or(("", l));
                assert_eq!(ts.len(), 27, "timestamp {ts:?}");
                assert!(
                    ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
                    "timestamp {ts:?}"
                );
                rest.to_owned()
            })
            .collect()
    }

    #[test]
    fn same_text_as_tracing_subscriber_defaults() {
        let ours = lines(true);
        assert_eq!(ours.len(), 5);
        assert_eq!(ours, lines(false));
    }

    /// The integer path prints what `{:?}` prints, for every microsecond value
    /// up to 200 ms and for larger ones; other floats are not taken by it (they
    /// go to `{:?}` itself, compared in `same_text_as_tracing_subscriber_defaults`).
    #[test]
    fn millis_print_as_debug_does() {
        let mut millis: Vec<f64> = (0..200_000u64).map(|us| us as f64 / 1000.0).collect();
        millis.extend([1e6, 3_600_000.001, 999_999_999.999, 123_456_789.5]);
        for v in millis {
            let m = Millis::of(v).unwrap_or_else(|| panic!("{v} not taken"));
            let mut ours = String::new();
            m.write(&mut Writer::new(&mut ours)).unwrap();
            assert_eq!(ours, format!("{v:?}"), "value {v}");
        }
        for v in [
            0.1 + 0.2,
            1e-7,
            0.0004,
            -1.5,
            1e9,
            1e17,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert!(Millis::of(v).is_none(), "{v} taken");
        }
    }

    /// The hand-written access line is byte for byte the text format's line of
    /// the `tracing` event it replaces (but for the clock's reading).
    #[test]
    fn access_line_by_hand_is_the_events_text() {
        let base = AccessFields {
            method: "GET",
            path: "/api/v1/items?x=1",
            status: 200,
            route: "routes[0]",
            latency_ms: 4.234,
            cache: "hit",
            subject: "alice",
            token: "ab12cd34",
            binding: "-",
        };
        let cases = [
            base,
            AccessFields {
                method: "PROPFIND",
                path: "/a b/caf\u{e9}\"q\"\u{1b}[2J",
                status: 503,
                route: "-",
                latency_ms: 0.0,
                cache: "-",
                subject: "al\"ice\u{1b}[31m\\ \u{9b} caf\u{e9}",
                token: "-",
                binding: "dpop",
            },
            AccessFields {
                latency_ms: 1234567.5,
                subject: "",
                route: "tab\there",
                ..base
            },
            // Not whole thousandths: the `{:?}` fallback.
            AccessFields {
                latency_ms: 0.1 + 0.2,
                ..base
            },
            AccessFields {
                latency_ms: 1e-7,
                status: 0,
                ..base
            },
        ];
        for f in cases {
            let out = Capture::default();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .fmt_fields(PlainFields)
                .with_timer(Utc)
                .with_writer(out.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || access_event(&f));
            let theirs = String::from_utf8(out.0.lock().map(|b| b.clone()).unwrap_or_default())
                .unwrap_or_default();
            let mut ours = String::new();
            format_access(&mut ours, &f).unwrap();
            assert_eq!(ours[27..], theirs[27..], "{f:?}");
            assert!(ours.ends_with('\n'));
            assert_eq!(ours.as_bytes()[10], b'T');
        }
    }

    /// No sink installed (a test's or an embedder's own subscriber): the caller
    /// emits the event. With one, the line goes to it, filtered as the event
    /// would be. (One test: the sink is global.)
    #[test]
    fn the_sink_decides_who_writes_the_line() {
        let f = AccessFields {
            method: "GET",
            path: "/sink-test",
            status: 200,
            route: "-",
            latency_ms: 1.0,
            cache: "-",
            subject: "-",
            token: "-",
            binding: "-",
        };
        set_text_sink(None);
        assert!(!write_access(&f));

        let out = Capture::default();
        let (writer, guard) = tracing_appender::non_blocking(out.clone());
        set_text_sink(Some(writer));
        let info = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .finish();
        assert!(tracing::subscriber::with_default(info, || write_access(&f)));
        let warn = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .finish();
        let quiet = AccessFields {
            path: "/filtered-out",
            ..f
        };
        // Filtered out: nothing to write, and nothing for the caller either.
        assert!(tracing::subscriber::with_default(warn, || write_access(
            &quiet
        )));
        set_text_sink(None);
        drop(guard);
        let text = String::from_utf8(out.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        let mut expected = String::new();
        format_access(&mut expected, &f).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(text[27..], expected[27..]);
    }

    #[test]
    fn timestamp_matches_the_default_clock_to_the_second() {
        let mut ours = String::new();
        Utc.format_time(&mut Writer::new(&mut ours)).unwrap();
        let mut theirs = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        // Same shape; the same second unless the clock ticked in between.
        assert_eq!(ours.len(), theirs.len());
        assert_eq!(ours[..16], theirs[..16], "{ours} vs {theirs}");
    }
}
