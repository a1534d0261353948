//! Logging: one subscriber for the process, text or JSON, to stderr (stdout is the CLI's).
//!
//! Lines are formatted on the thread that logs and appended to a shared buffer; a background
//! thread writes the buffer to stderr every few milliseconds (`BatchedStderr`), so that a
//! request's access line costs a copy, not a write or a wake-up of its own. Colours only when
//! stderr is a terminal. `actix_server` (a line per worker) and
//! `sea_orm_migration` (a line per migration checked) log at `warn` unless the filter names
//! them.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogFormat, LogSettings};

mod text;

/// Dependencies whose info lines say nothing an operator needs.
const QUIET_TARGETS: [&str; 2] = ["actix_server", "sea_orm_migration"];

/// Installs the subscriber. Keep the guard until the process ends: dropping it writes the
/// lines still queued.
pub fn init(settings: &LogSettings) -> Option<LogGuard> {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or_else(|| settings.level.clone());
    let filter = EnvFilter::try_new(filter_spec(&spec))
        .or_else(|_| EnvFilter::try_new(filter_spec("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let Some((writer, guard)) = BatchedStderr::start() else {
        eprintln!("provet-broker: cannot start the log writer thread");
        return None;
    };
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(terminal)
        .log_internal_errors(false);
    // A second init (tests) keeps the first subscriber.
    let installed = match settings.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        // Colours on a terminal: the default formatter. Elsewhere the same lines, cheaper.
        LogFormat::Text if terminal => builder.try_init(),
        LogFormat::Text => builder
            .fmt_fields(text::TextFields)
            .event_format(text::TextLine)
            .try_init(),
    };
    installed.is_ok().then_some(guard)
}

/// `spec` with the quiet targets at `warn`, unless it names them itself.
fn filter_spec(spec: &str) -> String {
    let mut spec = spec.trim().to_owned();
    for target in QUIET_TARGETS {
        if !spec.contains(target) {
            if !spec.is_empty() {
                spec.push(',');
            }
            spec.push_str(target);
            spec.push_str("=warn");
        }
    }
    spec
}

/// How long the writer thread gathers lines before it writes them: the most a line waits.
const GATHER: Duration = Duration::from_millis(10);
/// A logging thread waits (never drops a line) while this much is still unwritten.
const MAX_PENDING: usize = 8 << 20;

/// Log lines for stderr, gathered in one buffer and written by one thread.
///
/// Not `tracing-appender`'s non-blocking writer: it allocates a buffer per line and wakes its
/// thread for each one, which at tens of thousands of access lines a second cost more than
/// the rest of a cached-token request. Here a line is a copy under a lock; the thread is
/// woken once per batch (when a line lands in an empty buffer) and then writes everything
/// gathered in `GATHER` with one call. The order of lines is the order they were logged.
#[derive(Clone)]
struct BatchedStderr(Arc<Shared>);

struct Shared {
    pending: Mutex<Pending>,
    /// The writer thread waits here for lines (or the end).
    lines: Condvar,
    /// Logging threads wait here while `MAX_PENDING` is unwritten.
    room: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn append(&self, line: &[u8]) {
        let mut pending = self.lock();
        while pending.bytes.len() >= MAX_PENDING && !pending.closing {
            pending = self
                .room
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if pending.closing {
            // After the guard was dropped (the process is ending): write it directly.
            drop(pending);
            write_stderr(line);
            return;
        }
        let wake = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        drop(pending);
        if wake {
            self.lines.notify_one();
        }
    }

    /// The writer thread: waits for lines, lets more gather, writes them all at once.
    fn run(&self) {
        let mut batch = Vec::new();
        loop {
            let mut pending = self.lock();
            while pending.bytes.is_empty() && !pending.closing {
                pending = self
                    .lines
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if !pending.closing {
                drop(pending);
                std::thread::sleep(GATHER);
                pending = self.lock();
            }
            std::mem::swap(&mut batch, &mut pending.bytes);
            let closing = pending.closing;
            drop(pending);
            self.room.notify_all();
            write_stderr(&batch);
            batch.clear();
            if closing {
                return;
            }
        }
    }
}

/// Writes to stderr, swallowing errors: when stderr is gone (a closed pipe, a full disk),
/// reporting that on stderr would fail too; the lines are dropped and the daemon keeps
/// serving.
fn write_stderr(bytes: &[u8]) {
    if !bytes.is_empty() {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(bytes);
        let _ = stderr.flush();
    }
}

impl BatchedStderr {
    fn start() -> Option<(Self, LogGuard)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            lines: Condvar::new(),
            room: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run()
            })
            .ok()?;
        Some((
            Self(shared.clone()),
            LogGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(&self.0)
    }
}

/// What the formatter writes one line through (it writes a whole line at once).
struct LineWriter<'a>(&'a Shared);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Keeps the log writer running; dropping it writes every line still gathered.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.lines.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The error and its causes joined by `: `, each message once: many errors (sea-orm's,
/// sqlx's) repeat their source's message in their own, so `{:#}` would print it up to three
/// times.
pub fn cause_chain(err: &anyhow::Error) -> String {
    let mut chain = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if chain.contains(message.as_str()) {
            continue;
        }
        if !chain.is_empty() {
            chain.push_str(": ");
        }
        chain.push_str(&message);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::{cause_chain, filter_spec};

    #[test]
    fn filter_spec_quiets_noisy_targets_unless_named() {
        assert_eq!(
            filter_spec("info"),
            "info,actix_server=warn,sea_orm_migration=warn"
        );
        assert_eq!(
            filter_spec("debug,actix_server=info"),
            "debug,actix_server=info,sea_orm_migration=warn"
        );
        assert_eq!(filter_spec(""), "actix_server=warn,sea_orm_migration=warn");
    }

    #[test]
    fn cause_chain_prints_each_message_once() {
        let err = anyhow::anyhow!("pool timed out")
            .context("Connection Error: pool timed out")
            .context("database error: Connection Error: pool timed out")
            .context("cannot open the database");
        assert_eq!(
            cause_chain(&err),
            "cannot open the database: database error: Connection Error: pool timed out"
        );
        let err = anyhow::anyhow!("refused").context("connecting");
        assert_eq!(cause_chain(&err), "connecting: refused");
    }
}
