//! The HTTP listeners: which routes each surface serves, and one server per bound socket.

use std::net::TcpListener;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use broker_api::AppState;

use crate::config::Settings;

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Surface {
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
pub(super) struct Listener {
    surface: Surface,
    socket: TcpListener,
    pub(super) address: std::net::SocketAddr,
}

impl Listener {
    pub(super) fn bind(surface: Surface, address: &str) -> anyhow::Result<Self> {
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
    pub(super) fn serve(
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
