//! provet-broker's domain: the types every other crate speaks, and the rules that make
//! external input into them. Nothing here does I/O.

pub mod events;
pub mod hookup;
pub mod hosts;
pub mod tenant;
pub mod webhooks;

pub use events::{DeliverySource, EventType, api_base_url};
pub use hookup::{
    ClientType, DepartmentChange, FieldError, GrantType, HookupMessage, ParseError,
    SigningAlgorithm,
};
pub use hosts::{HostAllowlist, UrlPolicy};
pub use tenant::{ApiKeyRole, ProvetId, TenantStatus};
pub use webhooks::{DeliveryState, EventSelection, WebhookState, WebhookUrl};
