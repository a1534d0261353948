//! sea-orm entities, one per table; the schema itself lives in the `migrations` crate.

pub mod api_key;
pub mod audit_entry;
pub mod authorization;
pub mod client;
pub mod console_session;
pub mod department;
pub mod discovery;
pub mod event;
pub mod grant;
pub mod hookup_delivery;
pub mod setting;
pub mod tenant;
pub mod token;
pub mod webhook;
pub mod webhook_delivery;
