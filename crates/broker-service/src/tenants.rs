//! Tenant administration: what operators (and, narrower, internal services) may see of a
//! tenant, its hookup deliveries, removal, credential checks and discovery reruns.

use std::sync::Arc;

use broker_store::{
    DeliveryRecord, DiscoveryRecord, RerunFilter, Store, TenantFilter, TenantRecord,
};

use crate::discovery::Discovery;
use crate::tokens::{TokenBroker, TokenBrokerError};
use crate::{Clock, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TenantAdminError {
    #[error("tenant {0} is not registered")]
    TenantNotFound(i64),
    #[error(transparent)]
    Token(#[from] TokenBrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an internal service may know about a tenant: the record (the API shows no secret
/// of it) and whether the broker can get a token for it.
pub struct ServiceTenant {
    pub tenant: TenantRecord,
    pub usable_grant: bool,
}

/// Whether the broker holds something it can get a token with: for client_credentials a
/// stored secret not known to be rejected; for authorization_code an active grant.
pub fn usable_grant(tenant: &TenantRecord) -> bool {
    tenant.status == broker_domain::TenantStatus::Active
        && tenant.client.as_ref().is_some_and(|c| {
            c.credentials_state != broker_domain::CredentialsState::Rejected
                && if c.grant_type == broker_domain::GrantType::ClientCredentials {
                    c.has_secret
                } else {
                    tenant
                        .grants
                        .iter()
                        .any(|g| g.state == broker_domain::GrantState::Active)
                }
        })
}

/// Which tenants' discovery to run again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rerun {
    Failed,
    /// Metadata older than `discovery.refresh_interval`.
    Stale,
    All,
}

/// The operators' use cases over tenants.
pub struct TenantAdmin {
    store: Store,
    /// Removal and checks touch the token cache; a check is a token request.
    tokens: Arc<TokenBroker>,
    discovery: Arc<Discovery>,
    clock: Arc<dyn Clock>,
}

impl TenantAdmin {
    /// A page of the tenants a key may serve, by provet_id (`GET /v1/tenants`: what a
    /// service lists once before following the feed).
    pub async fn service_tenants(
        &self,
        query: &broker_store::ServiceTenantQuery,
    ) -> Result<Vec<ServiceTenant>, StoreError> {
        let tenants = self.store.tenants().service_tenants(query).await?;
        Ok(tenants
            .into_iter()
            .map(|tenant| ServiceTenant {
                usable_grant: usable_grant(&tenant),
                tenant,
            })
            .collect())
    }

    pub fn new(
        store: Store,
        tokens: Arc<TokenBroker>,
        discovery: Arc<Discovery>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            tokens,
            discovery,
            clock,
        }
    }

    /// The tenant, whatever its status.
    pub async fn tenant(&self, provet_id: i64) -> Result<TenantRecord, TenantAdminError> {
        self.store
            .tenants()
            .tenant(provet_id)
            .await?
            .ok_or(TenantAdminError::TenantNotFound(provet_id))
    }

    /// The tenant as internal services see it: a removed tenant is invisible to them.
    pub async fn service_tenant(&self, provet_id: i64) -> Result<ServiceTenant, TenantAdminError> {
        let tenant = self.tenant(provet_id).await?;
        if tenant.status != broker_domain::TenantStatus::Active {
            return Err(TenantAdminError::TenantNotFound(provet_id));
        }
        Ok(ServiceTenant {
            usable_grant: usable_grant(&tenant),
            tenant,
        })
    }

    pub async fn tenants(&self, filter: &TenantFilter) -> Result<Vec<TenantRecord>, StoreError> {
        self.store.tenants().tenants(filter).await
    }

    /// The tenant's hookup deliveries, newest first, older than `before`. An unknown tenant
    /// is told apart from one without deliveries on the first page.
    pub async fn deliveries(
        &self,
        provet_id: i64,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<DeliveryRecord>, TenantAdminError> {
        let events = self
            .store
            .tenants()
            .deliveries(provet_id, before, limit)
            .await?;
        if events.is_empty()
            && before.is_none()
            && self.store.tenants().tenant(provet_id).await?.is_none()
        {
            return Err(TenantAdminError::TenantNotFound(provet_id));
        }
        Ok(events)
    }

    /// The tenant removed the integration: disable it and wipe its secrets; answers the
    /// tenant as it is now.
    pub async fn remove(&self, provet_id: i64) -> Result<TenantRecord, TenantAdminError> {
        let removed = self
            .store
            .tenants()
            .remove_tenant(provet_id, self.clock.now())
            .await?;
        self.tokens.forget(provet_id);
        if !removed {
            return Err(TenantAdminError::TenantNotFound(provet_id));
        }
        tracing::info!(provet_id, "tenant removed; its secrets were wiped");
        self.tenant(provet_id).await
    }

    /// Checks the tenant's credentials now (ignoring any cool-down); answers the tenant with
    /// the outcome. A provider that is down leaves the state as it was.
    pub async fn verify(&self, provet_id: i64) -> Result<TenantRecord, TenantAdminError> {
        self.tokens.verify_now(provet_id).await?;
        self.tenant(provet_id).await
    }

    /// Runs the tenant's discovery now; `None` when it has no discovery URL.
    pub async fn rediscover(
        &self,
        provet_id: i64,
    ) -> Result<Option<DiscoveryRecord>, TenantAdminError> {
        match self.tenant(provet_id).await?.discovery {
            Some(_) => Ok(self.discovery.discover_now(provet_id).await?),
            None => Ok(None),
        }
    }

    /// Makes many tenants' discovery due now; answers how many.
    pub async fn schedule_discovery(&self, which: Rerun) -> Result<u64, StoreError> {
        let filter = match which {
            Rerun::Failed => RerunFilter::Failed,
            Rerun::Stale => self.discovery.stale_filter(),
            Rerun::All => RerunFilter::All,
        };
        self.discovery.schedule_discovery(filter).await
    }
}
