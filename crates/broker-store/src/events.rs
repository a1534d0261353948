//! The events outbox: each event is written by `append` in the transaction of the change it
//! describes, numbered per tenant, and read back in an order in which nothing can appear
//! behind a reader's cursor.
//!
//! On PostgreSQL an id drawn from a sequence by one transaction may commit after a larger id
//! drawn by another: a follower that already read the larger one would never see it. So each
//! event also keeps its writing transaction's id (`pg_current_xact_id()`), the feed is ordered
//! by (xid, id), and a read returns only events whose xid is below the reading snapshot's
//! `xmin`: every transaction that could still commit has an xid at or above it, so every
//! event committed later sorts after everything already returned. SQLite has one writer
//! (the store's writer lock), so ids commit in order and xid is 0.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker_domain::EventType;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};
use serde_json::Value;
use tokio::sync::Notify;

use crate::db::Db;
use crate::entity::event;
use crate::{Result, StoreError};

/// The transaction's id as a number, on PostgreSQL.
const CURRENT_XID: &str = "pg_current_xact_id()::text::bigint";
/// The oldest transaction id still running when the statement's snapshot was taken.
const SNAPSHOT_XMIN: &str = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint";

/// An event to write.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub provet_id: i64,
    pub event_type: EventType,
    pub data: Value,
    pub occurred_at: DateTime<Utc>,
}

impl NewEvent {
    pub fn new(provet_id: i64, event_type: EventType, data: Value, now: DateTime<Utc>) -> Self {
        Self {
            provet_id,
            event_type,
            data,
            occurred_at: now,
        }
    }
}

/// Locks the tenant's row (PostgreSQL) before anything else in a transaction that may write
/// an event: `append` bumps the tenant's counter, and taking the tenant first keeps the lock
/// order of the hookup (tenant, then its other rows), so that no two transactions deadlock.
pub async fn lock_tenant(db: &impl ConnectionTrait, provet_id: i64) -> Result<()> {
    if db.get_database_backend() == DbBackend::Postgres {
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT provet_id FROM tenants WHERE provet_id = $1 FOR UPDATE",
            [provet_id.into()],
        ))
        .await?;
    }
    Ok(())
}

/// `lock_tenant` for several tenants, in provet_id order, in one statement.
pub(crate) async fn lock_tenants(
    db: &impl ConnectionTrait,
    provet_ids: impl IntoIterator<Item = i64>,
) -> Result<()> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let ids: Vec<String> = provet_ids.into_iter().map(|id| id.to_string()).collect();
    if ids.is_empty() {
        return Ok(());
    }
    // Integers only (formatted from i64), so the list is safe inline.
    db.execute_unprepared(&format!(
        "SELECT provet_id FROM tenants WHERE provet_id IN ({}) ORDER BY provet_id FOR UPDATE",
        ids.join(",")
    ))
    .await?;
    Ok(())
}

/// Bumps each tenant's event counter by one, in one statement; answers the new values.
pub(crate) async fn next_sequences(
    db: &impl ConnectionTrait,
    provet_ids: &[i64],
) -> Result<std::collections::HashMap<i64, i64>> {
    if provet_ids.is_empty() {
        return Ok(Default::default());
    }
    let sequence_col = Alias::new("event_sequence");
    let provet_id = Alias::new("provet_id");
    let bump = Query::update()
        .table(Alias::new("tenants"))
        .value(sequence_col.clone(), Expr::col(sequence_col.clone()).add(1))
        .and_where(Expr::col(provet_id.clone()).is_in(provet_ids.iter().copied()))
        .returning(Query::returning().columns([provet_id, sequence_col]))
        .to_owned();
    db.query_all(&bump)
        .await?
        .into_iter()
        .map(|row| Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?)))
        .collect()
}

/// Writes one event in the caller's transaction, with the tenant's next sequence number.
pub async fn append(db: &impl ConnectionTrait, event: &NewEvent) -> Result<()> {
    let sequence = next_sequence(db, event.provet_id).await?;
    insert_numbered(db, &[(event, sequence)]).await
}

/// Bumps the tenant's event counter; answers the new value.
async fn next_sequence(db: &impl ConnectionTrait, provet_id: i64) -> Result<i64> {
    let sequence_col = Alias::new("event_sequence");
    let bump = Query::update()
        .table(Alias::new("tenants"))
        .value(sequence_col.clone(), Expr::col(sequence_col.clone()).add(1))
        .and_where(Expr::col(Alias::new("provet_id")).eq(provet_id))
        .returning_col(sequence_col)
        .to_owned();
    Ok(db
        .query_one(&bump)
        .await?
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "an event for tenant {provet_id} without a tenant row"
            ))
        })?
        .try_get_by_index(0)?)
}

/// Rows per multi-row insert: well inside both backends' limits on bound parameters.
pub(crate) const ROWS_PER_INSERT: usize = 500;

/// Writes events whose per-tenant sequence numbers the caller already counted on the
/// tenants' rows (a new tenant's row is created with its counter set), in as few statements
/// as the rows need.
pub(crate) async fn insert_numbered(
    db: &impl ConnectionTrait,
    events: &[(&NewEvent, i64)],
) -> Result<()> {
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let mut insert = Query::insert()
            .into_table(event::Entity)
            .columns([
                event::Column::Xid,
                event::Column::ProvetId,
                event::Column::Sequence,
                event::Column::EventType,
                event::Column::OccurredAt,
                event::Column::Data,
            ])
            .to_owned();
        for (event, sequence) in chunk {
            let xid = match db.get_database_backend() {
                DbBackend::Postgres => Expr::cust(CURRENT_XID),
                _ => Expr::val(0i64),
            };
            insert.values_panic([
                xid,
                event.provet_id.into(),
                (*sequence).into(),
                event.event_type.as_str().into(),
                event.occurred_at.into(),
                event.data.to_string().into(),
            ]);
        }
        if !chunk.is_empty() {
            db.execute(&insert).await?;
        }
    }
    Ok(())
}

/// A position in the feed: after the event (xid, id). Opaque to callers: base64 of
/// `"{xid}.{id}"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor {
    pub xid: i64,
    pub id: i64,
}

impl EventCursor {
    /// Before every event.
    pub const START: Self = Self { xid: 0, id: 0 };

    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}.{}", self.xid, self.id))
    }

    /// `None` for anything `encode` did not make.
    pub fn decode(text: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let (xid, id) = text.split_once('.')?;
        let cursor = Self {
            xid: xid.parse().ok()?,
            id: id.parse().ok()?,
        };
        (cursor.xid >= 0 && cursor.id >= 0).then_some(cursor)
    }
}

/// Which events to read.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub after: EventCursor,
    pub limit: u64,
    /// Only these types; `None` for all.
    pub types: Option<Vec<EventType>>,
    /// Only these tenants' events; `None` for every tenant.
    pub tenants: Option<Vec<i64>>,
}

/// A stored event.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    pub id: i64,
    pub provet_id: i64,
    pub sequence: i64,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub data: Value,
    /// Where a reader resumes after this event.
    pub cursor: EventCursor,
}

impl EventRecord {
    /// The event's public id: `evt_` and the id as 16 hex digits (sorts as it was written).
    pub fn public_id(&self) -> String {
        format!("evt_{:016x}", self.id)
    }
}

/// Events after the cursor, oldest first, only those no later commit can precede.
pub async fn read(db: &impl ConnectionTrait, query: &EventQuery) -> Result<Vec<EventRecord>> {
    let after = query.after;
    let mut select = event::Entity::find()
        .filter(
            Condition::any().add(event::Column::Xid.gt(after.xid)).add(
                Condition::all()
                    .add(event::Column::Xid.eq(after.xid))
                    .add(event::Column::Id.gt(after.id)),
            ),
        )
        .order_by_asc(event::Column::Xid)
        .order_by_asc(event::Column::Id)
        .limit(query.limit);
    if db.get_database_backend() == DbBackend::Postgres {
        select = select.filter(Expr::col(event::Column::Xid).lt(Expr::cust(SNAPSHOT_XMIN)));
    }
    if let Some(types) = &query.types {
        select = select.filter(event::Column::EventType.is_in(types.iter().map(|t| t.as_str())));
    }
    if let Some(tenants) = &query.tenants {
        select = select.filter(event::Column::ProvetId.is_in(tenants.iter().copied()));
    }
    Ok(select
        .all(db)
        .await?
        .into_iter()
        .map(|e| EventRecord {
            cursor: EventCursor {
                xid: e.xid,
                id: e.id,
            },
            id: e.id,
            provet_id: e.provet_id,
            sequence: e.sequence,
            event_type: e.event_type,
            occurred_at: e.occurred_at,
            data: serde_json::from_str(&e.data).unwrap_or(Value::Null),
        })
        .collect())
}

/// What this process has committed: a wake-up for long polls, and counts for metrics.
#[derive(Debug, Default)]
pub struct EventTap {
    committed: Notify,
    written: [AtomicU64; EventType::ALL.len()],
}

impl EventTap {
    /// Resolves at the next commit of events by this process.
    pub fn committed(&self) -> &Notify {
        &self.committed
    }

    /// Events committed by this process since it started, by type.
    pub fn written(&self) -> impl Iterator<Item = (EventType, u64)> + '_ {
        EventType::ALL
            .into_iter()
            .zip(&self.written)
            .map(|(t, n)| (t, n.load(Ordering::Relaxed)))
    }

    pub(crate) fn published(&self, types: &[EventType]) {
        if types.is_empty() {
            return;
        }
        for t in types {
            if let Some(i) = EventType::ALL.iter().position(|x| x == t) {
                self.written[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.committed.notify_waiters();
    }
}

/// The events outbox as the feed and its pruner read it (`store.events()`).
#[derive(Clone)]
pub struct Events {
    pub(crate) db: Db,
}

impl Events {
    /// A page of the feed (see `read`).
    pub async fn page(&self, query: &EventQuery) -> Result<Vec<EventRecord>> {
        read(&self.db.main, query).await
    }

    /// Deletes events that occurred before `before`; returns how many.
    pub async fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        let _writer = self.db.sqlite_write_lock().await;
        Ok(event::Entity::delete_many()
            .filter(event::Column::OccurredAt.lt(before))
            .exec(&self.db.main)
            .await?
            .rows_affected)
    }

    /// What this process committed: a wake-up for long polls, counts for metrics.
    pub fn tap(&self) -> &EventTap {
        &self.db.event_tap
    }
}

/// A transaction that reads before it writes an event: on SQLite it takes the write lock at
/// once (`BEGIN IMMEDIATE`), since a read transaction that later writes fails with
/// SQLITE_BUSY, without waiting, when another connection committed in between.
pub(crate) async fn begin_immediate(
    db: &sea_orm::DatabaseConnection,
) -> Result<sea_orm::DatabaseTransaction> {
    use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
    Ok(db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_what_they_did_not_make() {
        for cursor in [
            EventCursor::START,
            EventCursor { xid: 0, id: 42 },
            EventCursor {
                xid: 9_007_199_254,
                id: 7,
            },
        ] {
            assert_eq!(EventCursor::decode(&cursor.encode()), Some(cursor));
        }
        for bad in ["", "x", "MTIz", "LTEuMg", "%%%", "MS4yLjM"] {
            assert_eq!(EventCursor::decode(bad), None, "{bad}");
        }
    }
}
