//! provet-broker's domain: the types every other crate speaks, and the rules that make
//! external input into them. Nothing here does I/O.
//!
//! - `states.rs`: every stored or shown state as an enum (tenant status, client and grant
//!   type, signing algorithm, API-key role, credentials, discovery and grant states, hookup
//!   and delivery outcomes, delivery source), each with its one spelling.
//! - `hookup.rs`: the hookup message; `hookup/parser.rs` its one parser (parse = validate).
//! - `hookup_decision.rs`: what a valid hookup does to a tenant's stored state, decided
//!   without I/O (registered / updated / unchanged, what changed, what to revoke).
//! - `events.rs`: the event types the outbox carries, and `api_base_url`.
//! - `webhooks.rs`: a webhook's URL (parsed, link-local refused) and the events it selects.
//! - `audit.rs`: one audit-log entry (who did which admin action to what, and how it ended).
//! - `tenant.rs`: `ProvetId`.
//! - `hosts.rs`: which upstream hosts and URLs are acceptable.

pub mod audit;
pub mod events;
pub mod hookup;
pub mod hookup_decision;
pub mod hosts;
pub mod states;
pub mod tenant;
pub mod webhooks;

pub use audit::{Actor, AuditRecord};
pub use events::{EventType, api_base_url};
pub use hookup::{DepartmentChange, FieldError, HookupMessage, ParseError, Rejected};
pub use hookup_decision::{HookupDecision, StoredClient, StoredTenant, decide_hookup};
pub use hosts::{HostAllowlist, UrlPolicy};
pub use states::{
    ActorKind, ApiKeyRole, AuditAction, AuditOutcome, ClientType, CredentialsState,
    DeliveryOutcome, DeliverySource, DeliveryState, DiscoveryState, GrantState, GrantType,
    HookupOutcome, SigningAlgorithm, TenantStatus, UnknownState, WebhookState,
};
pub use tenant::ProvetId;
pub use webhooks::{EventSelection, WebhookUrl};
