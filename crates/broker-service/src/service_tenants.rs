//! What a service lists once before following the feed: `GET /v1/tenants`.

pub use broker_store::ServiceTenantQuery;

use crate::{Broker, StoreError, TenantRecord};

impl Broker {
    /// A page of the tenants a key may serve, by provet_id.
    pub async fn service_tenants(
        &self,
        query: &ServiceTenantQuery,
    ) -> Result<Vec<TenantRecord>, StoreError> {
        self.store.service_tenants(query).await
    }
}
