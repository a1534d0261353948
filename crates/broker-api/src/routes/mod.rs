pub mod admin;
pub mod feed;
pub mod hookup;
pub mod oauth;
pub mod ops;
pub mod registration;
pub mod service;
pub mod webhooks;
