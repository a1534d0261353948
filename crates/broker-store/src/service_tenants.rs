//! The tenants a service key may serve (`GET /v1/tenants`): filtered by status, update time
//! and the key's tenant list, in pages by provet_id.

use broker_domain::TenantStatus;
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::entity::tenant;
use crate::records::TenantRecord;
use crate::{Result, Tenants};

/// Which tenants a service lists.
#[derive(Clone, Debug, Default)]
pub struct ServiceTenantQuery {
    /// `None` for both.
    pub status: Option<TenantStatus>,
    /// Only tenants changed at or after this time.
    pub updated_since: Option<DateTime<Utc>>,
    /// The key's tenants; `None` for every tenant.
    pub tenants: Option<Vec<i64>>,
    /// Tenants with a larger provet_id than this.
    pub after: Option<i64>,
    pub limit: u64,
}

impl Tenants {
    /// The tenants a service lists, in pages by provet_id.
    pub async fn service_tenants(&self, query: &ServiceTenantQuery) -> Result<Vec<TenantRecord>> {
        let mut select = tenant::Entity::find().order_by_asc(tenant::Column::ProvetId);
        if let Some(status) = &query.status {
            select = select.filter(tenant::Column::Status.eq(*status));
        }
        if let Some(since) = query.updated_since {
            select = select.filter(tenant::Column::UpdatedAt.gte(since));
        }
        if let Some(ids) = &query.tenants {
            select = select.filter(tenant::Column::ProvetId.is_in(ids.iter().copied()));
        }
        if let Some(after) = query.after {
            select = select.filter(tenant::Column::ProvetId.gt(after));
        }
        let rows = select.limit(query.limit).all(&self.db.main).await?;
        self.assemble(rows).await
    }
}
