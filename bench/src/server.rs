//! A small actix-web server the benchmark runs itself on 127.0.0.1 (the token stub, a
//! discovery server, an authorization-code provider): a free port, the caller's routes,
//! no signal handling, a graceful stop.

use std::net::TcpListener;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tokio::task::JoinHandle;

/// A port taken on 127.0.0.1, so that a server's state can know its own address before the
/// server starts.
pub struct Bound {
    listener: TcpListener,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

/// A running local server.
pub struct LocalServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    name: &'static str,
    handle: ServerHandle,
    task: JoinHandle<std::io::Result<()>>,
}

impl Bound {
    pub fn new() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
        let base = format!("http://{}", listener.local_addr()?);
        Ok(Self { listener, base })
    }

    /// Serves `routes` (which also hand over the app data) with `workers` workers; `name`
    /// says which server it is in errors.
    pub fn serve<F>(
        self,
        name: &'static str,
        workers: usize,
        routes: F,
    ) -> anyhow::Result<LocalServer>
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let server = HttpServer::new(move || App::new().configure(routes.clone()))
            .workers(workers.max(1))
            .disable_signals()
            .shutdown_timeout(1)
            .listen(self.listener)
            .with_context(|| format!("cannot start {name}"))?
            .run();
        Ok(LocalServer {
            base: self.base,
            name,
            handle: server.handle(),
            task: tokio::spawn(server),
        })
    }
}

impl LocalServer {
    pub async fn stop(self) -> anyhow::Result<()> {
        self.handle.stop(true).await;
        self.task
            .await
            .with_context(|| format!("{} panicked", self.name))?
            .with_context(|| format!("{} failed", self.name))?;
        Ok(())
    }
}
