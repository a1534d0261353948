//! `provet-broker discovery rerun`: one tenant now (its discovery state printed), or every
//! failed / stale / all tenants scheduled and run here beside any running daemons.

use anyhow::{Context, bail};
use broker_api::UseCases;
use broker_api::views::DiscoveryView;
use broker_domain::{AuditAction, DiscoveryState, ProvetId};
use broker_service::tenants::Rerun;

use super::{audit, offline_use_cases};
use crate::config::Settings;

pub(super) async fn rerun(
    settings: &Settings,
    provet_id: Option<ProvetId>,
    failed: bool,
    all: bool,
) -> anyhow::Result<()> {
    let use_cases = offline_use_cases(settings).await?;
    if let Some(id) = provet_id {
        return rerun_one(&use_cases, id).await;
    }
    let which = if all {
        Rerun::All
    } else if failed {
        Rerun::Failed
    } else {
        Rerun::Stale
    };
    rerun_many(&use_cases, which).await
}

/// Runs one tenant's discovery and prints its state; fails when the run failed.
async fn rerun_one(use_cases: &UseCases, id: ProvetId) -> anyhow::Result<()> {
    let record = use_cases
        .discovery
        .discover_now(id.get())
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r.with_context(|| format!("tenant {id} has no discovery URL")));
    let outcome = audit::outcome(&record);
    audit::record(
        &use_cases.audit,
        AuditAction::TenantDiscovery,
        Some(id.get()),
        None,
        outcome,
    )
    .await;
    let record = record?;
    let failed = record.state == DiscoveryState::Failed;
    println!(
        "{}",
        serde_json::to_string_pretty(&DiscoveryView::from_record(Some(record)))?
    );
    if failed {
        bail!("discovery for tenant {id} failed");
    }
    Ok(())
}

/// Makes the chosen tenants due, runs what is due here (progress on stderr), and prints the
/// tenants' states after.
async fn rerun_many(use_cases: &UseCases, which: Rerun) -> anyhow::Result<()> {
    let scheduled = use_cases
        .tenant_admin
        .schedule_discovery(which)
        .await
        .map_err(anyhow::Error::from);
    let outcome = audit::outcome(&scheduled);
    let filter = match which {
        Rerun::All => "all",
        Rerun::Failed => "failed",
        Rerun::Stale => "stale",
    };
    audit::record(
        &use_cases.audit,
        AuditAction::DiscoveryRerun,
        None,
        Some(format!("filter {filter}")),
        outcome,
    )
    .await;
    let scheduled = scheduled?;
    eprintln!("discovery: {scheduled} tenant(s) scheduled");
    let done = use_cases
        .discovery
        .discover_due(|done| eprintln!("discovery: {done}/{scheduled} run here"))
        .await?;
    let counts = use_cases.discovery.state_counts().await?;
    let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{s}={n}")).collect();
    println!(
        "discovery: ran {done} here; tenants now {}",
        summary.join(" ")
    );
    Ok(())
}
