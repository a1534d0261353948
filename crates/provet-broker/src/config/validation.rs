//! What serde cannot check: values of the right type that still cannot work (a log filter
//! that does not parse, a database URL of another scheme, a zero timeout). Every mistake is
//! named by its key and, when an environment variable set it, by that variable's spelling;
//! all of them are reported at once, before anything is created. Values of keys that may
//! hold secrets are never repeated.

use std::net::IpAddr;
use std::time::Duration;

use figment::Figment;
use secrecy::ExposeSecret;

use super::{ENV_PREFIX, ENV_SPLIT, Settings};

/// `key`, followed by where its value came from when that was an environment variable or
/// a file: `log.level (environment variable BROKER_LOG__LEVEL)`.
pub(super) fn key_with_source(figment: &Figment, key: &str) -> String {
    // `hookup.allowed_hosts[2]`: the list came from one place.
    let base = key.split('[').next().unwrap_or(key);
    match source_of(figment, base) {
        Some(md) if md.name.contains("environment variable") => {
            format!("{key} (environment variable {})", env_spelling(base))
        }
        Some(md) => match &md.source {
            Some(source) => format!("{key} (in {source})"),
            None => key.to_owned(),
        },
        None => key.to_owned(),
    }
}

/// The provider that set `key`. A list's own value may carry no tag (figment tags what it
/// parsed, and an environment variable's list is parsed from a string): then its first
/// element's.
fn source_of<'a>(figment: &'a Figment, key: &str) -> Option<&'a figment::Metadata> {
    if let Some(md) = figment.find_metadata(key) {
        return Some(md);
    }
    let value = figment.find_value(key).ok()?;
    let first = value.into_array()?.into_iter().next()?;
    figment.get_metadata(first.tag())
}

/// The environment variable that sets `key`: `log.level` is `BROKER_LOG__LEVEL`.
pub(super) fn env_spelling(key: &str) -> String {
    let path: Vec<String> = key.split('.').map(str::to_ascii_uppercase).collect();
    format!("{ENV_PREFIX}{}", path.join(ENV_SPLIT))
}

struct Problems<'a> {
    figment: &'a Figment,
    found: Vec<String>,
}

impl Problems<'_> {
    fn add(&mut self, key: &str, problem: impl std::fmt::Display) {
        let key = key_with_source(self.figment, key);
        self.found.push(format!("{key}: {problem}"));
    }

    fn non_zero(&mut self, key: &str, value: Duration) {
        if value.is_zero() {
            self.add(key, "must be longer than 0s");
        }
    }

    fn at_least_one(&mut self, key: &str, value: u64) {
        if value == 0 {
            self.add(key, "must be at least 1");
        }
    }
}

/// Every problem of `settings`, each naming its key; empty when the settings can run.
pub(super) fn problems(settings: &Settings, figment: &Figment) -> Vec<String> {
    let mut p = Problems {
        figment,
        found: Vec::new(),
    };
    server(settings, &mut p);
    database(settings, &mut p);
    secrets(settings, &mut p);
    hookup(settings, &mut p);
    durations(settings, &mut p);
    counts(settings, &mut p);
    upstream(settings, &mut p);
    log(settings, &mut p);
    if let Err(e) = settings.oauth.to_service(&settings.server.public_url) {
        p.add(
            &format!("oauth.allowed_return_to[{}]", e.index),
            format!("`{}` {}", e.entry, e.problem),
        );
    }
    p.found
}

fn server(s: &Settings, p: &mut Problems<'_>) {
    if let Err(problem) = host_and_port(&s.server.bind) {
        p.add("server.bind", problem);
    }
    match url::Url::parse(&s.server.public_url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
        Ok(_) => p.add(
            "server.public_url",
            format!(
                "`{}` must be an http:// or https:// URL with a host",
                s.server.public_url
            ),
        ),
        Err(e) => p.add(
            "server.public_url",
            format!("`{}` is not an absolute URL ({e})", s.server.public_url),
        ),
    }
}

/// `host:port` or `[v6]:port`, as a listener takes it.
fn host_and_port(bind: &str) -> Result<(), String> {
    let Some((host, port)) = bind.rsplit_once(':') else {
        return Err(format!("`{bind}` must be host:port, e.g. 127.0.0.1:8080"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "`{bind}`: the port must be a number from 0 to 65535"
        ));
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || !is_host(host) {
        return Err(format!("`{bind}` must be host:port, e.g. 127.0.0.1:8080"));
    }
    Ok(())
}

/// A host name or an IP address literal (no scheme, port, path or user info).
fn is_host(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
        || (!host.contains(['[', ']'])
            && matches!(
                url::Host::parse(host),
                Ok(url::Host::Domain(_) | url::Host::Ipv4(_))
            ))
}

fn database(s: &Settings, p: &mut Problems<'_>) {
    // The URL may carry a password: only its scheme is ever repeated.
    match url::Url::parse(&s.database.url) {
        Ok(url) if matches!(url.scheme(), "sqlite" | "postgres" | "postgresql") => {}
        Ok(url) => p.add(
            "database.url",
            format!(
                "unsupported scheme `{}` (expected sqlite://path or postgres://user@host/db)",
                url.scheme()
            ),
        ),
        Err(_) => p.add(
            "database.url",
            "not a URL (expected sqlite://path or postgres://user@host/db; value not shown)",
        ),
    }
}

fn secrets(s: &Settings, p: &mut Problems<'_>) {
    let secrets = &s.secrets;
    let key_set = !secrets.master_key.expose_secret().trim().is_empty();
    if key_set && !secrets.master_key_file.is_empty() {
        p.add(
            "secrets.master_key_file",
            "set either secrets.master_key or secrets.master_key_file, not both",
        );
    }
    if key_set && broker_store::MasterKey::from_base64(&secrets.master_key).is_err() {
        p.add(
            "secrets.master_key",
            "must be base64 of 32 bytes, e.g. from `openssl rand -base64 32` (value not shown)",
        );
    }
    if !key_set && !secrets.master_key_file.is_empty() {
        let path = std::path::Path::new(&secrets.master_key_file);
        if !path.is_file() {
            p.add(
                "secrets.master_key_file",
                format!("{} is not a readable file", path.display()),
            );
        }
    }
    for (i, key) in secrets.previous_keys.iter().enumerate() {
        if broker_store::MasterKey::from_base64(key).is_err() {
            p.add(
                &format!("secrets.previous_keys[{i}]"),
                "must be base64 of 32 bytes (value not shown)",
            );
        }
    }
}

fn hookup(s: &Settings, p: &mut Problems<'_>) {
    for (i, entry) in s.hookup.allowed_hosts.iter().enumerate() {
        if !is_host_pattern(entry) {
            p.add(
                &format!("hookup.allowed_hosts[{i}]"),
                format!(
                    "`{entry}` is not a host pattern: a host name (`provetcloud.com`), \
                     `*.` and a domain (`*.provetcloud.com`), or an IP address, \
                     without scheme, port or path"
                ),
            );
        }
    }
}

/// `example.com`, `*.example.com`, `127.0.0.1`, `::1` or `[::1]`.
fn is_host_pattern(entry: &str) -> bool {
    let entry = entry.trim().trim_end_matches('.');
    if let Some(domain) = entry.strip_prefix("*.") {
        return matches!(url::Host::parse(domain), Ok(url::Host::Domain(_)))
            && !domain.contains('*');
    }
    let bare = entry
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(entry);
    !bare.contains('*') && !bare.is_empty() && is_host(bare)
}

/// Timeouts and intervals for which zero cannot work (a zero timeout fails every call, a
/// zero interval spins).
fn durations(s: &Settings, p: &mut Problems<'_>) {
    for (key, value) in [
        (
            "server.request_header_timeout",
            s.server.request_header_timeout,
        ),
        ("server.request_body_timeout", s.server.request_body_timeout),
        ("database.connect_timeout", s.database.connect_timeout),
        ("database.acquire_timeout", s.database.acquire_timeout),
        ("discovery.refresh_interval", s.discovery.refresh_interval),
        ("discovery.timeout", s.discovery.timeout),
        ("discovery.retry_base", s.discovery.retry_base),
        ("discovery.poll_interval", s.discovery.poll_interval),
        ("tokens.connect_timeout", s.tokens.connect_timeout),
        ("tokens.timeout", s.tokens.timeout),
        (
            "tokens.verify_sweep_interval",
            s.tokens.verify_sweep_interval,
        ),
        ("oauth.authorization_ttl", s.oauth.authorization_ttl),
        ("oauth.keepalive_interval", s.oauth.keepalive_interval),
        ("events.retention", s.events.retention),
        ("events.timeout", s.events.timeout),
    ] {
        p.non_zero(key, value);
    }
    if s.discovery.retry_max < s.discovery.retry_base {
        p.add(
            "discovery.retry_max",
            "must not be shorter than discovery.retry_base",
        );
    }
}

fn counts(s: &Settings, p: &mut Problems<'_>) {
    p.at_least_one(
        "database.max_connections",
        u64::from(s.database.max_connections),
    );
    for (key, value) in [
        ("hookup.writers", s.hookup.writers),
        ("hookup.max_batch", s.hookup.max_batch),
        ("tokens.verify_concurrency", s.tokens.verify_concurrency),
    ] {
        p.at_least_one(key, u64::try_from(value).unwrap_or(u64::MAX));
    }
}

fn upstream(s: &Settings, p: &mut Problems<'_>) {
    // The proxy URL may carry credentials: never repeated.
    let Some(proxy) = s.upstream.proxy() else {
        return;
    };
    match url::Url::parse(proxy.expose_secret()) {
        Ok(url)
            if matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h")
                && url.has_host() => {}
        Ok(_) => p.add(
            "upstream.proxy",
            "must be an http://, https:// or socks5:// URL with a host (value not shown)",
        ),
        Err(_) => p.add("upstream.proxy", "not a URL (value not shown)"),
    }
}

fn log(s: &Settings, p: &mut Problems<'_>) {
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&s.log.level) {
        p.add(
            "log.level",
            format!(
                "`{}` is not a log filter ({e}); e.g. `info` or `provet_broker=debug,info`",
                s.log.level
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_are_hosts_wildcards_or_addresses() {
        for ok in [
            "provetcloud.com",
            "*.provetcloud.com",
            "127.0.0.1",
            "::1",
            "[::1]",
            "localhost",
            "eu.provetcloud.com.",
        ] {
            assert!(is_host_pattern(ok), "{ok}");
        }
        for bad in [
            "https://provetcloud.com",
            "provetcloud.com/path",
            "provetcloud.com:443",
            "*",
            "*.",
            "a.*.com",
            "*.*.com",
            "",
            "user@host",
            "two words",
        ] {
            assert!(!is_host_pattern(bad), "{bad}");
        }
    }

    #[test]
    fn bind_addresses_are_host_and_port() {
        for ok in ["127.0.0.1:8080", "0.0.0.0:0", "[::]:8080", "localhost:9000"] {
            assert!(host_and_port(ok).is_ok(), "{ok}");
        }
        for bad in [
            "8080",
            "127.0.0.1",
            "127.0.0.1:99999",
            ":8080",
            "http://x:1",
        ] {
            assert!(host_and_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_spelling_is_the_prefix_and_double_underscores() {
        assert_eq!(env_spelling("log.level"), "BROKER_LOG__LEVEL");
        assert_eq!(
            env_spelling("secrets.master_key_file"),
            "BROKER_SECRETS__MASTER_KEY_FILE"
        );
    }
}
