//! Security review fixes for provider-controlled numbers, proxies, ID tokens, configuration and storage.
