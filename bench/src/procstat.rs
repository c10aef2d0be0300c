//! CPU time and resident memory of server processes, read from `/proc`.

use std::time::Duration;

/// One process to watch, named for the report (`gateway-1=1234`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

impl std::str::FromStr for Watched {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, pid) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected NAME=PID"))?;
        Ok(Self {
            name: name.to_owned(),
            pid: pid.parse().map_err(|e| format!("{s:?}: {e}"))?,
        })
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User + system CPU time.
    pub cpu: Duration,
    pub rss_kib: u64,
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Samples process `pid` (`None` if it cannot be read, e.g. it exited).
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let tps = ticks_per_second();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Sample {
        cpu: Duration::from_micros((utime + stime) * 1_000_000 / tps),
        rss_kib,
    })
}

/// The difference between two samples of every watched process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Usage {
    pub name: String,
    pub pid: u32,
    pub cpu_ms: f64,
    pub rss_kib_before: u64,
    pub rss_kib_after: u64,
}

pub fn usage(watched: &[Watched], before: &[Option<Sample>]) -> Vec<Usage> {
    watched
        .iter()
        .zip(before)
        .map(|(w, b)| {
            let b = b.unwrap_or_default();
            let a = sample(w.pid).unwrap_or_default();
            Usage {
                name: w.name.clone(),
                pid: w.pid,
                cpu_ms: a.cpu.saturating_sub(b.cpu).as_secs_f64() * 1000.0,
                rss_kib_before: b.rss_kib,
                rss_kib_after: a.rss_kib,
            }
        })
        .collect()
}

pub fn sample_all(watched: &[Watched]) -> Vec<Option<Sample>> {
    watched.iter().map(|w| sample(w.pid)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_can_be_sampled() {
        let s = super::sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
    }
}
