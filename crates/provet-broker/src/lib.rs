//! The provet-broker daemon: configuration, wiring, the command line. `main` is thin; this
//! library builds the `Application` that tests and the binary run alike.

pub mod cli;
pub mod config;
pub mod startup;
pub mod telemetry;
mod tenants_add;
