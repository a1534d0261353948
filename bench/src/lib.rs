//! What the benchmarks share: starting and stopping a release build of the daemon at its
//! default configuration on a fresh SQLite or PostgreSQL database and reading its log
//! (`daemon`), creating API keys with its CLI, an instant local token endpoint (`stub`),
//! senders and time-bounded loads (`load`), wrk (`wrk`), the bare baseline server (`bare`),
//! local actix-web servers for the stubs (`server`),
//! reading a process's memory (here) and CPU time (`cpu`), the command-line pieces every
//! benchmark takes, and a few small helpers. Only 127.0.0.1 is ever contacted.
#![allow(clippy::disallowed_methods)] // benchmarks measure real time

pub mod bare;
pub mod cpu;
pub mod daemon;
pub mod load;
pub mod server;
pub mod stub;
pub mod wrk;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;

/// `--binary PATH`: the provet-broker build a benchmark starts. Derefs to the path.
#[derive(Debug, Clone, clap::Args)]
pub struct BinaryArg {
    /// The provet-broker binary; build it with `cargo build --release -p provet-broker`.
    #[arg(long = "binary", default_value = "target/release/provet-broker")]
    pub binary: PathBuf,
}

impl BinaryArg {
    /// The absolute path, or an error saying how to build it when it is missing.
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        let binary = std::path::absolute(&self.binary)?;
        if !binary.is_file() {
            anyhow::bail!(
                "{} does not exist; build it with `cargo build --release -p provet-broker` \
                 (or pass --binary)",
                binary.display()
            );
        }
        Ok(binary)
    }
}

impl std::ops::Deref for BinaryArg {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.binary
    }
}

/// A benchmark's exit: success when it ran and met what it checks; the error printed as
/// `name: cause` otherwise.
pub fn exit_code(name: &str, outcome: anyhow::Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A random alphanumeric string.
pub fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A free port on 127.0.0.1, for a server that must know its own address before it starts
/// (the daemon's `server.public_url`). The port is released before it is used, so another
/// process could take it in between; on a quiet machine that does not happen.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// An HTTP/1.1 client for 127.0.0.1 that keeps at most `idle_per_host` connections.
pub fn http_client(timeout: Duration, idle_per_host: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_max_idle_per_host(idle_per_host)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()?)
}

/// A process's memory, from `/proc/<pid>/status`, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// Resident now.
    pub rss_kib: u64,
    /// The peak resident set so far.
    pub hwm_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status has no {name}"))?;
            Ok(value.trim().trim_end_matches("kB").trim().parse()?)
        };
        Ok(Self {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            self.rss_kib as f64 / 1024.0,
            self.hwm_kib as f64 / 1024.0
        )
    }
}

/// The value at quantile `q` (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of some values (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Polls `done` every 10 ms for at most `limit`.
pub async fn wait_for(done: impl Fn() -> bool, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            anyhow::bail!("not done within {:.0} s", limit.as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// `met` or `MISSED`, for a target on a result line.
pub fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "MISSED" }
}
