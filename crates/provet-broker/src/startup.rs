//! Wiring: the daemon's start-up, from settings to running servers and background tasks.
//!
//! `keys.rs` the master keys (configured, from a file, or generated); `database.rs` opening
//! the store (read-only for commands that only read); `hookup_secret.rs` the hookup URL's
//! secrets; `use_cases.rs` every use case built once (the daemon and the CLI share them);
//! `listeners.rs` the surfaces and their HTTP servers; here `Application`, which runs them.

use actix_web::web;
use anyhow::Context;
use broker_api::guard::AuthFailures;
use broker_api::{AppState, UseCases};
use broker_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;

mod database;
mod hookup_secret;
mod keys;
mod listeners;
mod use_cases;

pub use database::{open_existing_store, open_store, redact_url, store_options};
pub use hookup_secret::{current_hookup_secret, hookup_url};
pub use keys::{GeneratedKey, keyring};
pub use use_cases::use_cases;

use hookup_secret::hookup_secrets;
use listeners::{Listener, Surface};

/// The running daemon: HTTP servers bound, workers ready.
pub struct Application {
    port: u16,
    internal_port: u16,
    /// The public surface's server (or the only one), then the internal one.
    servers: Vec<actix_web::dev::Server>,
    store: Store,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Application {
    /// Migrates, resolves keys and the hookup secret, and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            "provet-broker starting"
        );
        let public_url = url::Url::parse(&settings.server.public_url)
            .context("server.public_url must be an absolute URL")?;
        let store = open_store(&settings).await?;
        store.migrate().await.context("migrating the database")?;
        tracing::info!(
            backend = store.backend_name(),
            key_id = store.keyring().current_id(),
            "database ready"
        );

        let hookup_secrets = hookup_secrets(&settings, &store, &public_url).await?;

        let use_cases = use_cases(&settings, store.clone(), hookup_secrets)?;

        let state = web::Data::new(AppState::new(
            use_cases.clone(),
            AuthFailures::new(
                settings.server.auth_failure_limit,
                settings.server.auth_failure_window,
                use_cases.clock.clone(),
            ),
            settings.server.request_body_timeout,
        ));
        let (public, internal) = bind(&settings)?;
        let port = public.address.port();
        let internal_port = internal.as_ref().map_or(port, |l| l.address.port());
        let mut servers = vec![public.serve(&settings, state.clone())?];
        if let Some(internal) = internal {
            servers.push(internal.serve(&settings, state)?);
        }
        let (stop, tasks) = spawn_background(&settings, &use_cases);
        Ok(Self {
            port,
            internal_port,
            servers,
            store,
            stop,
            tasks,
        })
    }

    /// The port of `server.bind`: the public surface, or everything when
    /// `server.internal_bind` is unset.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port the internal routes are served on: `server.internal_bind`'s, else `port()`.
    pub fn internal_port(&self) -> u16 {
        self.internal_port
    }

    /// Serves until SIGTERM or SIGINT (each server stops on it, letting its in-flight
    /// requests finish), then lets background runs finish.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        // A server runs only while polled: all of them at once, each draining on its own.
        let served = futures_util::future::join_all(self.servers).await;
        tracing::info!("HTTP servers stopped; stopping background tasks");
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        served.into_iter().collect::<std::io::Result<()>>()?;
        tracing::info!("stopped; closing the database");
        self.store.close().await;
        Ok(())
    }
}

/// The listeners: one for everything, or the public and the internal surface apart when
/// `server.internal_bind` is set.
fn bind(settings: &Settings) -> anyhow::Result<(Listener, Option<Listener>)> {
    let internal_bind = settings.server.internal_bind.trim();
    Ok(if internal_bind.is_empty() {
        (Listener::bind(Surface::All, &settings.server.bind)?, None)
    } else {
        (
            Listener::bind(Surface::Public, &settings.server.bind)?,
            Some(Listener::bind(Surface::Internal, internal_bind)?),
        )
    })
}

/// Starts every background task, each stopped by the returned token and joined through the
/// returned tracker.
fn spawn_background(settings: &Settings, use_cases: &UseCases) -> (CancellationToken, TaskTracker) {
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let tokens = &use_cases.tokens;
    tasks.spawn(
        tokens
            .clone()
            .run_keepalive(settings.oauth.keepalive(), stop.child_token()),
    );
    tasks.spawn(tokens.clone().run_credential_checks(stop.child_token()));
    tasks.spawn(use_cases.hookups.clone().run_writer(stop.child_token()));
    tasks.spawn(use_cases.events.clone().run_pruner(stop.child_token()));
    let webhooks = &use_cases.webhook_worker;
    tasks.spawn(webhooks.clone().run_dispatcher(stop.child_token()));
    tasks.spawn(webhooks.clone().run_sender(stop.child_token()));
    if settings.discovery.enabled {
        tasks.spawn(use_cases.discovery.clone().run_worker(stop.child_token()));
    } else {
        tracing::info!("discovery worker disabled (discovery.enabled = false)");
    }
    (stop, tasks)
}
