//! provet-broker's use cases, one struct each, built once at start-up by the binary. The HTTP
//! layer and the command line call these; these call the store and the provider. Nothing
//! here knows about HTTP.
//!
//! | use case | struct | where |
//! |---|---|---|
//! | Provet delivers a tenant's client | `HookupIntake` | `hookup/` |
//! | a service asks for a token | `TokenBroker` | `tokens/` (decisions in `tokens/policy.rs`) |
//! | a clinic user connects (authorization code) | `ConnectFlow` | `connect/` |
//! | OpenID Connect metadata and JWKS | `Discovery` | `discovery.rs` |
//! | operators look at and manage tenants | `TenantAdmin` | `tenants.rs` |
//! | API keys | `ApiKeys` | `api_keys.rs` |
//! | the audit log of admin actions | `AuditLog` | `audit.rs` |
//! | operators' console sessions | `Console` | `console.rs` |
//! | the event feed services follow | `EventFeed` | `events.rs` |
//! | webhooks: registration, fan-out, signed delivery | `WebhookAdmin`, `WebhookWorker` | `webhooks/` |
//! | readiness and metrics | `Operations` (metrics in `metrics.rs`) | `operations.rs` |
//!
//! `clock.rs` holds the one wall clock every use case reads time from; `foreground.rs` counts
//! the hookups in flight, for background work to give way to a burst.

pub mod api_keys;
pub mod audit;
pub mod clock;
pub mod connect;
pub mod console;
pub mod discovery;
pub mod events;
pub mod foreground;
pub mod hookup;
pub mod metrics;
pub mod operations;
pub mod tenants;
pub mod tokens;
pub mod webhooks;

pub use api_keys::ApiKeys;
pub use audit::AuditLog;
pub use broker_store::ServiceTenantQuery;
pub use broker_store::events::{EventCursor, EventRecord};
pub use broker_store::{
    ApiKeyRecord, ClientRecord, DeliveryRecord, DiscoveryRecord, HookupOutcome, Readiness,
    RerunFilter, StoreError, TenantFilter, TenantRecord,
};
pub use broker_store::{AuditEntry, AuditQuery};
pub use clock::{Clock, SystemClock};
pub use connect::ConnectFlow;
pub use console::Console;
pub use discovery::Discovery;
pub use events::EventFeed;
pub use hookup::HookupIntake;
pub use metrics::Metrics;
pub use operations::Operations;
pub use tenants::TenantAdmin;
pub use tokens::TokenBroker;
pub use webhooks::{WebhookAdmin, WebhookWorker};
