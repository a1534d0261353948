//! `healthcheck`: asks the daemon's `/readyz` and turns the answer into an exit status, for
//! container health checks in images without a shell (no curl, no wget).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::Settings;

/// The longest a probe may wait: an orchestrator's check must end on its own.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Ok when the URL answers 2xx within `timeout`; otherwise an error that says what happened.
pub async fn run(settings: &Settings, url: Option<&str>, timeout: Duration) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url.to_owned(),
        None => readyz_url(&settings.server.bind)?,
    };
    let timeout = timeout.clamp(Duration::from_millis(1), MAX_TIMEOUT);
    // The daemon is local: no proxy from the environment, no redirects.
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .context("building the HTTP client")?;
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("not ready: no answer from {url} within {timeout:?}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().filter(|c| !c.is_control()).take(300).collect();
        bail!("not ready: {url} answered {status}: {body}");
    }
    println!("ready: {url} answered {status}");
    Ok(())
}

/// `http://{bind}/readyz`, with an unspecified address (0.0.0.0, ::) asked on loopback.
fn readyz_url(bind: &str) -> anyhow::Result<String> {
    let Ok(addr) = bind.parse::<SocketAddr>() else {
        // A host name and port: asked as written.
        return Ok(format!("http://{bind}/readyz"));
    };
    if addr.port() == 0 {
        bail!(
            "server.bind ({bind}) has port 0, so the daemon's port is not known here: pass --url"
        );
    }
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(format!(
        "http://{}/readyz",
        SocketAddr::new(ip, addr.port())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_url_asks_loopback_for_unspecified_binds() {
        assert_eq!(
            readyz_url("127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/readyz"
        );
        assert_eq!(
            readyz_url("0.0.0.0:8080").unwrap(),
            "http://127.0.0.1:8080/readyz"
        );
        assert_eq!(readyz_url("[::]:9000").unwrap(), "http://[::1]:9000/readyz");
        assert_eq!(
            readyz_url("localhost:8080").unwrap(),
            "http://localhost:8080/readyz"
        );
    }

    #[test]
    fn readyz_url_refuses_port_zero() {
        let err = readyz_url("127.0.0.1:0").unwrap_err().to_string();
        assert!(err.contains("--url"), "{err}");
    }
}
