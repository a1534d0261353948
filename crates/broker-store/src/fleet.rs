//! How many tenants, clients and grants are in each state: the gauges operators alert on.
//! One grouped query per table, so that a scrape stays cheap at tens of thousands of tenants.

use std::str::FromStr;

use broker_domain::{CredentialsState, DiscoveryState, GrantState, TenantStatus, UnknownState};
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Expr, ExprTrait, Func, Query, SelectStatement};

use crate::db::Db;
use crate::entity::{client, discovery, grant, tenant};
use crate::{Result, StoreError};

/// Counts by state; a state with no rows is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetCounts {
    pub tenants: Vec<(TenantStatus, i64)>,
    /// The current client of each active tenant.
    pub credentials: Vec<(CredentialsState, i64)>,
    /// Active tenants with a discovery URL (removed tenants have no discovery row).
    pub discovery: Vec<(DiscoveryState, i64)>,
    pub grants: Vec<(GrantState, i64)>,
}

/// Read-only counts over the whole database.
pub struct Fleet<'a> {
    pub(crate) db: &'a Db,
}

impl Fleet<'_> {
    pub async fn counts(&self) -> Result<FleetCounts> {
        let tenants = Query::select()
            .column(tenant::Column::Status)
            .expr(Func::count(Expr::col(tenant::Column::ProvetId)))
            .from(tenant::Entity)
            .group_by_col(tenant::Column::Status)
            .to_owned();
        let credentials = Query::select()
            .column((client::Entity, client::Column::CredentialsState))
            .expr(Func::count(Expr::col((client::Entity, client::Column::Id))))
            .from(client::Entity)
            .inner_join(
                tenant::Entity,
                Expr::col((tenant::Entity, tenant::Column::ProvetId))
                    .equals((client::Entity, client::Column::ProvetId)),
            )
            .and_where(Expr::col((client::Entity, client::Column::IsCurrent)).eq(true))
            .and_where(
                Expr::col((tenant::Entity, tenant::Column::Status))
                    .eq(TenantStatus::Active.as_str()),
            )
            .group_by_col((client::Entity, client::Column::CredentialsState))
            .to_owned();
        let discovery = Query::select()
            .column(discovery::Column::State)
            .expr(Func::count(Expr::col(discovery::Column::ProvetId)))
            .from(discovery::Entity)
            .group_by_col(discovery::Column::State)
            .to_owned();
        let grants = Query::select()
            .column(grant::Column::State)
            .expr(Func::count(Expr::col(grant::Column::ProvetId)))
            .from(grant::Entity)
            .group_by_col(grant::Column::State)
            .to_owned();
        Ok(FleetCounts {
            tenants: self.grouped(tenants).await?,
            credentials: self.grouped(credentials).await?,
            discovery: self.grouped(discovery).await?,
            grants: self.grouped(grants).await?,
        })
    }

    /// `(state, count)` rows of a `SELECT state, COUNT(..) .. GROUP BY state`.
    async fn grouped<S>(&self, query: SelectStatement) -> Result<Vec<(S, i64)>>
    where
        S: FromStr<Err = UnknownState>,
    {
        let rows = self.db.main.query_all(&query).await?;
        let mut counts = Vec::with_capacity(rows.len());
        for row in rows {
            let state: String = row.try_get_by_index(0)?;
            let state = state
                .parse()
                .map_err(|e: UnknownState| StoreError::Corrupt(e.to_string()))?;
            counts.push((state, row.try_get_by_index(1)?));
        }
        Ok(counts)
    }
}
