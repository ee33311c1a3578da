//! What every throwaway server has in common: a temp dir and a process group the guardian knows
//! about until the server is stopped, a port that may be taken under our feet, a wait until it
//! answers, and a stop.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::guardian::Guardian;
use super::process;

/// A fresh temp dir under the guardian's watch; removed (and forgotten) when dropped.
pub struct GuardedDir {
    path: PathBuf,
    guardian: Arc<Guardian>,
    removed: bool,
}

impl GuardedDir {
    pub fn new(guardian: Arc<Guardian>, prefix: &str) -> anyhow::Result<GuardedDir> {
        let path = process::make_temp_dir(prefix)
            .with_context(|| format!("could not create a temp dir for {prefix}"))?;
        guardian.watch_dir(&path);
        Ok(GuardedDir {
            path,
            guardian,
            removed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn remove(&mut self) {
        if !self.removed {
            self.removed = true;
            let _ = std::fs::remove_dir_all(&self.path);
            self.guardian.forget_dir(&self.path);
        }
    }
}

impl Drop for GuardedDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A server process in its own group, tied to locklab, with its temp dir.
pub struct ServerProcess {
    child: tokio::process::Child,
    pid: u32,
    /// How it is stopped, and what it gets if locklab dies first.
    stop_signal: libc::c_int,
    stopped: bool,
    guardian: Arc<Guardian>,
    // Last: dropped (removed) after the process is signalled.
    dir: GuardedDir,
}

impl ServerProcess {
    /// Spawns `cmd` tied to locklab; its group is watched by the guardian until [`Self::stop`].
    /// On failure the dir is removed.
    pub async fn spawn(
        cmd: tokio::process::Command,
        dir: GuardedDir,
        stop_signal: libc::c_int,
    ) -> anyhow::Result<ServerProcess> {
        let child = process::spawn_tied(cmd, stop_signal).await?;
        let pid = child.id().unwrap_or(0);
        let guardian = dir.guardian.clone();
        guardian.watch_group(pid);
        Ok(ServerProcess {
            child,
            pid,
            stop_signal,
            stopped: false,
            guardian,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process (and process group) id of the server's leader.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stops the process with `signal` (its dir stays) and starts `cmd` in its place, watched
    /// by the guardian as the first was: a restart on the same data.
    pub async fn respawn(
        &mut self,
        signal: libc::c_int,
        cmd: tokio::process::Command,
    ) -> anyhow::Result<()> {
        process::stop_group(&mut self.child, signal, Duration::from_secs(10)).await;
        self.guardian.forget_group(self.pid);
        self.child = process::spawn_tied(cmd, self.stop_signal).await?;
        self.pid = self.child.id().unwrap_or(0);
        self.guardian.watch_group(self.pid);
        Ok(())
    }

    /// `Some(status)` if the server already exited.
    pub fn exited(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// Polls `probe` until it succeeds. Fails at once if the process exits, or after `within`;
    /// either way with the last lines of the first of `logs` (files in its dir) that exists.
    pub async fn wait_ready<F, Fut>(
        &mut self,
        what: &str,
        within: Duration,
        logs: &[&str],
        mut probe: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.exited()? {
                anyhow::bail!(
                    "{what} exited ({status}) while starting: {}",
                    self.log_tail(logs)
                );
            }
            match probe().await {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => anyhow::bail!(
                    "{what} did not answer within {} ({e:#}): {}",
                    humantime::format_duration(within),
                    self.log_tail(logs)
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(3)).await,
            }
        }
    }

    /// The last lines of the first of `logs` that exists, on one line.
    fn log_tail(&self, logs: &[&str]) -> String {
        let log = logs
            .iter()
            .find_map(|name| std::fs::read_to_string(self.dir().join(name)).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// Stops the group (its stop signal, a grace period, then SIGKILL) and removes the dir.
    pub async fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        process::stop_group(&mut self.child, self.stop_signal, Duration::from_secs(3)).await;
        self.guardian.forget_group(self.pid);
        self.dir.remove();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if !self.stopped {
            // Reached only on an unexpected unwind: signal without waiting.
            process::signal(self.pid, self.stop_signal);
        }
    }
}

/// Starts a server on a free loopback port, trying a few: the port can be taken between our
/// check and the server's bind.
pub async fn on_a_free_port<T, F, Fut>(what: &str, mut start: F) -> anyhow::Result<T>
where
    F: FnMut(u16) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut last_err = None;
    for _ in 0..3 {
        let port = process::free_port().context("could not find a free port")?;
        match start(port).await {
            Ok(s) => return Ok(s),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("{what} did not start")))
}
