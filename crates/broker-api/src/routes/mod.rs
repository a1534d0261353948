pub mod admin;
pub mod hookup;
pub mod oauth;
pub mod ops;
pub mod service;
