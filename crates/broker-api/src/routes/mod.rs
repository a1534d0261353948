pub mod admin;
pub mod hookup;
pub mod ops;
pub mod service;
