//! What the operators' console shows at a glance: the fleet by status and grant type, what
//! needs attention (rejected credentials, grants to reauthorize, failed discovery, failing
//! webhook deliveries), a tenant's recent events and its discovery document.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
};

use crate::Result;
use crate::db::Db;
use crate::entity::{discovery, event, hookup_delivery};

/// How many items of each attention list the overview shows.
const ATTENTION_ITEMS: u64 = 20;

/// Tenants with one status and grant type (`None`: no current client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetCount {
    pub status: String,
    pub grant_type: Option<String>,
    pub tenants: i64,
}

/// One tenant (and for grants its subject) that needs an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttentionItem {
    pub provet_id: i64,
    pub subject: Option<String>,
    pub detail: Option<String>,
}

/// A webhook with deliveries that failed or are being retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailingWebhook {
    pub webhook_id: i64,
    pub url: String,
    pub failed: i64,
    pub retrying: i64,
}

/// A list the overview shows: the first items and how many there are in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attention {
    pub total: i64,
    pub items: Vec<AttentionItem>,
}

/// The console's overview.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overview {
    pub fleet: Vec<FleetCount>,
    pub credentials_rejected: Attention,
    pub grants_reauthorization: Attention,
    pub discovery_failed: Attention,
    pub failing_webhooks: Vec<FailingWebhook>,
    /// The last hookup delivery (any source): when, and for which tenant.
    pub last_hookup: Option<(DateTime<Utc>, Option<i64>)>,
}

/// One event of a tenant, as the console lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentEvent {
    pub id: i64,
    pub sequence: i64,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub data: String,
}

/// Read-only queries for the console.
#[derive(Clone)]
pub struct ConsoleQueries {
    db: Db,
}

impl ConsoleQueries {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }

    async fn rows(&self, sql: &str) -> Result<Vec<sea_orm::QueryResult>> {
        let backend = self.db.main.get_database_backend();
        Ok(self
            .db
            .main
            .query_all_raw(Statement::from_string(backend, sql.to_owned()))
            .await?)
    }

    async fn count(&self, sql: &str) -> Result<i64> {
        let rows = self.rows(sql).await?;
        Ok(rows
            .first()
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0))
    }

    /// `from_where` is the query after `SELECT ...`; its items are `provet_id`, `subject`
    /// and `detail` columns.
    async fn attention(&self, columns: &str, from_where: &str, order: &str) -> Result<Attention> {
        let total = self
            .count(&format!("SELECT COUNT(*) AS n {from_where}"))
            .await?;
        let items = self
            .rows(&format!(
                "SELECT {columns} {from_where} ORDER BY {order} LIMIT {ATTENTION_ITEMS}"
            ))
            .await?
            .into_iter()
            .map(|r| {
                Ok(AttentionItem {
                    provet_id: r.try_get("", "provet_id")?,
                    subject: r.try_get("", "subject")?,
                    detail: r.try_get("", "detail")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Attention { total, items })
    }

    pub async fn overview(&self) -> Result<Overview> {
        let fleet = self
            .rows(
                "SELECT t.status AS status, c.grant_type AS grant_type, COUNT(*) AS n \
                 FROM tenants t LEFT JOIN clients c ON c.provet_id = t.provet_id AND c.is_current \
                 GROUP BY t.status, c.grant_type ORDER BY t.status, c.grant_type",
            )
            .await?
            .into_iter()
            .map(|r| {
                Ok(FleetCount {
                    status: r.try_get("", "status")?,
                    grant_type: r.try_get("", "grant_type")?,
                    tenants: r.try_get("", "n")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let credentials_rejected = self
            .attention(
                "t.provet_id AS provet_id, NULL AS subject, c.credentials_last_error AS detail",
                "FROM tenants t JOIN clients c ON c.provet_id = t.provet_id AND c.is_current \
                 WHERE t.status = 'active' AND c.credentials_state = 'rejected'",
                "t.provet_id",
            )
            .await?;
        let grants_reauthorization = self
            .attention(
                "g.provet_id AS provet_id, g.subject AS subject, g.last_error AS detail",
                "FROM grants g JOIN tenants t ON t.provet_id = g.provet_id \
                 WHERE t.status = 'active' AND g.state = 'reauthorization_required'",
                "g.provet_id, g.subject",
            )
            .await?;
        let discovery_failed = self
            .attention(
                "d.provet_id AS provet_id, NULL AS subject, d.last_error AS detail",
                "FROM discovery d JOIN tenants t ON t.provet_id = d.provet_id \
                 WHERE t.status = 'active' AND d.state = 'failed'",
                "d.provet_id",
            )
            .await?;
        let failing_webhooks = self
            .rows(
                "SELECT w.id AS id, w.url AS url, \
                 SUM(CASE WHEN d.state = 'failed' THEN 1 ELSE 0 END) AS failed, \
                 SUM(CASE WHEN d.state = 'pending' THEN 1 ELSE 0 END) AS retrying \
                 FROM webhooks w JOIN webhook_deliveries d ON d.webhook_id = w.id \
                 WHERE d.state = 'failed' OR (d.state = 'pending' AND d.attempts > 0) \
                 GROUP BY w.id, w.url ORDER BY w.id",
            )
            .await?
            .into_iter()
            .map(|r| {
                Ok(FailingWebhook {
                    webhook_id: r.try_get("", "id")?,
                    url: r.try_get("", "url")?,
                    failed: r.try_get("", "failed")?,
                    retrying: r.try_get("", "retrying")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let last_hookup = hookup_delivery::Entity::find()
            .order_by_desc(hookup_delivery::Column::Id)
            .one(&self.db.main)
            .await?
            .map(|d| (d.received_at, d.provet_id));
        Ok(Overview {
            fleet,
            credentials_rejected,
            grants_reauthorization,
            discovery_failed,
            failing_webhooks,
            last_hookup,
        })
    }

    /// The tenant's newest events, newest first.
    pub async fn recent_events(&self, provet_id: i64, limit: u64) -> Result<Vec<RecentEvent>> {
        Ok(event::Entity::find()
            .filter(event::Column::ProvetId.eq(provet_id))
            .order_by_desc(event::Column::Id)
            .limit(limit)
            .all(&self.db.main)
            .await?
            .into_iter()
            .map(|e| RecentEvent {
                id: e.id,
                sequence: e.sequence,
                event_type: e.event_type,
                occurred_at: e.occurred_at,
                data: e.data,
            })
            .collect())
    }

    /// The tenant's stored discovery document (JSON text), if discovery succeeded once.
    pub async fn discovery_document(&self, provet_id: i64) -> Result<Option<String>> {
        Ok(discovery::Entity::find_by_id(provet_id)
            .one(&self.db.main)
            .await?
            .and_then(|d| d.document))
    }
}
