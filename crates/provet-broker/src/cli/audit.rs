//! The command line's audit entries: every admin command (API keys, tenants added or removed,
//! discovery reruns, rekey) is recorded with actor kind `cli`, named for the OS user.

use broker_domain::{Actor, AuditAction, AuditOutcome, AuditRecord, ProvetId};
use broker_service::AuditLog;

/// Records one command's outcome: `ok`, or `refused` / `failed` as the command says.
pub async fn record(
    audit: &AuditLog,
    action: AuditAction,
    provet_id: Option<i64>,
    target: Option<String>,
    outcome: AuditOutcome,
) {
    let mut record = AuditRecord::new(Actor::cli(std::env::var("USER").ok()), action, outcome);
    if let Some(id) = provet_id.and_then(|p| ProvetId::new(p).ok()) {
        record = record.tenant(id);
    }
    if let Some(target) = target {
        record = record.target(target);
    }
    audit.record(record).await;
}

/// `ok` for a success, `failed` for an error.
pub fn outcome<T>(result: &anyhow::Result<T>) -> AuditOutcome {
    if result.is_ok() {
        AuditOutcome::Ok
    } else {
        AuditOutcome::Failed
    }
}
