//! The provet-broker daemon: configuration, wiring, the command line. `main` is thin; this
//! library builds the `Application` that tests and the binary run alike.
//!
//! `config.rs` the typed settings (figment layering, `deny_unknown_fields`); `startup.rs`
//! keys, the database, the use cases built once (`use_cases`), the HTTP server and the
//! background tasks (`Application`); `cli.rs` the subcommands, which use the same use cases
//! without the server; `telemetry.rs` the one tracing set-up.

pub mod cli;
mod cli_audit;
pub mod config;
pub mod startup;
pub mod telemetry;
mod tenants_add;
mod tenants_remove;
