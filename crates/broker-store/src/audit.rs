//! The audit log: appended after every admin action, read newest first.

use broker_domain::{Actor, AuditAction, AuditRecord, ProvetId};
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, NotSet, QueryFilter, QueryOrder, QuerySelect, Set,
};

use crate::Result;
use crate::db::Db;
use crate::entity::audit_entry;

/// One stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub record: AuditRecord,
}

/// Which entries to read: newest first, older than `before`, of one action.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub before: Option<i64>,
    pub limit: u64,
    pub action: Option<AuditAction>,
    pub provet_id: Option<i64>,
}

/// The audit log.
#[derive(Clone)]
pub struct Audit {
    db: Db,
}

impl Audit {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }

    /// Appends one entry.
    pub async fn append(&self, record: &AuditRecord, now: DateTime<Utc>) -> Result<i64> {
        let _writer = self.db.sqlite_write_lock().await;
        let row = audit_entry::ActiveModel {
            id: NotSet,
            at: Set(now),
            actor_kind: Set(record.actor.kind),
            actor_name: Set(record.actor.name.clone()),
            action: Set(record.action),
            provet_id: Set(record.provet_id.map(ProvetId::get)),
            target: Set(record.target.clone()),
            outcome: Set(record.outcome),
        }
        .insert(&self.db.main)
        .await?;
        Ok(row.id)
    }

    /// A page of entries, newest first.
    pub async fn list(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut select = audit_entry::Entity::find().order_by_desc(audit_entry::Column::Id);
        if let Some(before) = query.before {
            select = select.filter(audit_entry::Column::Id.lt(before));
        }
        if let Some(action) = query.action {
            select = select.filter(audit_entry::Column::Action.eq(action));
        }
        if let Some(provet_id) = query.provet_id {
            select = select.filter(audit_entry::Column::ProvetId.eq(provet_id));
        }
        Ok(select
            .limit(query.limit)
            .all(&self.db.main)
            .await?
            .into_iter()
            .map(entry)
            .collect())
    }
}

fn entry(m: audit_entry::Model) -> AuditEntry {
    AuditEntry {
        id: m.id,
        at: m.at,
        record: AuditRecord {
            actor: Actor {
                kind: m.actor_kind,
                name: m.actor_name,
            },
            action: m.action,
            // Stored ids were valid when written.
            provet_id: m.provet_id.and_then(|p| ProvetId::new(p).ok()),
            target: m.target,
            outcome: m.outcome,
        },
    }
}
