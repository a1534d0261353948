//! `bare-handler`: the baseline for `token-load`. An actix-web server on 127.0.0.1 that
//! answers POST on any path with a fixed JSON body of a given size and
//! `Cache-Control: no-store`, as the daemon answers a cached token, and does nothing else:
//! no API key, no routing, no logging, no metrics. It prints `listening 127.0.0.1:PORT` on
//! stdout once bound, and stops on SIGTERM or SIGINT.

use std::io::Write;
use std::net::TcpListener;

use actix_web::http::{Method, header};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::{Context, bail};
use clap::Parser;

/// A bare actix-web handler writing a token-sized JSON body (a baseline, not a test).
#[derive(Debug, Parser)]
#[command(name = "bare-handler", version)]
struct Args {
    /// HTTP worker threads; 0 = one per CPU core (actix-web's default, and the daemon's).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Size of the JSON body, in bytes (measure the daemon's token answer).
    #[arg(long, default_value_t = 160)]
    body_bytes: usize,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: String,
}

/// The daemon's token answer, with the access token padded so the body has `len` bytes.
fn token_body(len: usize) -> anyhow::Result<String> {
    let build = |token: &str| {
        serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 35999,
            "expires_at": "2026-01-01T10:00:00Z",
            "scope": "restapi",
            "provet_id": 1,
        })
        .to_string()
    };
    let skeleton = build("").len();
    if len < skeleton {
        bail!("--body-bytes must be at least {skeleton}");
    }
    let body = build(&"x".repeat(len - skeleton));
    debug_assert_eq!(body.len(), len);
    Ok(body)
}

/// Reads the request body (as the daemon does) and writes the fixed answer.
async fn answer(
    request: HttpRequest,
    body: web::Data<String>,
    _payload: web::Bytes,
) -> HttpResponse {
    if request.method() != Method::POST {
        return HttpResponse::MethodNotAllowed().finish();
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body.get_ref().clone())
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let body = web::Data::new(token_body(args.body_bytes)?);
    let listener =
        TcpListener::bind(&args.bind).with_context(|| format!("cannot bind {}", args.bind))?;
    let address = listener.local_addr()?;
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(body.clone())
            .default_service(web::to(answer))
    })
    .shutdown_timeout(1)
    .listen(listener)?;
    if args.workers > 0 {
        server = server.workers(args.workers);
    }
    let server = server.run();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening {address}")?;
    stdout.flush()?;
    drop(stdout);
    server.await?;
    Ok(())
}
