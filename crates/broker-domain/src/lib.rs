//! provet-broker's domain: the types every other crate speaks, and the rules that make
//! external input into them. Nothing here does I/O.

pub mod hookup;
pub mod hosts;
pub mod tenant;

pub use hookup::{
    ClientType, DepartmentChange, FieldError, GrantType, HookupMessage, ParseError, Rejected,
    SigningAlgorithm,
};
pub use hosts::{HostAllowlist, UrlPolicy};
pub use tenant::{ApiKeyRole, ProvetId, TenantStatus};
