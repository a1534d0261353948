//! Logging: one subscriber for the process, text or JSON, to stderr (stdout is the CLI's).
//!
//! Lines are formatted on the thread that logs and written by a background thread in
//! batches (`tracing-appender`), so that a request's access line costs no write of its own.
//! Colours only when stderr is a terminal. `actix_server` (a line per worker) and
//! `sea_orm_migration` (a line per migration checked) log at `warn` unless the filter names
//! them.

use std::io::{IsTerminal, Write};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Dependencies whose info lines say nothing an operator needs.
const QUIET_TARGETS: [&str; 2] = ["actix_server", "sea_orm_migration"];

/// Installs the subscriber. Keep the guard until the process ends: dropping it writes the
/// lines still queued.
pub fn init(settings: &LogSettings) -> Option<WorkerGuard> {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or_else(|| settings.level.clone());
    let filter = EnvFilter::try_new(filter_spec(&spec))
        .or_else(|_| EnvFilter::try_new(filter_spec("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Blocks (never drops lines) when the queue is full, as a direct write would.
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::new(Stderr));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
    // A second init (tests) keeps the first subscriber.
    let installed = match settings.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
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

/// stderr that swallows write errors: when stderr is gone (a closed pipe, a full disk),
/// reporting that on stderr would panic the writer thread; the line is dropped instead and
/// the daemon keeps serving.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
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
