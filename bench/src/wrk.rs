//! wrk (Debian's wrk 4.1.0) against one target: its figures, and the CPU the server, wrk and
//! the rest of the machine used meanwhile (from `/proc`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::process::Command;

use crate::cpu::{children_ticks, machine_ticks, process_ticks};

/// How wrk is run.
#[derive(Clone, Debug)]
pub struct Wrk {
    pub binary: PathBuf,
    pub threads: usize,
    pub connections: usize,
    /// The Lua script; it reads the API key from `BENCH_API_KEY`.
    pub script: PathBuf,
}

/// What wrk reported for one run.
#[derive(Clone, Debug)]
pub struct WrkRun {
    pub target: &'static str,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: Option<String>,
    /// CPU used by the server process over the run, in cores.
    pub server_cpu: f64,
    /// CPU used by wrk over the run, in cores.
    pub wrk_cpu: f64,
    /// CPU used by the whole machine over the run, in cores.
    pub machine_cpu: f64,
    /// Interrupts (mostly the loopback network's softirq; the kernel mostly charges them to
    /// the process they interrupted too), and time stolen by the hypervisor.
    pub irq_cpu: f64,
    pub steal_cpu: f64,
}

impl WrkRun {
    pub fn line(&self) -> String {
        format!(
            "{:<6} {:>9.0} req/s  p50 {:>6.3} ms  p90 {:>6.3} ms  p99 {:>6.3} ms  max {:>7.2} ms  \
             requests {}  non-2xx {}{}  cpu: server {:.2} wrk {:.2} other {:.2} steal {:.2} \
             = machine {:.2} cores (irq {:.2}, charged to the above)",
            self.target,
            self.requests_per_sec,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            self.requests,
            self.non_2xx,
            self.socket_errors
                .as_ref()
                .map_or_else(String::new, |e| format!("  socket errors: {e}")),
            self.server_cpu,
            self.wrk_cpu,
            (self.machine_cpu - self.server_cpu - self.wrk_cpu - self.steal_cpu).max(0.0),
            self.steal_cpu,
            self.machine_cpu,
            self.irq_cpu,
        )
    }
}

/// One wrk run against one target, with the server's and the machine's CPU over it.
pub async fn run(
    wrk: &Wrk,
    key: &str,
    url: &str,
    secs: u64,
    target: &'static str,
    server_pid: u32,
) -> anyhow::Result<WrkRun> {
    let server_before = process_ticks(server_pid).unwrap_or_default();
    let children_before = children_ticks().unwrap_or_default();
    let machine_before = machine_ticks().unwrap_or_default();
    let started = Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(secs + 30),
        Command::new(&wrk.binary)
            .arg(format!("-t{}", wrk.threads))
            .arg(format!("-c{}", wrk.connections))
            .arg(format!("-d{secs}s"))
            .arg("--latency")
            .arg("-s")
            .arg(&wrk.script)
            .arg(url)
            .env("BENCH_API_KEY", key)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("wrk did not finish in time")?
    .with_context(|| format!("cannot run {} (apt-get install wrk)", wrk.binary.display()))?;
    let elapsed = started.elapsed().as_secs_f64();
    let server_after = process_ticks(server_pid).unwrap_or_default();
    let children_after = children_ticks().unwrap_or_default();
    let machine_after = machine_ticks().unwrap_or_default();
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let cores = |ticks: u64| crate::cpu::cores(ticks, elapsed);
    parse_wrk(&text, target)
        .map(|mut run| {
            run.server_cpu = cores(server_after.saturating_sub(server_before));
            run.wrk_cpu = cores(children_after.saturating_sub(children_before));
            run.machine_cpu = cores(machine_after.busy.saturating_sub(machine_before.busy));
            run.irq_cpu = cores(machine_after.irq.saturating_sub(machine_before.irq));
            run.steal_cpu = cores(machine_after.steal.saturating_sub(machine_before.steal));
            run
        })
        .with_context(|| format!("cannot read wrk's output:\n{text}"))
}

/// Reads `Requests/sec`, the latency distribution, `requests in`, non-2xx and socket errors.
fn parse_wrk(text: &str, target: &'static str) -> anyhow::Result<WrkRun> {
    let mut run = WrkRun {
        target,
        requests_per_sec: f64::NAN,
        p50_ms: f64::NAN,
        p90_ms: f64::NAN,
        p99_ms: f64::NAN,
        max_ms: f64::NAN,
        requests: 0,
        non_2xx: 0,
        socket_errors: None,
        server_cpu: 0.0,
        wrk_cpu: 0.0,
        machine_cpu: 0.0,
        irq_cpu: 0.0,
        steal_cpu: 0.0,
    };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => run.requests_per_sec = n.parse()?,
            ["50%", t] => run.p50_ms = duration_ms(t)?,
            ["90%", t] => run.p90_ms = duration_ms(t)?,
            ["99%", t] => run.p99_ms = duration_ms(t)?,
            ["Latency", _avg, _stdev, max, _] => run.max_ms = duration_ms(max)?,
            [n, "requests", "in", ..] => run.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => run.non_2xx = n.parse()?,
            _ if line.starts_with("Socket errors:") => {
                run.socket_errors = Some(line.trim_start_matches("Socket errors:").trim().into());
            }
            _ => {}
        }
    }
    if run.requests_per_sec.is_nan() || run.p99_ms.is_nan() {
        bail!("no Requests/sec or 99% line");
    }
    Ok(run)
}

/// wrk's `291.00us`, `1.41ms`, `2.00s`, `1.00m` in milliseconds.
fn duration_ms(text: &str) -> anyhow::Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| anyhow!("no unit in `{text}`"))?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse()?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => bail!("unknown unit in `{text}`"),
    })
}
