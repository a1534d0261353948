//! Black-box tests: the built `provet-broker` binary, started on port 0 against a fresh
//! SQLite file or PostgreSQL database, driven over HTTP and its command line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // black-box tests measure real time against the real daemon

mod helpers;

mod admin;
mod audit;
mod cli_ops;
mod config_errors;
mod connect;
mod console;
mod discovery;
mod discovery_faults;
mod events;
mod export_import;
mod hardening_edge;
mod hardening_store;
mod hardening_tokens;
mod hookup;
mod id_tokens;
mod lifecycle;
mod metrics_ops;
mod openapi;
mod pg_restart;
mod provider;
mod quickstart;
mod registration;
mod reliability;
mod request_ids;
mod scale;
mod secret_scan;
mod secrets;
mod state_events;
mod surfaces;
mod token_faults;
mod tokens;
mod webhooks;
