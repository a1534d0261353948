//! Wiring: keys, database, the hookup secret, and the HTTP servers (one per surface).

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::{Context, bail};
use broker_api::guard::AuthFailures;
use broker_api::{AppState, UseCases};
use broker_domain::{HostAllowlist, UrlPolicy};
use broker_oauth::{Upstream, UpstreamConfig};
use broker_service::hookup::{HookupIntakeParts, HookupSecrets, HookupWriter};
use broker_service::{
    ApiKeys, AuditLog, Clock, ConnectFlow, Console, Discovery, HookupIntake, Metrics, Operations,
    SystemClock, TenantAdmin, TokenBroker, WebhookAdmin, WebhookWorker,
};
use broker_store::{Keyring, MasterKey, Store, StoreError, StoreOptions};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;

/// The keys that seal secrets at rest: configured, read from a file, or generated on first
/// run. A generated key is only a candidate: `open_store` writes it once it knows that the
/// database holds nothing sealed under another key.
pub fn keyring(settings: &Settings) -> anyhow::Result<(Keyring, Option<GeneratedKey>)> {
    let s = &settings.secrets;
    let (current, generated) = if !s.master_key.expose_secret().trim().is_empty() {
        (
            MasterKey::from_base64(&s.master_key).context("secrets.master_key")?,
            None,
        )
    } else if !s.master_key_file.is_empty() {
        let text = fs::read_to_string(&s.master_key_file).with_context(|| {
            format!("cannot read secrets.master_key_file {}", s.master_key_file)
        })?;
        (
            MasterKey::from_base64(&SecretString::from(text)).context("secrets.master_key_file")?,
            None,
        )
    } else {
        generated_key(&s.generated_key_file)?
    };
    let previous = s
        .previous_keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            MasterKey::from_base64(k).with_context(|| format!("secrets.previous_keys[{i}]"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((Keyring::new(current, previous), generated))
}

/// A master key generated in memory, not yet written to its file.
pub struct GeneratedKey {
    path: std::path::PathBuf,
    encoded: SecretString,
}

impl GeneratedKey {
    /// Writes the key (mode 0600, never over an existing file).
    fn persist(&self) -> anyhow::Result<()> {
        let path = &self.path;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .with_context(|| format!("cannot create the master key file {}", path.display()))?;
        file.write_all(self.encoded.expose_secret().as_bytes())?;
        file.sync_all()?;
        tracing::warn!(
            path = %path.display(),
            "NO MASTER KEY CONFIGURED: generated one into this file. Every stored secret depends on it: \
             back it up, and in production set secrets.master_key (or secrets.master_key_file) instead"
        );
        Ok(())
    }
}

/// The key in `path`, or a new one to be written there (see `GeneratedKey`).
fn generated_key(path: &Path) -> anyhow::Result<(MasterKey, Option<GeneratedKey>)> {
    if path.exists() {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read the generated master key {}", path.display()))?;
        let key = MasterKey::from_base64(&SecretString::from(text))
            .with_context(|| format!("the master key in {}", path.display()))?;
        return Ok((key, None));
    }
    let encoded = MasterKey::generate_base64();
    let key = MasterKey::from_base64(&encoded).context("generated master key")?;
    Ok((
        key,
        Some(GeneratedKey {
            path: path.to_path_buf(),
            encoded,
        }),
    ))
}

pub fn store_options(settings: &Settings) -> StoreOptions {
    StoreOptions {
        url: settings.database.url.clone(),
        max_connections: settings.database.max_connections,
        cache_connections: settings.database.cache_connections,
        connect_timeout: settings.database.connect_timeout,
        acquire_timeout: settings.database.acquire_timeout,
        busy_timeout: settings.database.busy_timeout,
    }
}

/// Opens the database (without migrating). Refuses when stored secrets were sealed with a
/// key that is not configured (a lost or wrong master key): every token would fail. A key
/// is generated (first run without configuration) only over a database with nothing sealed.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let (keyring, generated) = keyring(settings)?;
    let store = Store::connect(&store_options(settings), Arc::new(keyring))
        .await
        .with_context(|| {
            format!(
                "cannot open the database ({})",
                redact_url(&settings.database.url)
            )
        })?;
    let missing = store
        .settings()
        .missing_key_ids()
        .await
        .context("reading which keys sealed the stored secrets")?;
    if !missing.is_empty() {
        let ids = missing.join(", ");
        match &generated {
            Some(key) => bail!(
                "refusing to generate a new master key into {}: the database holds secrets sealed with key id(s) {ids}, \
                 which no configured key opens. Restore that key file, or set secrets.master_key (or secrets.previous_keys) to that key",
                key.path.display()
            ),
            None => bail!(
                "the database holds secrets sealed with key id(s) {ids}, which are not configured \
                 (the current key is {}): set secrets.master_key to that key, or add it to secrets.previous_keys",
                store.keyring().current_id()
            ),
        }
    }
    if let Some(key) = generated {
        key.persist()?;
    }
    Ok(store)
}

/// Opens the database for a command that only reads (`tenants list|show`, `api-key list`,
/// `export`, `hookup-url`): it must exist and be migrated. Creates nothing: no SQLite file or
/// folder, no migrations table, no master key (without one configured or generated before,
/// an in-memory key that is never written opens a database with nothing sealed, and a
/// database holding secrets is refused as `open_store` refuses it).
pub async fn open_existing_store(settings: &Settings) -> anyhow::Result<Store> {
    let (keyring, _never_written) = keyring(settings)?;
    let url = redact_url(&settings.database.url);
    let store = match Store::open_existing(&store_options(settings), Arc::new(keyring)).await {
        Ok(store) => store,
        Err(StoreError::NoDatabase) => bail!(
            "there is no database at {url}: this command only reads. Run `provet-broker migrate` (or start the daemon) to create it, or set database.url"
        ),
        Err(StoreError::PendingMigrations(n)) => bail!(
            "the database at {url} is behind this version ({n} migration(s) pending): this command only reads. Run `provet-broker migrate` first"
        ),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot open the database ({url})")));
        }
    };
    let missing = store
        .settings()
        .missing_key_ids()
        .await
        .context("reading which keys sealed the stored secrets")?;
    if !missing.is_empty() {
        bail!(
            "the database holds secrets sealed with key id(s) {}, which are not configured (the current key is {}): set secrets.master_key to that key, or add it to secrets.previous_keys",
            missing.join(", "),
            store.keyring().current_id()
        );
    }
    Ok(store)
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The use cases over an open store, each built once: what the daemon and the CLI commands
/// share.
pub fn use_cases(
    settings: &Settings,
    store: Store,
    hookup_secrets: HookupSecrets,
) -> anyhow::Result<UseCases> {
    let allowlist = HostAllowlist::new(&settings.hookup.allowed_hosts)
        .map_err(|e| anyhow::anyhow!("hookup.allowed_hosts: {e}"))?;
    let policy = Arc::new(UrlPolicy {
        allowlist,
        allow_http: settings.hookup.allow_http,
    });
    // One HTTP client for every provider call; each use has its own total timeout and cap.
    let upstream = Upstream::new(
        policy.clone(),
        UpstreamConfig {
            connect_timeout: settings.tokens.connect_timeout,
            timeout: settings.tokens.timeout,
            max_body: 256 * 1024,
            proxy: settings.upstream.proxy(),
        },
    )
    .map_err(anyhow::Error::msg)?;
    let discovery_upstream = upstream.with_limits(settings.discovery.timeout, 1024 * 1024);
    let metrics = Arc::new(Metrics::new());
    metrics.set_build_info(
        env!("CARGO_PKG_VERSION"),
        option_env!("PROVET_BROKER_GIT_COMMIT").unwrap_or("unknown"),
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let tokens = Arc::new(TokenBroker::new(
        settings.tokens.to_service(),
        upstream,
        store.clone(),
        metrics.clone(),
        clock.clone(),
    ));
    let discovery = Arc::new(Discovery::new(
        settings.discovery.to_service(),
        discovery_upstream,
        store.clone(),
        metrics.clone(),
        clock.clone(),
    ));
    let writers = if store.backend_name() == "sqlite" {
        1
    } else {
        settings.hookup.writers
    };
    let hookups = Arc::new(HookupIntake::new(HookupIntakeParts {
        store: store.clone(),
        policy,
        secrets: hookup_secrets,
        writer: HookupWriter::new(writers, settings.hookup.max_batch),
        tokens: tokens.clone(),
        discovery: discovery.clone(),
        metrics: metrics.clone(),
        clock: clock.clone(),
    }));
    let connect = Arc::new(ConnectFlow::new(
        settings.oauth.to_service(&settings.server.public_url)?,
        store.clone(),
        tokens.clone(),
        discovery.clone(),
        metrics.clone(),
        clock.clone(),
    ));
    let webhook_worker = Arc::new(
        WebhookWorker::new(
            store.clone(),
            settings.events.to_webhooks(),
            metrics.clone(),
            clock.clone(),
        )
        .map_err(anyhow::Error::msg)?,
    );
    let api_keys = Arc::new(ApiKeys::new(
        store.clone(),
        clock.clone(),
        settings.server.api_key_cache_ttl,
    ));
    Ok(UseCases {
        audit: Arc::new(AuditLog::new(store.clone(), clock.clone())),
        console: Arc::new(Console::new(
            store.clone(),
            api_keys.clone(),
            clock.clone(),
            settings.console.to_service(&settings.server.public_url),
        )),
        webhooks: Arc::new(WebhookAdmin::new(store.clone(), webhook_worker.clone())),
        webhook_worker,
        hookups,
        connect,
        tenant_admin: Arc::new(TenantAdmin::new(
            store.clone(),
            tokens.clone(),
            discovery.clone(),
            clock.clone(),
        )),
        api_keys,
        events: Arc::new(broker_service::EventFeed::new(
            store.events().clone(),
            settings.events.to_service(),
            clock.clone(),
        )),
        operations: Arc::new(Operations::new(store, tokens.clone(), metrics.clone())),
        tokens,
        discovery,
        metrics,
        clock,
    })
}

/// The hookup URL's secrets: configured (at least 16 characters each), or generated once
/// and kept in the database. The URL is a credential: it is logged in full only by the
/// start that generated it; every other start logs its fingerprint
/// (`provet-broker hookup-url` prints the URL).
async fn hookup_secrets(
    settings: &Settings,
    store: &Store,
    public_url: &url::Url,
) -> anyhow::Result<HookupSecrets> {
    let (hookup_secret, generated) = if settings.hookup.secret.expose_secret().is_empty() {
        store
            .settings()
            .secret_setting_or_insert(
                HOOKUP_SECRET_SETTING,
                HookupSecrets::generate,
                SystemClock.now(),
            )
            .await
            .context("reading the hookup secret")?
    } else {
        (configured_hookup_secret(settings)?, false)
    };
    for (i, extra) in settings.hookup.extra_secrets.iter().enumerate() {
        if extra.expose_secret().len() < 16 {
            bail!(
                "hookup.extra_secrets[{i}] must be at least 16 characters, like hookup.secret: each one opens the hookup URL"
            );
        }
    }
    let secrets = HookupSecrets::new(hookup_secret, &settings.hookup.extra_secrets);
    if generated {
        tracing::info!(
            hookup_url = %hookup_url(public_url, secrets.current()),
            fingerprint = %secrets.fingerprint(),
            "give Provet this hookup URL (generated now and stored in the database; logged this once, `provet-broker hookup-url` prints it again)"
        );
    } else {
        tracing::info!(
            fingerprint = %secrets.fingerprint(),
            source = if settings.hookup.secret.expose_secret().is_empty() { "database" } else { "hookup.secret" },
            extra_secrets = settings.hookup.extra_secrets.len(),
            "hookup URL ready (`provet-broker hookup-url` prints it)"
        );
    }
    Ok(secrets)
}

/// The settings row that holds a generated hookup secret.
const HOOKUP_SECRET_SETTING: &str = "hookup_secret";

/// `hookup.secret`, refused when too short to protect anything.
fn configured_hookup_secret(settings: &Settings) -> anyhow::Result<SecretString> {
    if settings.hookup.secret.expose_secret().len() < 16 {
        bail!(
            "hookup.secret must be at least 16 characters: it is the only thing protecting the hookup URL"
        );
    }
    Ok(settings.hookup.secret.clone())
}

/// The current hookup secret without generating one: `hookup.secret`, else the stored one
/// (`None` before the daemon's first start).
pub async fn current_hookup_secret(
    settings: &Settings,
    store: Option<&Store>,
) -> anyhow::Result<Option<SecretString>> {
    if !settings.hookup.secret.expose_secret().is_empty() {
        return configured_hookup_secret(settings).map(Some);
    }
    let Some(store) = store else {
        return Ok(None);
    };
    store
        .settings()
        .secret_setting(HOOKUP_SECRET_SETTING)
        .await
        .context("reading the hookup secret")
}

/// The URL to give Provet: `server.public_url`, `/hookup/`, the secret.
pub fn hookup_url(public_url: &url::Url, secret: &SecretString) -> String {
    let base = public_url.as_str().trim_end_matches('/');
    format!("{base}/hookup/{}", secret.expose_secret())
}

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Surface {
    /// Everything (`server.internal_bind` unset).
    All,
    /// What faces the internet: the hookup, the connect flow's callback, health.
    Public,
    /// The service and admin APIs, the console, metrics, OpenAPI.
    Internal,
}

impl Surface {
    fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Public => "public",
            Self::Internal => "internal",
        }
    }

    fn routes(self) -> fn(&mut web::ServiceConfig) {
        match self {
            Self::All => all_routes,
            Self::Public => broker_api::configure_public,
            Self::Internal => internal_routes,
        }
    }
}

/// The internal surface: the service and admin APIs, and the operators' console beside them.
fn internal_routes(cfg: &mut web::ServiceConfig) {
    broker_api::configure_internal(cfg);
    // The console is mounted here, so that it is never on the public surface.
    broker_console::configure(cfg);
}

/// One listener for everything: the internal routes first, as they hold the token hot path
/// (the router tries resources in order; no two patterns overlap).
fn all_routes(cfg: &mut web::ServiceConfig) {
    internal_routes(cfg);
    broker_api::configure_public(cfg);
}

/// A bound socket and the routes it will serve.
struct Listener {
    surface: Surface,
    socket: TcpListener,
    address: std::net::SocketAddr,
}

impl Listener {
    fn bind(surface: Surface, address: &str) -> anyhow::Result<Self> {
        let key = match surface {
            Surface::Internal => "server.internal_bind",
            Surface::All | Surface::Public => "server.bind",
        };
        let socket = TcpListener::bind(address)
            .with_context(|| format!("cannot listen on {address} ({key})"))?;
        let address = socket.local_addr()?;
        Ok(Self {
            surface,
            socket,
            address,
        })
    }

    /// An HTTP server on this socket (each surface its own, so that a path of the other
    /// answers `404` exactly like an unknown one); all share one `AppState`.
    fn serve(
        self,
        settings: &Settings,
        state: web::Data<AppState>,
    ) -> anyhow::Result<actix_web::dev::Server> {
        let routes = self.surface.routes();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(broker_api::json_config())
                .app_data(broker_api::query_config())
                .wrap(from_fn(broker_api::body::bound_request_body))
                .wrap(from_fn(broker_api::observe))
                .configure(routes)
                .default_service(web::to(broker_api::not_found))
        })
        .shutdown_timeout(settings.server.shutdown_timeout.as_secs())
        .client_request_timeout(settings.server.request_header_timeout)
        .keep_alive(settings.server.keep_alive)
        .client_disconnect_timeout(std::time::Duration::from_secs(1))
        .listen(self.socket)?;
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        tracing::info!(address = %self.address, surface = self.surface.as_str(), "listening");
        Ok(server.run())
    }
}

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
        let internal_bind = settings.server.internal_bind.trim();
        let (public, internal) = if internal_bind.is_empty() {
            (Listener::bind(Surface::All, &settings.server.bind)?, None)
        } else {
            (
                Listener::bind(Surface::Public, &settings.server.bind)?,
                Some(Listener::bind(Surface::Internal, internal_bind)?),
            )
        };
        let port = public.address.port();
        let internal_port = internal.as_ref().map_or(port, |l| l.address.port());
        let mut servers = vec![public.serve(&settings, state.clone())?];
        if let Some(internal) = internal {
            servers.push(internal.serve(&settings, state)?);
        }
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
