//! `provet-broker api-key create|list|revoke`: the key is printed once, on the last line of
//! stdout; creating and revoking are audited.

use anyhow::bail;
use broker_api::UseCases;
use broker_api::views::ApiKeyView;
use broker_domain::{ApiKeyRole, AuditAction, AuditOutcome, ProvetId};
use secrecy::ExposeSecret;

use super::{ApiKeyCommand, audit, offline_use_cases, read_only_use_cases};
use crate::config::Settings;

pub(super) async fn run(settings: &Settings, cmd: ApiKeyCommand) -> anyhow::Result<()> {
    match cmd {
        ApiKeyCommand::Create {
            name,
            role,
            tenants,
        } => create(&offline_use_cases(settings).await?, &name, role, tenants).await,
        ApiKeyCommand::List => {
            let use_cases = read_only_use_cases(settings).await?;
            for key in use_cases.api_keys.list().await? {
                println!("{}", serde_json::to_string(&ApiKeyView::from(key))?);
            }
            Ok(())
        }
        ApiKeyCommand::Revoke { id } => revoke(&offline_use_cases(settings).await?, id).await,
    }
}

async fn create(
    use_cases: &UseCases,
    name: &str,
    role: ApiKeyRole,
    tenants: Vec<ProvetId>,
) -> anyhow::Result<()> {
    if role == ApiKeyRole::Admin && !tenants.is_empty() {
        bail!(
            "--tenant cannot be used with --role admin: admin keys are never tenant-scoped (create a --role token key for those tenants)"
        );
    }
    let tenants = (!tenants.is_empty()).then(|| tenants.into_iter().map(ProvetId::get).collect());
    let created = use_cases
        .api_keys
        .create(name, role, tenants)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"));
    let target = match &created {
        Ok(c) => format!("api key {} ({})", c.record.id, c.record.name),
        Err(_) => format!("name {name}"),
    };
    let outcome = audit::outcome(&created);
    audit::record(
        &use_cases.audit,
        AuditAction::ApiKeyCreate,
        None,
        Some(target),
        outcome,
    )
    .await;
    let created = created?;
    eprintln!(
        "created API key {} ({}, role {}); it is shown once, below:",
        created.record.id, created.record.name, created.record.role
    );
    println!("{}", created.key.expose_secret());
    Ok(())
}

async fn revoke(use_cases: &UseCases, id: i64) -> anyhow::Result<()> {
    let revoked = use_cases.api_keys.revoke(id).await;
    let outcome = match &revoked {
        Ok(true) => AuditOutcome::Ok,
        Ok(false) => AuditOutcome::Refused,
        Err(_) => AuditOutcome::Failed,
    };
    audit::record(
        &use_cases.audit,
        AuditAction::ApiKeyRevoke,
        None,
        Some(format!("api key {id}")),
        outcome,
    )
    .await;
    if !revoked? {
        bail!("no live API key with id {id}");
    }
    eprintln!("revoked API key {id}");
    Ok(())
}
