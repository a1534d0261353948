//! The text log line, written the way tracing-subscriber's default (`Full`, no colours) writes
//! it, at a fraction of its cost: one access line per request made that formatter the largest
//! item of a cached-token request (a quarter of its user-space time, in a profile of
//! `token-load`), spent in `core::fmt` machinery, a timestamp formatted field by field, and
//! colour wrappers painted even without colours.
//!
//! `2026-12-08T01:49:19.123456Z  INFO request{request_id=7f3a}: broker_api::access: request
//! method=POST route=/v1/tenants/{provet_id}/token status=200 latency_ms=0.41 api_key="svc"`
//!
//! Same shape as the default: timestamp (UTC, microseconds), level padded to five, the spans
//! from the root with their fields, the target, the message, then `name=value` fields (strings
//! quoted and escaped, numbers plain, `%`/`?` values as their `Display`/`Debug`), and control
//! characters in messages escaped as the default does, so that a line cannot forge another or
//! drive a terminal. On a terminal the daemon uses the default formatter, with colours.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use broker_service::{Clock, SystemClock};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events (with [`TextFields`] for their fields and their spans').
pub struct TextLine;

/// Formats the fields of events and spans.
pub struct TextFields;

impl<S> FormatEvent<S, TextFields> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, TextFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write_timestamp(&mut writer)?;
        writer.write_str(level(*meta.level()))?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<TextFields>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Fields {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// ` INFO ` and the like: the level padded to five, then a space.
fn level(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE ",
        Level::DEBUG => "DEBUG ",
        Level::INFO => " INFO ",
        Level::WARN => " WARN ",
        Level::ERROR => "ERROR ",
    }
}

thread_local! {
    /// The second last formatted on this thread and its text up to the `.`: a busy daemon
    /// formats the date once a second per thread, not once a line.
    static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
}

/// `2026-12-08T01:49:19.123456Z ` (RFC 3339 in UTC, microseconds, then a space).
fn write_timestamp(writer: &mut Writer<'_>) -> fmt::Result {
    let now = SystemClock.now();
    let second = now.timestamp();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            cached.1.clear();
            write!(cached.1, "{}", now.format("%Y-%m-%dT%H:%M:%S."))?;
            cached.0 = second;
        }
        writer.write_str(&cached.1)
    })?;
    let micros = now.timestamp_subsec_micros().min(999_999);
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for slot in digits.iter_mut().rev() {
        // `rest % 10` is a digit: the cast cannot truncate.
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    writer.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)?;
    writer.write_str("Z ")
}

/// The visitor: `message` first as plain (escaped) text, the rest as `name=value`.
struct Fields<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_> {
    /// The separator (none before the first field) and, unless it is the message, `name=`.
    fn start(&mut self, field: &Field) -> Result<bool, fmt::Error> {
        let name = field.name();
        if !self.first {
            self.writer.write_char(' ')?;
        }
        self.first = false;
        if name == "message" {
            return Ok(true);
        }
        self.writer
            .write_str(name.strip_prefix("r#").unwrap_or(name))?;
        self.writer.write_char('=')?;
        Ok(false)
    }

    fn record(&mut self, field: &Field, write: impl FnOnce(&mut Self, bool) -> fmt::Result) {
        // Metadata of lines bridged from the `log` crate, already in the line's own metadata.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.result = self
            .start(field)
            .and_then(|is_message| write(self, is_message));
    }

    fn integer(&mut self, field: &Field, value: impl itoa::Integer) {
        self.record(field, |this, _| {
            this.writer.write_str(itoa::Buffer::new().format(value))
        });
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, |this, is_message| {
            if is_message {
                Escaping(&mut this.writer).write_str(value)
            } else {
                write!(this.writer, "{value:?}")
            }
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.integer(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.integer(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, |this, _| {
            this.writer.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record(field, |this, _| {
            write!(Escaping(&mut this.writer), "{value}")?;
            if let Some(source) = value.source() {
                write!(this.writer, " {}.sources=[", field.name())?;
                let mut next = Some(source);
                let mut first = true;
                while let Some(error) = next {
                    if !first {
                        this.writer.write_str(", ")?;
                    }
                    first = false;
                    write!(Escaping(&mut this.writer), "{error}")?;
                    next = error.source();
                }
                this.writer.write_char(']')?;
            }
            Ok(())
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, |this, is_message| {
            if is_message {
                write!(Escaping(&mut this.writer), "{value:?}")
            } else {
                write!(this.writer, "{value:?}")
            }
        });
    }
}

/// Writes through, with the control characters that drive terminals (ESC, BEL, BS, FF, DEL
/// and C1) written as escapes, as tracing-subscriber's default formatter does.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // C1 characters (U+0080..U+009F) are 0xC2 0x80..0x9F in UTF-8.
        if !s
            .bytes()
            .any(|b| matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f | 0xc2))
        {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            match c {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                c if ('\u{80}'..='\u{9f}').contains(&c) => {
                    write!(self.0, "\\u{{{:x}}}", u32::from(c))?;
                }
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::{TextFields, TextLine};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    /// What `log` writes, once with this formatter and once with tracing-subscriber's
    /// default (colours off), timestamps cut off.
    fn both(log: impl Fn()) -> (String, String) {
        let ours = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(ours.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .fmt_fields(TextFields)
            .event_format(TextLine)
            .finish();
        tracing::subscriber::with_default(subscriber, &log);
        let default = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(default.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, &log);
        let cut = |c: Captured| {
            let text = String::from_utf8(c.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|l| {
                    let (stamp, rest) = l.split_once(' ').unwrap();
                    assert_eq!(stamp.len(), 27, "{l}");
                    assert!(stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.', "{l}");
                    rest.to_owned()
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        (cut(ours), cut(default))
    }

    #[test]
    fn lines_read_as_the_default_formatter_writes_them() {
        let (ours, default) = both(|| {
            let span = tracing::info_span!("request", request_id = %"abc-1");
            let _entered = span.enter();
            let inner = tracing::info_span!("hookup", provet_id = 7_i64, fresh = true);
            let _inner = inner.enter();
            tracing::info!(
                target: "broker_api::access",
                method = %"POST",
                route = "/v1/tenants/{provet_id}/token",
                status = 200_u16,
                latency_ms = 0.412_f64,
                api_key = Some("svc \"a\""),
                provet_id = Some(-3_i64),
                missing = None::<i64>,
                "request"
            );
            tracing::warn!(r#type = "x", ok = false, "no {} here", "format");
            let err = std::io::Error::other("disk full");
            tracing::error!(error = &err as &dyn std::error::Error, "write failed");
            tracing::debug!(list = ?vec![1, 2], "tabs\tand \u{1b}[31m escapes \u{85}");
        });
        assert_eq!(ours, default);
        assert!(ours.contains(
            " INFO request{request_id=abc-1}:hookup{provet_id=7 fresh=true}: broker_api::access: request method=POST"
        ), "{ours}");
        assert!(ours.contains("\\x1b[31m"), "{ours}");
    }

    #[test]
    fn errors_list_their_sources() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("outer")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let (ours, default) = both(|| {
            let err = Outer(std::io::Error::other("inner"));
            tracing::error!(error = &err as &dyn std::error::Error, "failed");
        });
        assert_eq!(ours, default);
        assert!(
            ours.ends_with("failed error=outer error.sources=[inner]"),
            "{ours}"
        );
    }
}
