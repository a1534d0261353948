//! The provet-broker daemon: configuration, wiring, the command line. `main` is thin; this
//! library builds the `Application` that tests and the binary run alike.
//!
//! `config.rs` the typed settings (figment layering, `deny_unknown_fields`; `config/` one
//! file per group of sections); `startup.rs` the `Application` (HTTP servers and background
//! tasks) with `startup/` keys, the database, the hookup secret, the use cases built once
//! (`use_cases.rs`) and the listeners; `cli.rs` the subcommands, which use the same use
//! cases without the server (`cli/` one file per larger command); `export.rs` the export
//! file, passphrase and key derivation; `telemetry.rs` the one tracing set-up, with
//! `telemetry/text.rs` the text line formatter.

pub mod cli;
pub mod config;
pub mod export;
pub mod startup;
pub mod telemetry;
