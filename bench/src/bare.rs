//! `bare-handler` (src/bin/bare_handler.rs) as a child process: the baseline server.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::daemon::terminate;

/// The bare-handler child process.
pub struct Bare {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Bare {
    pub async fn start(binary: &Path, workers: usize, body_bytes: usize) -> anyhow::Result<Self> {
        let binary = std::path::absolute(binary)?;
        let mut child = Command::new(&binary)
            .arg("--workers")
            .arg(workers.to_string())
            .arg("--body-bytes")
            .arg(body_bytes.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (cargo build --release -p broker-bench)",
                    binary.display()
                )
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("bare-handler's stdout is not piped"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("bare-handler did not print its address in time")??
            .ok_or_else(|| anyhow!("bare-handler exited before listening"))?;
        let address = line
            .strip_prefix("listening ")
            .filter(|a| a.starts_with("127.0.0.1:"))
            .ok_or_else(|| anyhow!("bare-handler printed `{line}`"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("bare-handler exited right after listening"))?;
        Ok(Self {
            base: format!("http://{address}"),
            pid,
            child,
        })
    }

    pub async fn stop(&mut self) -> anyhow::Result<()> {
        terminate(self.pid).await?;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => self.child.kill().await?,
        }
        Ok(())
    }
}
