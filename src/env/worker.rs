//! Worker processes: a part of a scenario that must be a process of its own so a fault can hit
//! it for real (SIGSTOP, SIGKILL, SIGTERM, a network namespace). It is locklab re-executed as
//! `locklab __worker SCENARIO`, tied to locklab like every child (death signal, and the
//! guardian watches its process group), and it talks in one protocol: its configuration as
//! the first JSON line on stdin (so connection strings never show in argv or the environment),
//! then JSON lines both ways: events on stdout, messages from locklab on stdin.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::time::Instant;

use super::guardian::Guardian;
use super::process::{self, spawn_tied};

/// How much of a worker's stderr is kept to explain its failure.
const STDERR_TAIL: usize = 2000;

/// A running worker, seen from locklab.
pub struct Worker {
    child: Child,
    pid: Option<u32>,
    stdin: Option<ChildStdin>,
    events: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    guardian: Option<Arc<Guardian>>,
}

impl Worker {
    /// Starts `scenario`'s worker and sends it `config`.
    pub async fn spawn(
        exe: &Path,
        scenario: &str,
        config: &impl Serialize,
        guardian: Option<Arc<Guardian>>,
        netns: Option<super::netns::NetnsHandle>,
    ) -> anyhow::Result<Worker> {
        let mut cmd = tokio::process::Command::new(exe);
        if let Some(ns) = netns {
            ns.enter_before_exec(&mut cmd, None);
        }
        cmd.arg("__worker")
            .arg(scenario)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_tied(cmd, libc::SIGKILL)
            .await
            .with_context(|| format!("could not start {scenario}'s worker process"))?;
        let pid = child.id();
        if let (Some(g), Some(pid)) = (&guardian, pid) {
            g.watch_group(pid);
        }
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let tail = stderr.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = err.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut t) = tail.lock() {
                        t.push_str(&String::from_utf8_lossy(&buf[..n]));
                        let cut = t.len().saturating_sub(STDERR_TAIL);
                        let cut = (cut..t.len()).find(|i| t.is_char_boundary(*i)).unwrap_or(0);
                        t.drain(..cut);
                    }
                }
            });
        }
        let mut worker = Worker {
            stdin: child.stdin.take(),
            child,
            pid,
            events,
            stderr,
            guardian,
        };
        if let Err(e) = worker.send(config).await {
            worker.end().await;
            return Err(e.context(format!("could not configure {scenario}'s worker")));
        }
        Ok(worker)
    }

    /// Sends one message (a JSON line) to the worker.
    pub async fn send(&mut self, msg: &impl Serialize) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(msg)?;
        line.push('\n');
        let stdin = self
            .stdin
            .as_mut()
            .context("the worker's stdin is closed")?;
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// The worker's next event. `Ok(None)` when `until` passed first; an error when the
    /// worker ended without one (with what it wrote to stderr) or wrote something else.
    pub async fn next<E: DeserializeOwned>(&mut self, until: Instant) -> anyhow::Result<Option<E>> {
        match tokio::time::timeout_at(until, self.events.recv()).await {
            Err(_) => Ok(None),
            Ok(Some(line)) => serde_json::from_str(&line)
                .map(Some)
                .with_context(|| format!("the worker sent something unexpected: {line}")),
            Ok(None) => {
                // Its stderr reader may still be draining the last lines.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.child.wait())
                    .await;
                bail!("the worker process ended: {}", self.stderr_tail())
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// How the worker ended, once it has: `None` if it is still running at `until`.
    pub async fn exit_status(&mut self, until: Instant) -> Option<std::process::ExitStatus> {
        tokio::time::timeout_at(until, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// What the worker wrote to stderr lately, on one line.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().map(|t| t.clone()).unwrap_or_default();
        tail.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Ends the worker for good, whatever state a fault left it in (SIGKILL reaches a stopped
    /// process too), and reaps it.
    pub async fn end(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.child.wait()).await;
        if let Some(pid) = self.pid {
            // Anything it started in its group goes too, watched by a guardian or not.
            process::signal_group(pid, libc::SIGKILL);
            if let Some(g) = &self.guardian {
                g.forget_group(pid);
            }
        }
    }
}

/// A worker's side of the protocol (`locklab __worker SCENARIO`).
pub struct WorkerIo {
    config: String,
    lines: tokio::io::Lines<BufReader<tokio::io::Stdin>>,
}

impl WorkerIo {
    /// Reads the configuration locklab sent first.
    pub async fn open() -> anyhow::Result<WorkerIo> {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let config = lines
            .next_line()
            .await
            .context("could not read the worker's configuration")?
            .context("locklab sent the worker no configuration")?;
        Ok(WorkerIo { config, lines })
    }

    pub fn config<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_str(&self.config).context("the worker's configuration does not parse")
    }

    /// Reports an event to locklab. Written and flushed before it returns, so locklab may act
    /// on it (freeze or kill this process) at once.
    pub fn emit(&self, event: &impl Serialize) {
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    /// The next message from locklab; `None` when locklab closed the pipe.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> anyhow::Result<Option<T>> {
        match self.lines.next_line().await? {
            Some(line) => Ok(Some(serde_json::from_str(&line).with_context(|| {
                format!("locklab sent the worker something unexpected: {line}")
            })?)),
            None => Ok(None),
        }
    }
}
