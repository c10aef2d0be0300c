//! A Chorus binary run as a real child process, for tests that kill nodes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process, killed (SIGKILL) on drop.
pub struct Process {
    child: Option<Child>,
    name: String,
}

impl Process {
    /// Starts `program` with `args` and the given environment additions. Its output is
    /// inherited so test failures show its logs.
    pub fn spawn(program: &str, args: &[String], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
        Ok(Self {
            child: Some(child),
            name: program.to_owned(),
        })
    }

    /// The OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory (VmRSS) in KiB, read from `/proc`, while running.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGKILL: the process gets no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for a clean exit; returns whether it exited cleanly.
    pub fn terminate(&mut self, grace: Duration) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.name)
        };
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `url` until it answers 200, or fails after `within`.
pub async fn wait_http_ok(url: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let client = reqwest::Client::new();
    loop {
        let answered = client.get(url).timeout(Duration::from_secs(1)).send().await;
        if answered.is_ok_and(|resp| resp.status().is_success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer 200 within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `check` until it returns true, or fails with `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not within {within:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
