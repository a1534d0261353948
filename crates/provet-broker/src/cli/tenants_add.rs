//! `provet-broker tenants add [--file F]`: a hookup message from a file or stdin, through the
//! hookup's parser, rules and storage; the delivery is recorded with `"source": "cli"`.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use broker_domain::{AuditAction, AuditOutcome, DeliverySource, ParseError};
use broker_service::hookup::HookupError;
use broker_service::{AuditLog, HookupIntake};

/// The same limit as the hookup URL's.
const MAX_MESSAGE: u64 = 64 * 1024;

pub async fn run(
    hookups: &HookupIntake,
    audit: &AuditLog,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    let body = read_message(file)?;
    let registered = hookups.register(&body, DeliverySource::Cli).await;
    let (provet_id, outcome) = match &registered {
        Ok(receipt) => (Some(receipt.provet_id), AuditOutcome::Ok),
        Err(HookupError::Invalid(_)) => (None, AuditOutcome::Refused),
        Err(_) => (None, AuditOutcome::Failed),
    };
    crate::cli::audit::record(audit, AuditAction::TenantRegister, provet_id, None, outcome).await;
    match registered {
        Ok(receipt) => {
            println!(
                "{}",
                serde_json::json!({
                    "provet_id": receipt.provet_id,
                    "client_id": receipt.client_id,
                    "status": receipt.outcome.as_str(),
                })
            );
            Ok(())
        }
        Err(HookupError::Invalid(ParseError::InvalidJson(message))) => {
            bail!("the message is not valid JSON: {message}; nothing was stored")
        }
        Err(HookupError::Invalid(ParseError::Invalid(errors))) => {
            for e in &errors {
                eprintln!("{}: {}", e.field, e.message);
            }
            bail!(
                "the message does not follow the hookup schema: {} problem(s), each named above; nothing was stored",
                errors.len()
            )
        }
        Err(HookupError::Store(e)) => Err(e).context("the message could not be stored"),
    }
}

fn read_message(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let read = match file {
        Some(path) => std::fs::File::open(path)
            .with_context(|| format!("cannot open {}", path.display()))?
            .take(MAX_MESSAGE + 1)
            .read_to_end(&mut body),
        None => std::io::stdin()
            .lock()
            .take(MAX_MESSAGE + 1)
            .read_to_end(&mut body),
    };
    read.context("cannot read the message")?;
    if body.len() as u64 > MAX_MESSAGE {
        bail!("the message is larger than {MAX_MESSAGE} bytes");
    }
    Ok(body)
}
