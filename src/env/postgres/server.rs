//! A throwaway PostgreSQL: installed binaries, an initdb'd template kept in a cache, and a
//! server process per run with its own data dir, fsync off, loopback only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_postgres::NoTls;

use super::target::PgTarget;
use crate::env::INSTALL_HINT;
use crate::env::guardian::Guardian;
use crate::env::netns::NetnsHandle;
use crate::env::process::{self, RunAs};
use crate::env::server::{GuardedDir, ServerProcess, on_a_free_port};

/// The throwaway server's superuser and its password over TCP (unix sockets trust).
const SUPERUSER: &str = "locklab";
const PASSWORD: &str = "locklab";

/// Installed PostgreSQL server binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
    /// Identifies the build: the template cache is kept per build.
    pub version: String,
    /// What `postgres --version` says, e.g. `15.8`.
    pub release: String,
}

/// The oldest and newest PostgreSQL majors locklab runs a throwaway server of.
pub const SUPPORTED_MAJORS: (u32, u32) = (14, 18);

/// `--pg-bin`: the throwaway server's binaries, for the whole process.
static BIN_DIR: std::sync::RwLock<Option<PathBuf>> = std::sync::RwLock::new(None);

/// Takes the throwaway server's binaries from `dir` (`--pg-bin`), before any server starts.
/// A version matrix sets it again between its runs, never while servers start.
pub fn use_bin_dir(dir: PathBuf) {
    match BIN_DIR.write() {
        Ok(mut d) => *d = Some(dir),
        Err(poisoned) => *poisoned.into_inner() = Some(dir),
    }
}

fn bin_dir() -> Option<PathBuf> {
    match BIN_DIR.read() {
        Ok(d) => d.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// `postgres --version` of the binaries in `dir`: its release (`15.8`) and major (15).
fn release_of(dir: &Path) -> anyhow::Result<(String, u32)> {
    let out = std::process::Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .with_context(|| format!("could not run {}/postgres --version", dir.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)`
    let release = text
        .split_whitespace()
        .nth(2)
        .map(str::to_string)
        .with_context(|| {
            format!(
                "{}/postgres --version said `{}`",
                dir.display(),
                text.trim()
            )
        })?;
    let major = release
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .with_context(|| format!("no major version in `{release}`"))?;
    Ok((release, major))
}

/// The major version a data directory was made with (its PG_VERSION file).
pub fn data_version(data: &Path) -> String {
    std::fs::read_to_string(data.join("PG_VERSION"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `--pg-bin` or `LOCKLAB_PG_BIN` if given (and then only there), else PATH, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian and Ubuntu keep the server there, off PATH). A major
/// older than the oldest supported is refused (exit 2), naming the supported ones.
pub fn find_binaries() -> anyhow::Result<Binaries> {
    let has = |d: &Path| d.join("postgres").is_file() && d.join("initdb").is_file();
    let given = bin_dir()
        .map(|d| ("--pg-bin", d))
        .or_else(|| std::env::var_os("LOCKLAB_PG_BIN").map(|d| ("LOCKLAB_PG_BIN", d.into())));
    let dir = if let Some((from, d)) = given {
        // Resolved here (as the user who runs locklab): the server's own account may not
        // reach the path as given (a link out of a directory only its owner can enter).
        let d = d.canonicalize().unwrap_or(d);
        if !has(&d) && from == "LOCKLAB_PG_BIN" {
            bail!(
                "no postgres and initdb in LOCKLAB_PG_BIN={}: {INSTALL_HINT}",
                d.display()
            );
        }
        if !has(&d) {
            return Err(crate::error::UsageError(format!(
                "no postgres and initdb in {from} {}: give the bin directory of a PostgreSQL \
                 {} to {} server (the one with initdb, pg_ctl and postgres)",
                d.display(),
                SUPPORTED_MAJORS.0,
                SUPPORTED_MAJORS.1
            ))
            .into());
        }
        d
    } else {
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        debian.sort();
        on_path
            .into_iter()
            .find(|d| has(d))
            .or_else(|| debian.into_iter().rev().map(|(_, d)| d).find(|d| has(d)))
            .with_context(|| {
                format!("PostgreSQL server binaries (postgres, initdb) not found: {INSTALL_HINT}")
            })?
    };
    // Key the template cache on the binary itself, without the cost of running it.
    let meta = std::fs::metadata(dir.join("postgres"))
        .with_context(|| format!("cannot read {}/postgres", dir.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(
        &(
            dir.canonicalize().unwrap_or_else(|_| dir.clone()),
            meta.len(),
            mtime,
        ),
        &mut h,
    );
    let version = format!("{:016x}", std::hash::Hasher::finish(&h));
    let (release, major) = release_of(&dir)?;
    let (oldest, newest) = SUPPORTED_MAJORS;
    if major < oldest {
        return Err(crate::error::UsageError(format!(
            "PostgreSQL {release} in {} is older than locklab supports: it runs PostgreSQL \
             {oldest} to {newest} (give another with --pg-bin DIR)",
            dir.display()
        ))
        .into());
    }
    Ok(Binaries {
        dir,
        version,
        release,
    })
}

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LOCKLAB_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("locklab");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("locklab");
    }
    std::env::temp_dir().join("locklab-cache")
}

/// An initdb'd cluster kept in the cache: copying it is several times faster than initdb.
async fn template(bins: &Binaries, run_as: Option<RunAs>) -> anyhow::Result<PathBuf> {
    template_in(&cache_dir(), bins, run_as).await
}

/// How long initdb takes here: builds a template in a scratch cache and removes it.
pub async fn time_initdb() -> anyhow::Result<Duration> {
    let bins = find_binaries()?;
    let scratch = process::make_temp_dir("locklab-cache")?;
    let started = Instant::now();
    let result = template_in(&scratch, &bins, process::unprivileged_account()).await;
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&scratch);
    result.map(|_| took)
}

async fn template_in(
    cache: &Path,
    bins: &Binaries,
    run_as: Option<RunAs>,
) -> anyhow::Result<PathBuf> {
    let cache = cache.to_path_buf();
    let path = cache.join(format!("pg-{}-template", bins.version));
    if path.join("PG_VERSION").is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("could not create cache dir {}", cache.display()))?;
    // initdb runs as the server account, which may not reach the cache (e.g. under /root):
    // build in the temp dir, then copy into place and rename atomically.
    let staging = process::make_temp_dir("locklab-initdb")?;
    let result = async {
        std::fs::write(staging.join("pw"), PASSWORD)?;
        if let Some(who) = run_as {
            process::chown_tree(&staging, who)?;
        }
        let mut cmd = std::process::Command::new(bins.dir.join("initdb"));
        cmd.arg("-D")
            .arg(staging.join("data"))
            .args(["-U", SUPERUSER, "--pwfile"])
            .arg(staging.join("pw"))
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]);
        if let Some(who) = run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(who.uid).gid(who.gid);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await?
            .context("could not run initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let tmp = cache.join(format!("pg-template.tmp-{:08x}", rand::random::<u32>()));
        process::copy_tree(&staging.join("data"), &tmp)?;
        if std::fs::rename(&tmp, &path).is_err() {
            // Another locklab got there first; theirs is as good as ours.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&staging);
    result.context("could not prepare the PostgreSQL template cluster")?;
    Ok(path)
}

/// A throwaway PostgreSQL: its own data dir under the temp dir, fsync off, loopback only.
pub struct PgServer {
    /// Major version, e.g. `15`.
    pub version: String,
    process: ServerProcess,
    pub port: u16,
    /// How it was started, to start it again the same way.
    launch: Launch,
}

/// The command line of a throwaway server, kept for a restart.
struct Launch {
    bins: Binaries,
    run_as: Option<RunAs>,
    /// Holds `data`, the unix socket and the log.
    dir: PathBuf,
    port: u16,
    settings: Vec<(String, String)>,
    /// A network namespace of the run's own to run in (see [`crate::env::netns`]).
    netns: Option<NetnsHandle>,
}

impl Launch {
    fn command(&self) -> anyhow::Result<tokio::process::Command> {
        // Appends: a restart keeps the first start's lines.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .context("could not open the server log")?;
        let mut cmd = tokio::process::Command::new(self.bins.dir.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-k")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "shared_buffers=32MB", "-c", "logging_collector=off"]);
        for (k, v) in &self.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        match (&self.netns, self.run_as) {
            // Joining the namespace needs root: it comes first, then the change of user.
            (Some(ns), run_as) => ns.enter_before_exec(&mut cmd, run_as),
            (None, Some(who)) => {
                cmd.uid(who.uid).gid(who.gid);
            }
            (None, None) => {}
        }
        Ok(cmd)
    }
}

impl PgServer {
    pub async fn start(
        guardian: Arc<Guardian>,
        server_settings: &[(String, String)],
    ) -> anyhow::Result<PgServer> {
        Self::start_in(guardian, server_settings, None).await
    }

    /// As [`Self::start`], inside a network namespace of the run's own: its TCP port is then
    /// reachable only from inside that namespace, its unix socket from anywhere.
    pub async fn start_in(
        guardian: Arc<Guardian>,
        server_settings: &[(String, String)],
        netns: Option<NetnsHandle>,
    ) -> anyhow::Result<PgServer> {
        let bins = find_binaries()?;
        let run_as = process::unprivileged_account();
        let template = template(&bins, run_as).await?;
        on_a_free_port("PostgreSQL", |port| {
            Self::start_on(
                &bins,
                run_as,
                &template,
                guardian.clone(),
                server_settings,
                netns.clone(),
                port,
            )
        })
        .await
    }

    async fn start_on(
        bins: &Binaries,
        run_as: Option<RunAs>,
        template: &Path,
        guardian: Arc<Guardian>,
        server_settings: &[(String, String)],
        netns: Option<NetnsHandle>,
        port: u16,
    ) -> anyhow::Result<PgServer> {
        let dir = GuardedDir::new(guardian, "locklab-pg")?;
        let data = dir.path().join("data");
        (|| -> std::io::Result<()> {
            process::copy_tree(template, &data)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
            if let Some(who) = run_as {
                process::chown_tree(dir.path(), who)?;
            }
            Ok(())
        })()
        .context("could not prepare the PostgreSQL data directory")?;
        let launch = Launch {
            bins: bins.clone(),
            run_as,
            dir: dir.path().to_path_buf(),
            port,
            settings: server_settings.to_vec(),
            netns,
        };
        // SIGQUIT (also on locklab's death): postgres shuts down at once and removes its shared
        // memory.
        let process = ServerProcess::spawn(launch.command()?, dir, libc::SIGQUIT)
            .await
            .context("could not start postgres")?;
        let mut server = PgServer {
            version: data_version(&data),
            process,
            port,
            launch,
        };
        if let Err(e) = server.wait_ready().await {
            server.stop().await;
            return Err(e);
        }
        Ok(server)
    }

    /// A fast shutdown (SIGINT: every session is ended, locks freed, no waiting for clients)
    /// and a start on the same data and port, as an operator's restart does.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let cmd = self.launch.command()?;
        self.process
            .respawn(libc::SIGINT, cmd)
            .await
            .context("could not restart postgres")?;
        self.wait_ready().await
    }

    /// The postmaster's process id: its backends are its children.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let cfg = self.target("public").config("locklab-ready")?;
        let cfg = &cfg;
        self.process
            .wait_ready(
                "postgres",
                Duration::from_secs(20),
                &["postgres.log"],
                || async move { cfg.connect(NoTls).await.map(drop).map_err(Into::into) },
            )
            .await
    }

    /// How locklab itself connects: the unix socket, as the trusted superuser.
    pub fn target(&self, schema: &str) -> PgTarget {
        self.target_as(SUPERUSER, schema)
    }

    /// The unix socket (trusted), as `user`: a role the caller created.
    pub fn target_as(&self, user: &str, schema: &str) -> PgTarget {
        let conn = format!(
            "host={} port={} user={user} dbname=postgres",
            self.process.dir().display(),
            self.port
        );
        PgTarget::new(conn, self.url(), schema)
    }

    /// Over TCP loopback with the superuser's password, plus `extra` connection settings (e.g.
    /// client keepalives). Inside a namespace, only a process in that namespace reaches it.
    pub fn tcp_target(&self, schema: &str, extra: &str) -> PgTarget {
        let conn = format!(
            "host=127.0.0.1 port={} user={SUPERUSER} password={PASSWORD} dbname=postgres {extra}",
            self.port
        );
        PgTarget::new(conn, self.url(), schema)
    }

    /// Where its unix socket is (a pooler in front of it connects there, trusted).
    pub fn socket_dir(&self) -> &Path {
        self.process.dir()
    }

    /// A psql-ready TCP URL.
    pub fn url(&self) -> String {
        format!(
            "postgres://{SUPERUSER}:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    pub async fn stop(&mut self) {
        self.process.stop().await;
    }
}
