//! Redis: a throwaway `redis-server` from the installed package, or the user's own by URL.
//! On the user's server locklab only touches keys under its run's prefix, removes them
//! afterwards, and never runs FLUSHDB, FLUSHALL or CONFIG SET.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use redis::aio::MultiplexedConnection;

use super::INSTALL_HINT;
use super::guardian::Guardian;
use super::server::{GuardedDir, ServerProcess, on_a_free_port};

/// The throwaway server's password: set, so the URL people copy is the same shape as theirs.
const PASSWORD: &str = "locklab";

/// Where a scenario's Redis is and which keys are ours (serializable for a worker process).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct RedisTarget {
    url: String,
    /// What to show a person: never contains a password.
    pub display: String,
    /// Every key locklab creates starts with this, e.g. `locklab_1a2b3c4d:`.
    pub prefix: String,
}

impl RedisTarget {
    pub fn new(url: &str, prefix: &str) -> RedisTarget {
        RedisTarget {
            url: url.to_string(),
            display: redact(url),
            prefix: prefix.to_string(),
        }
    }

    /// The URL, for a worker process (passed in its environment, not argv).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A key of this run: `prefix` + `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub async fn connect(&self) -> anyhow::Result<MultiplexedConnection> {
        let client = redis::Client::open(self.url.as_str())
            .with_context(|| format!("bad Redis URL {}", self.display))?;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let mut con = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .with_context(|| format!("could not connect to Redis at {}", self.display))?;
        // A wrong password can surface on the first command rather than at connect.
        redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .with_context(|| format!("Redis at {} does not answer PING", self.display))?;
        Ok(con)
    }

    /// Deletes every key under our prefix (SCAN, never KEYS or FLUSHDB).
    pub async fn remove_keys(&self, under: &str) -> anyhow::Result<usize> {
        let mut con = self.connect().await?;
        let pattern = format!("{}*", glob_escape(&self.key(under)));
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut con)
                .await?;
            if !keys.is_empty() {
                removed += redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<usize>(&mut con)
                    .await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A user's Redis URL, checked for shape only (no connection): a malformed one is a usage
/// error, with the password hidden.
pub fn parse_url(url: &str) -> Result<(), crate::error::UsageError> {
    let bad = |why: String| {
        crate::error::UsageError(format!(
            "bad Redis URL `{}`: {why} (expected redis://[:PASSWORD@]HOST[:PORT][/DB])",
            redact(url)
        ))
    };
    if !(url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://")
        || url.starts_with("unix://"))
    {
        return Err(bad("it is not a redis:// URL".into()));
    }
    redis::Client::open(url).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

/// Hides the password of a Redis URL in every form (userinfo, `?pass=`).
pub fn redact(url: &str) -> String {
    crate::secret::redact(url)
}

/// `LOCKLAB_REDIS_BIN` (a directory) if set, else `redis-server` on PATH, else /usr/bin.
pub fn find_binary() -> anyhow::Result<PathBuf> {
    let found = match std::env::var_os("LOCKLAB_REDIS_BIN") {
        Some(d) => Some(PathBuf::from(d).join("redis-server")).filter(|p| p.is_file()),
        None => super::process::find_program("redis-server", &[], &["/usr/bin", "/usr/local/bin"]),
    };
    found.with_context(|| {
        format!("redis-server not found (or give your own with --redis-url): {INSTALL_HINT}")
    })
}

/// What a throwaway Redis keeps across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing (no RDB snapshots, no append-only file): a restart starts empty.
    None,
    /// `appendonly yes`, `appendfsync always`: every write is on disk before its reply.
    AofAlways,
}

/// A throwaway Redis: loopback only, a password, its own temp dir; no persistence unless asked.
pub struct RedisServer {
    process: ServerProcess,
    pub port: u16,
    bin: PathBuf,
    persistence: Persistence,
    /// The primary's port, for a replica.
    replica_of: Option<u16>,
}

impl RedisServer {
    pub async fn start(guardian: Arc<Guardian>) -> anyhow::Result<RedisServer> {
        Self::start_with(guardian, Persistence::None).await
    }

    pub async fn start_with(
        guardian: Arc<Guardian>,
        persistence: Persistence,
    ) -> anyhow::Result<RedisServer> {
        let bin = find_binary()?;
        on_a_free_port("redis-server", |port| {
            Self::start_on(&bin, guardian.clone(), port, persistence, None)
        })
        .await
    }

    /// A replica of the throwaway primary on `primary_port` (no persistence), started and
    /// answering; its first sync may still be under way.
    pub async fn start_replica(
        guardian: Arc<Guardian>,
        primary_port: u16,
    ) -> anyhow::Result<RedisServer> {
        let bin = find_binary()?;
        on_a_free_port("redis-server", |port| {
            Self::start_on(
                &bin,
                guardian.clone(),
                port,
                Persistence::None,
                Some(primary_port),
            )
        })
        .await
    }

    fn command(
        bin: &Path,
        port: u16,
        dir: &Path,
        persistence: Persistence,
        replica_of: Option<u16>,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(match persistence {
                Persistence::None => ["--appendonly", "no", "--appendfsync", "everysec"],
                Persistence::AofAlways => ["--appendonly", "yes", "--appendfsync", "always"],
            })
            .args(["--requirepass", PASSWORD])
            .args(["--daemonize", "no", "--loglevel", "warning"]);
        if let Some(primary) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()])
                .args(["--masterauth", PASSWORD]);
        }
        cmd.arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd
    }

    async fn start_on(
        bin: &Path,
        guardian: Arc<Guardian>,
        port: u16,
        persistence: Persistence,
        replica_of: Option<u16>,
    ) -> anyhow::Result<RedisServer> {
        let dir = GuardedDir::new(guardian, "locklab-redis")?;
        let cmd = Self::command(bin, port, dir.path(), persistence, replica_of);
        // No persistence, so nothing to save; with `appendfsync always` every write is on disk
        // already: SIGKILL, rather than the ~100 ms Redis takes to notice a SIGTERM.
        let process = ServerProcess::spawn(cmd, dir, libc::SIGKILL)
            .await
            .context("could not start redis-server")?;
        let mut server = RedisServer {
            process,
            port,
            bin: bin.to_path_buf(),
            persistence,
            replica_of,
        };
        if let Err(e) = server.wait_ready().await {
            server.stop().await;
            return Err(e);
        }
        Ok(server)
    }

    /// Stops the whole process (SIGSTOP): it reads nothing, answers nothing, until resumed.
    pub fn pause(&self) {
        super::process::signal_group(self.process.pid(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        super::process::signal_group(self.process.pid(), libc::SIGCONT);
    }

    /// Crashes the server (SIGKILL): it stays down until [`Self::restart`].
    pub fn kill(&self) {
        super::process::signal_group(self.process.pid(), libc::SIGKILL);
    }

    /// Crashes the server (SIGKILL, if it is still up) and starts it again on the same port and
    /// data directory: what it kept is what its persistence wrote.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let cmd = Self::command(
            &self.bin,
            self.port,
            self.process.dir(),
            self.persistence,
            self.replica_of,
        );
        self.process
            .respawn(libc::SIGKILL, cmd)
            .await
            .context("could not restart redis-server")?;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let target = self.target("");
        let target = &target;
        self.process
            .wait_ready(
                "redis-server",
                Duration::from_secs(10),
                &["redis.log"],
                || async move { target.connect().await.map(drop) },
            )
            .await
    }

    /// A redis-cli-ready URL with the password.
    pub fn url(&self) -> String {
        // `default:` (the ACL user) so that redis-cli -u accepts the URL too.
        format!("redis://default:{PASSWORD}@127.0.0.1:{}/0", self.port)
    }

    pub fn target(&self, prefix: &str) -> RedisTarget {
        RedisTarget::new(&self.url(), prefix)
    }

    pub async fn stop(&mut self) {
        self.process.stop().await;
    }
}

/// The name Sentinel monitors the throwaway primary under.
pub const SENTINEL_MASTER: &str = "locklab";

/// A throwaway Redis Sentinel (`redis-server CONF --sentinel`) watching one primary.
pub struct SentinelServer {
    process: ServerProcess,
    pub port: u16,
}

impl SentinelServer {
    /// Monitors the primary on `primary_port` (quorum 2 of three sentinels), calling it down
    /// after `down_after` without an answer.
    pub async fn start(
        guardian: Arc<Guardian>,
        primary_port: u16,
        down_after: Duration,
    ) -> anyhow::Result<SentinelServer> {
        let bin = find_binary()?;
        on_a_free_port("redis-server --sentinel", |port| {
            Self::start_on(&bin, guardian.clone(), port, primary_port, down_after)
        })
        .await
    }

    async fn start_on(
        bin: &Path,
        guardian: Arc<Guardian>,
        port: u16,
        primary_port: u16,
        down_after: Duration,
    ) -> anyhow::Result<SentinelServer> {
        let dir = GuardedDir::new(guardian, "locklab-sentinel")?;
        let conf = dir.path().join("sentinel.conf");
        // Sentinel rewrites its own config as it learns: a file of its own, in its dir.
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\nloglevel warning\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary_port} 2\n\
                 sentinel auth-pass {SENTINEL_MASTER} {PASSWORD}\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} {}\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 3000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                down_after.as_millis().max(1)
            ),
        )
        .context("could not write sentinel.conf")?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg(&conf)
            .arg("--sentinel")
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("sentinel.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let process = ServerProcess::spawn(cmd, dir, libc::SIGKILL)
            .await
            .context("could not start redis-server --sentinel")?;
        let mut sentinel = SentinelServer { process, port };
        let target = sentinel.target();
        let ready = sentinel
            .process
            .wait_ready(
                "redis-server --sentinel",
                Duration::from_secs(10),
                &["sentinel.log"],
                || {
                    let target = target.clone();
                    async move { target.connect().await.map(drop) }
                },
            )
            .await;
        if let Err(e) = ready {
            sentinel.stop().await;
            return Err(e);
        }
        Ok(sentinel)
    }

    /// Sentinel takes no password here, and has no keys.
    pub fn target(&self) -> RedisTarget {
        RedisTarget::new(&format!("redis://127.0.0.1:{}", self.port), "")
    }

    pub async fn stop(&mut self) {
        self.process.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_redis_passwords() {
        assert_eq!(redact("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("redis://u:pw@h:6379"), "redis://u:***@h:6379");
        assert_eq!(redact("redis://pw@h"), "redis://***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn scan_patterns_escape_glob_characters() {
        assert_eq!(glob_escape("a*b?[c]"), "a\\*b\\?\\[c\\]");
    }
}
