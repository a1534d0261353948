//! Many tenants at once: concurrent token requests and hookup bursts with the default configuration.
