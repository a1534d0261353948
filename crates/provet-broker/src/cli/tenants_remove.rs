//! `provet-broker tenants remove ID [--yes]`: the tenant removed the integration. Disables it
//! and wipes its secret, grants and tokens, after the operator typed the provet_id again (or
//! passed `--yes`, for scripts).

use std::io::BufRead;

use anyhow::bail;
use broker_api::UseCases;
use broker_api::views::TenantView;
use broker_domain::{AuditAction, AuditOutcome, ProvetId};
use broker_service::tenants::TenantAdminError;

use crate::cli::audit;

pub async fn run(use_cases: &UseCases, provet_id: ProvetId, yes: bool) -> anyhow::Result<()> {
    let id = provet_id.get();
    if !yes {
        // Show what is about to go, then ask.
        let tenant = use_cases
            .tenant_admin
            .tenant(id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let client = tenant
            .client
            .as_ref()
            .map_or("none", |c| c.client_id.as_str());
        eprintln!(
            "tenant {id} (client {client}, {} department(s)) will be disabled and its secret, grants and tokens wiped.",
            tenant.departments.len()
        );
        eprint!("type the provet_id again to confirm: ");
        let mut typed = String::new();
        std::io::stdin().lock().read_line(&mut typed)?;
        if typed.trim() != id.to_string() {
            bail!(
                "not confirmed ({:?} is not {id}); nothing was removed",
                typed.trim()
            );
        }
    }
    let removed = use_cases.tenant_admin.remove(id).await;
    let outcome = match &removed {
        Ok(_) => AuditOutcome::Ok,
        Err(TenantAdminError::TenantNotFound(_)) => AuditOutcome::Refused,
        Err(_) => AuditOutcome::Failed,
    };
    audit::record(
        &use_cases.audit,
        AuditAction::TenantRemove,
        Some(id),
        None,
        outcome,
    )
    .await;
    let tenant = removed.map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&TenantView::from(tenant))?
    );
    eprintln!("removed tenant {id}");
    Ok(())
}
