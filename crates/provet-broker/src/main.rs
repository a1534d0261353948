//! `provet-broker`: see `provet-broker --help`.

use clap::Parser;
use provet_broker::cli::{Cli, Command};
use provet_broker::config::Settings;
use provet_broker::telemetry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Completions need no configuration (they run at install time, anywhere).
    if let Some(Command::Completions { shell }) = &cli.command {
        provet_broker::cli::print_completions(*shell);
        return std::process::ExitCode::SUCCESS;
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("provet-broker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let log_writer = telemetry::init(&settings.log);
    let code = match cli.run(settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain, once, as the last line of the log.
            tracing::error!(error = telemetry::cause_chain(&e), "provet-broker failed");
            std::process::ExitCode::FAILURE
        }
    };
    drop(log_writer);
    code
}
