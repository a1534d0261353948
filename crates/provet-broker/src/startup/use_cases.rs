//! The use cases over an open store, each built once: what the daemon and the CLI commands
//! share.

use std::sync::Arc;

use broker_api::UseCases;
use broker_domain::{HostAllowlist, UrlPolicy};
use broker_oauth::{Upstream, UpstreamConfig};
use broker_service::hookup::{HookupIntakeParts, HookupSecrets, HookupWriter};
use broker_service::{
    ApiKeys, AuditLog, Clock, ConnectFlow, Console, Discovery, EventFeed, HookupIntake, Metrics,
    Operations, SystemClock, TenantAdmin, TokenBroker, WebhookAdmin, WebhookWorker,
};
use broker_store::Store;

use crate::config::Settings;

/// Builds every use case over `store`; `hookup_secrets` open the hookup URL.
pub fn use_cases(
    settings: &Settings,
    store: Store,
    hookup_secrets: HookupSecrets,
) -> anyhow::Result<UseCases> {
    let policy = Arc::new(url_policy(settings)?);
    let parts = Parts {
        settings,
        store,
        metrics: metrics(),
        clock: Arc::new(SystemClock),
    };
    let (upstream, discovery_upstream) = upstreams(settings, policy.clone())?;
    let tokens = parts.token_broker(upstream);
    let discovery = parts.discovery(discovery_upstream);
    let hookups = parts.hookup_intake(policy, hookup_secrets, &tokens, &discovery);
    let connect = parts.connect_flow(&tokens, &discovery)?;
    let webhook_worker = parts.webhook_worker(&tokens)?;
    let Parts {
        store,
        metrics,
        clock,
        ..
    } = parts;
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
        events: Arc::new(EventFeed::new(
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

/// Which hosts and schemes a hookup's URLs (and so every provider call) may name.
fn url_policy(settings: &Settings) -> anyhow::Result<UrlPolicy> {
    let allowlist = HostAllowlist::new(&settings.hookup.allowed_hosts)
        .map_err(|e| anyhow::anyhow!("hookup.allowed_hosts: {e}"))?;
    Ok(UrlPolicy {
        allowlist,
        allow_http: settings.hookup.allow_http,
    })
}

/// One HTTP client for every provider call; token requests and discovery each have their
/// own total timeout and body cap.
fn upstreams(settings: &Settings, policy: Arc<UrlPolicy>) -> anyhow::Result<(Upstream, Upstream)> {
    let upstream = Upstream::new(
        policy,
        UpstreamConfig {
            connect_timeout: settings.tokens.connect_timeout,
            timeout: settings.tokens.timeout,
            max_body: 256 * 1024,
            proxy: settings.upstream.proxy(),
        },
    )
    .map_err(anyhow::Error::msg)?;
    let discovery = upstream.with_limits(settings.discovery.timeout, 1024 * 1024);
    Ok((upstream, discovery))
}

/// The metrics registry, with this build's version and commit.
fn metrics() -> Arc<Metrics> {
    let metrics = Arc::new(Metrics::new());
    metrics.set_build_info(
        env!("CARGO_PKG_VERSION"),
        option_env!("PROVET_BROKER_GIT_COMMIT").unwrap_or("unknown"),
    );
    metrics
}

/// What most use cases are built from.
struct Parts<'a> {
    settings: &'a Settings,
    store: Store,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

impl Parts<'_> {
    fn token_broker(&self, upstream: Upstream) -> Arc<TokenBroker> {
        Arc::new(TokenBroker::new(
            self.settings.tokens.to_service(),
            upstream,
            self.store.clone(),
            self.metrics.clone(),
            self.clock.clone(),
        ))
    }

    fn discovery(&self, upstream: Upstream) -> Arc<Discovery> {
        Arc::new(Discovery::new(
            self.settings.discovery.to_service(),
            upstream,
            self.store.clone(),
            self.metrics.clone(),
            self.clock.clone(),
        ))
    }

    fn hookup_intake(
        &self,
        policy: Arc<UrlPolicy>,
        secrets: HookupSecrets,
        tokens: &Arc<TokenBroker>,
        discovery: &Arc<Discovery>,
    ) -> Arc<HookupIntake> {
        // SQLite has one writer: more hookup writers would only queue behind it.
        let writers = if self.store.backend_name() == "sqlite" {
            1
        } else {
            self.settings.hookup.writers
        };
        Arc::new(HookupIntake::new(HookupIntakeParts {
            store: self.store.clone(),
            policy,
            secrets,
            writer: HookupWriter::new(writers, self.settings.hookup.max_batch),
            tokens: tokens.clone(),
            discovery: discovery.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
        }))
    }

    fn connect_flow(
        &self,
        tokens: &Arc<TokenBroker>,
        discovery: &Arc<Discovery>,
    ) -> anyhow::Result<Arc<ConnectFlow>> {
        Ok(Arc::new(ConnectFlow::new(
            self.settings
                .oauth
                .to_service(&self.settings.server.public_url)?,
            self.store.clone(),
            tokens.clone(),
            discovery.clone(),
            self.metrics.clone(),
            self.clock.clone(),
        )))
    }

    /// Deliveries give way to a hookup burst, as credential checks do (the same count).
    fn webhook_worker(&self, tokens: &TokenBroker) -> anyhow::Result<Arc<WebhookWorker>> {
        Ok(Arc::new(
            WebhookWorker::new(
                self.store.clone(),
                self.settings.events.to_webhooks(),
                self.metrics.clone(),
                self.clock.clone(),
                tokens.foreground.clone(),
            )
            .map_err(anyhow::Error::msg)?,
        ))
    }
}
