//! CPU time from `/proc`: of one process, of this process's waited-for children, and of the
//! whole machine, in clock ticks; `cores` turns a difference of two readings into cores.

/// Linux's USER_HZ: the unit of the CPU times in /proc/<pid>/stat and /proc/stat.
pub const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Ticks over `secs` seconds, as cores kept busy.
pub fn cores(ticks: u64, secs: f64) -> f64 {
    ticks as f64 / CLOCK_TICKS_PER_SECOND / secs.max(1e-9)
}

/// The numeric fields of `/proc/<pid>/stat` after the command name (which may contain spaces,
/// so fields are counted after its closing parenthesis).
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// User + system CPU time of a process so far.
pub fn process_ticks(pid: u32) -> Option<u64> {
    own_or_pid_ticks(&pid.to_string())
}

/// User + system CPU time of this process so far.
pub fn self_ticks() -> Option<u64> {
    own_or_pid_ticks("self")
}

fn own_or_pid_ticks(pid: &str) -> Option<u64> {
    let fields = stat_fields(pid)?;
    Some(fields.get(11)? + fields.get(12)?)
}

/// CPU time of this process's children that have been waited for (cutime + cstime).
pub fn children_ticks() -> Option<u64> {
    let fields = stat_fields("self")?;
    Some(fields.get(13)? + fields.get(14)?)
}

/// The whole machine's CPU time so far, from /proc/stat.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineTicks {
    /// Everything but idle and iowait.
    pub busy: u64,
    /// irq + softirq.
    pub irq: u64,
    pub steal: u64,
}

pub fn machine_ticks() -> Option<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is counted in user already).
    let sum = |indexes: &[usize]| indexes.iter().filter_map(|&i| fields.get(i)).sum();
    Some(MachineTicks {
        busy: sum(&[0, 1, 2, 5, 6, 7]),
        irq: sum(&[5, 6]),
        steal: sum(&[7]),
    })
}
