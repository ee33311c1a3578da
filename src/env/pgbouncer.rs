//! A throwaway PgBouncer in transaction mode, in front of the throwaway PostgreSQL: the shape a
//! serverless fleet reaches its database through. Its config, auth file and log live in its
//! own temp dir; it runs as the same unprivileged account as postgres (it refuses root).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_postgres::NoTls;

use super::guardian::Guardian;
use super::postgres::{PgServer, PgTarget};
use super::process::{self, RunAs};
use super::server::{GuardedDir, ServerProcess, on_a_free_port};

/// What clients log in as, and the password (also the admin console's user).
const USER: &str = "locklab";
const PASSWORD: &str = "locklab";
/// The database it serves, named as the server's.
const DATABASE: &str = "postgres";
/// The same database under another name: a pool of its own (PgBouncer pools per database
/// name and user), for clients kept apart from the first pool's (connection-storm's other
/// endpoints).
pub const OTHERS_DATABASE: &str = "others";

/// Why a throwaway PgBouncer cannot front the user's server.
pub const FRONTS_OWN_SERVER: &str = "--pooler starts a PgBouncer in front of locklab's own \
    PostgreSQL; for your server, give your pooler with --pooler-url (and --pg-url for the \
    server behind it)";

/// PgBouncer's own defaults, which the docker-compose service also uses.
pub const DEFAULT_POOL_SIZE: usize = 20;

/// The pooler settings locklab writes unless the user gives their own (`--pooler-setting`).
fn defaults(max_client_conn: usize) -> Vec<(String, String)> {
    [
        ("pool_mode", "transaction".to_string()),
        // As a managed pooler asks. A caller whose clients connect hundreds of times a second
        // sets md5 (connection-storm): SCRAM's key stretching costs the pooler's one thread
        // milliseconds a connection, and the storm would measure that instead.
        ("auth_type", "scram-sha-256".to_string()),
        ("default_pool_size", DEFAULT_POOL_SIZE.to_string()),
        ("max_client_conn", max_client_conn.to_string()),
        // Waiting for a server connection is part of what a run measures: no early give-up.
        ("query_wait_timeout", "0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// locklab's settings with the given ones in their place, in order: a setting replaces any
/// earlier one of the same name (so a caller's own layer, then the user's, go in that order).
fn merged(max_client_conn: usize, settings: &[(String, String)]) -> Vec<(String, String)> {
    let mut all = defaults(max_client_conn);
    for (k, v) in settings {
        all.retain(|(name, _)| name != k);
        all.push((k.clone(), v.clone()));
    }
    all
}

/// The installed pgbouncer: `LOCKLAB_PGBOUNCER_BIN`, else PATH, else /usr/sbin (Debian).
pub fn find_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("LOCKLAB_PGBOUNCER_BIN") {
        let p = PathBuf::from(p);
        return match p.is_file() {
            true => Ok(p),
            false => bail!(
                "no pgbouncer at LOCKLAB_PGBOUNCER_BIN={}: install it (Debian/Ubuntu: \
                 `apt-get install pgbouncer`)",
                p.display()
            ),
        };
    }
    super::process::find_program(
        "pgbouncer",
        &[],
        &["/usr/sbin", "/usr/local/sbin", "/usr/bin"],
    )
    .context(
        "pgbouncer not found: install it (Debian/Ubuntu: `apt-get install pgbouncer`), or \
             give your own pooler with --pooler-url",
    )
}

/// A throwaway PgBouncer: loopback only, transaction pooling, in front of `backend`.
pub struct PoolerServer {
    process: ServerProcess,
    pub port: u16,
}

impl PoolerServer {
    /// Starts one in front of the throwaway `backend`. `settings` override locklab's
    /// (see [`defaults`]); `max_client_conn` is sized by the caller to the run.
    pub async fn start(
        guardian: Arc<Guardian>,
        backend: &PgServer,
        max_client_conn: usize,
        settings: &[(String, String)],
    ) -> anyhow::Result<PoolerServer> {
        let bin = find_binary()?;
        let run_as = process::unprivileged_account();
        let all = merged(max_client_conn, settings);
        on_a_free_port("pgbouncer", |port| {
            Self::start_on(&bin, run_as, guardian.clone(), backend, &all, port)
        })
        .await
    }

    async fn start_on(
        bin: &Path,
        run_as: Option<RunAs>,
        guardian: Arc<Guardian>,
        backend: &PgServer,
        settings: &[(String, String)],
        port: u16,
    ) -> anyhow::Result<PoolerServer> {
        let dir = GuardedDir::new(guardian, "locklab-pgbouncer")?;
        let ini = config(dir.path(), backend, port, settings);
        (|| -> std::io::Result<()> {
            std::fs::write(dir.path().join("pgbouncer.ini"), ini)?;
            std::fs::write(
                dir.path().join("userlist.txt"),
                format!("\"{USER}\" \"{PASSWORD}\"\n"),
            )?;
            if let Some(who) = run_as {
                process::chown_tree(dir.path(), who)?;
            }
            Ok(())
        })()
        .context("could not write PgBouncer's config")?;
        let log = std::fs::File::create(dir.path().join("stderr.log"))
            .context("could not create PgBouncer's log")?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg(dir.path().join("pgbouncer.ini"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        if let Some(who) = run_as {
            cmd.uid(who.uid).gid(who.gid);
        }
        // SIGTERM is PgBouncer's immediate shutdown; it keeps no state worth a safe one.
        let process = ServerProcess::spawn(cmd, dir, libc::SIGTERM)
            .await
            .context("could not start pgbouncer")?;
        let mut server = PoolerServer { process, port };
        if let Err(e) = server.wait_ready().await {
            server.stop().await;
            return Err(e);
        }
        Ok(server)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        // The admin console answers once it listens, without opening a server connection.
        let cfg = self.admin_target().config("locklab-ready")?;
        let cfg = &cfg;
        let logs = ["pgbouncer.log", "stderr.log"];
        self.process
            .wait_ready("pgbouncer", Duration::from_secs(10), &logs, || async move {
                cfg.connect(NoTls).await.map(drop).map_err(Into::into)
            })
            .await
    }

    /// A psql-ready URL: the same database and user as the server behind it.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
            self.port
        )
    }

    /// The pooled path, as the scenarios' clients use it.
    pub fn target(&self, schema: &str) -> PgTarget {
        PgTarget::new(self.url(), self.url(), schema)
    }

    /// The second pool's path: the same server and database through [`OTHERS_DATABASE`].
    pub fn others_target(&self, schema: &str) -> PgTarget {
        let url = format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{OTHERS_DATABASE}",
            self.port
        );
        PgTarget::new(url.clone(), url, schema)
    }

    /// PgBouncer's admin console (simple protocol only: SHOW, SET, RELOAD, …).
    pub fn admin_target(&self) -> PgTarget {
        let url = format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/pgbouncer",
            self.port
        );
        PgTarget::new(url.clone(), url, "pgbouncer")
    }

    pub async fn stop(&mut self) {
        self.process.stop().await;
    }
}

/// pgbouncer.ini: the one database behind it over the server's unix socket (trusted there),
/// clients by SCRAM from the auth file, the log in the temp dir.
fn config(dir: &Path, backend: &PgServer, port: u16, settings: &[(String, String)]) -> String {
    let mut ini = format!(
        "[databases]\n\
         {DATABASE} = host={socket} port={pg_port} dbname={DATABASE} user={USER}\n\
         {OTHERS_DATABASE} = host={socket} port={pg_port} dbname={DATABASE} user={USER}\n\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_file = {auth}\n\
         admin_users = {USER}\n\
         logfile = {log}\n\
         ignore_startup_parameters = extra_float_digits\n",
        socket = backend.socket_dir().display(),
        pg_port = backend.port,
        auth = dir.join("userlist.txt").display(),
        log = dir.join("pgbouncer.log").display(),
    );
    for (k, v) in settings {
        ini.push_str(&format!("{k} = {v}\n"));
    }
    ini
}

/// One PgBouncer setting as `--pooler-setting` takes it.
pub fn parse_setting(s: &str) -> Result<(String, String), crate::error::UsageError> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.contains('\n') => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => Err(crate::error::UsageError(format!(
            "--pooler-setting takes NAME=VALUE (a pgbouncer.ini setting), got `{s}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_settings_replace_locklabs() {
        let all = merged(500, &[parse_setting("default_pool_size = 5").unwrap()]);
        assert!(all.contains(&("pool_mode".into(), "transaction".into())));
        assert!(all.contains(&("default_pool_size".into(), "5".into())));
        assert_eq!(
            all.iter().filter(|(k, _)| k == "default_pool_size").count(),
            1
        );
        let layered = merged(
            500,
            &[
                ("auth_type".to_string(), "md5".to_string()),
                ("auth_type".to_string(), "trust".to_string()),
            ],
        );
        let auth: Vec<_> = layered.iter().filter(|(k, _)| k == "auth_type").collect();
        assert_eq!(auth, vec![&("auth_type".to_string(), "trust".to_string())]);
        assert!(parse_setting("nonsense").is_err());
        assert!(parse_setting("a=b\nc=d").is_err());
    }
}
