//! Where a scenario's PostgreSQL is and how locklab talks to it: the connection settings, pools,
//! and password redaction. Whether locklab started the server or the user gave a URL does not
//! matter here.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{Client, Config, NoTls};

use super::sql::Sql;

/// Where a scenario's PostgreSQL is and how to talk to it. Serializable for a worker process,
/// which gets it over its stdin.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct PgTarget {
    /// A libpq-style connection string or URL, as tokio-postgres parses it.
    conn: String,
    /// What to show a person: never contains a password.
    pub display: String,
    /// The schema everything locklab creates lives in.
    pub schema: String,
}

impl PgTarget {
    /// A target from a connection string; `display` is what people see instead of it.
    pub fn new(conn: String, display: String, schema: &str) -> PgTarget {
        PgTarget {
            conn,
            display,
            schema: schema.to_string(),
        }
    }

    /// The connection string itself, for another libpq client (pgbench). It may hold a
    /// password: never show it.
    pub fn conninfo(&self) -> &str {
        &self.conn
    }

    /// A connection config with the given application_name. Nothing else travels at startup:
    /// session settings go with each transaction (see [`super::sql::begin`]), because a pooler
    /// refuses startup options.
    pub fn config(&self, app: &str) -> anyhow::Result<Config> {
        let mut cfg = Config::from_str(&self.conn)
            .with_context(|| format!("bad PostgreSQL URL {}", self.display))?;
        cfg.application_name(app);
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(Duration::from_secs(5));
        }
        Ok(cfg)
    }

    pub async fn connect(&self, app: &str) -> anyhow::Result<Client> {
        let cfg = self.config(app)?;
        let (client, conn) = cfg
            .connect(NoTls)
            .await
            .with_context(|| format!("could not connect to PostgreSQL at {}", self.display))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// An application-side connection pool (deadpool-postgres) of at most `size` connections.
    /// `wait` bounds a checkout (deadpool's default is to wait forever). Connections go back
    /// to the pool as they are, without any reset, as in most application pools.
    pub fn pool(
        &self,
        app: &str,
        size: usize,
        wait: Option<Duration>,
        queue: deadpool_postgres::QueueMode,
    ) -> anyhow::Result<deadpool_postgres::Pool> {
        let mgr = deadpool_postgres::Manager::from_config(
            self.config(app)?,
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        deadpool_postgres::Pool::builder(mgr)
            .max_size(size)
            .queue_mode(queue)
            .wait_timeout(wait)
            // A wait timeout needs a runtime named explicitly (else NoRuntimeSpecified).
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .context("could not build a connection pool")
    }

    /// An application pool as a running service has it: every connection open and idle, so
    /// what a scenario times is checkouts, not connection set-up (slow with SCRAM or TLS).
    pub async fn warm(pool: &deadpool_postgres::Pool) -> anyhow::Result<()> {
        let size = pool.status().max_size;
        let conns = futures::future::join_all((0..size).map(|_| pool.get())).await;
        for c in conns {
            drop(c.context("could not open the pool's connections")?);
        }
        Ok(())
    }

    /// Whether this is a pooler that hands one server connection to several clients in turn
    /// (transaction or statement pooling): two sessions, used one after the other, find
    /// themselves on the same server backend. Directly, or through a session-mode pooler,
    /// each session keeps a backend of its own.
    pub async fn pooled(&self, app: &str) -> anyhow::Result<bool> {
        let (a, b) = futures::future::try_join(self.connect(app), self.connect(app)).await?;
        let mut seen: Vec<(usize, i32)> = Vec::new();
        for (who, c) in [(0, &a), (1, &b), (0, &a), (1, &b)] {
            let pid: i32 = c
                .one("SELECT pg_backend_pid()", &[])
                .await
                .with_context(|| format!("could not ask {} for its backend", self.display))?
                .get(0);
            seen.push((who, pid));
        }
        Ok(seen
            .iter()
            .any(|(w, p)| seen.iter().any(|(w2, p2)| w != w2 && p == p2)))
    }

    /// The target as a worker process sees it, from what its parent passed down.
    pub fn for_worker(conn: String, schema: String) -> PgTarget {
        PgTarget {
            display: redact(&conn),
            conn,
            schema,
        }
    }

    /// The connection string, for a worker process (passed in its environment, not argv).
    pub fn conn_string(&self) -> &str {
        &self.conn
    }

    /// `"schema".name`
    pub fn table(&self, name: &str) -> String {
        format!("\"{}\".{name}", self.schema)
    }
}

/// How many more sessions a server lets this run open, and why: what `max_connections`, the
/// reserved slots, the role's and the database's connection limits and the sessions already
/// open leave over.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    pub max_connections: i64,
    /// Slots only superusers (or pg_use_reserved_connections) may use; 0 for a superuser.
    pub reserved: i64,
    /// Client sessions already open (ours for the check not counted).
    pub in_use: i64,
    /// The role's CONNECTION LIMIT and its sessions open, when it has one.
    pub role_limit: Option<(i64, i64)>,
    /// The database's CONNECTION LIMIT and its sessions open, when it has one.
    pub database_limit: Option<(i64, i64)>,
}

impl Capacity {
    /// Sessions this run may still open.
    pub fn allows(&self) -> i64 {
        let mut allows = self.max_connections - self.reserved - self.in_use;
        for (limit, open) in [self.role_limit, self.database_limit].into_iter().flatten() {
            allows = allows.min(limit - open);
        }
        allows.max(0)
    }

    /// Why it allows what it does, for the error message.
    pub fn explain(&self) -> String {
        let mut parts = vec![format!("max_connections {}", self.max_connections)];
        if self.reserved > 0 {
            parts.push(format!("{} reserved for superusers", self.reserved));
        }
        parts.push(format!("{} in use", self.in_use));
        if let Some((limit, open)) = self.role_limit {
            parts.push(format!(
                "the role's CONNECTION LIMIT {limit} with {open} open"
            ));
        }
        if let Some((limit, open)) = self.database_limit {
            parts.push(format!(
                "the database's CONNECTION LIMIT {limit} with {open} open"
            ));
        }
        parts.join(", ")
    }
}

impl PgTarget {
    /// Reads what the server allows this run, in one short session of its own.
    pub async fn capacity(&self, app: &str) -> anyhow::Result<Capacity> {
        let c = self.connect(app).await?;
        let row = c
            .one(
                "SELECT current_setting('max_connections')::bigint, \
                    current_setting('superuser_reserved_connections')::bigint \
                      + coalesce(current_setting('reserved_connections', true)::bigint, 0), \
                    (SELECT count(*) FROM pg_stat_activity \
                      WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()), \
                    r.rolsuper, r.rolconnlimit::bigint, \
                    (SELECT count(*) FROM pg_stat_activity \
                      WHERE usename = current_user AND pid <> pg_backend_pid()), \
                    d.datconnlimit::bigint, \
                    (SELECT count(*) FROM pg_stat_activity \
                      WHERE datname = current_database() AND pid <> pg_backend_pid()) \
                 FROM pg_roles r, pg_database d \
                 WHERE r.rolname = current_user AND d.datname = current_database()",
                &[],
            )
            .await
            .with_context(|| format!("could not read max_connections at {}", self.display))?;
        let superuser: bool = row.get(3);
        let (role_limit, db_limit): (i64, i64) = (row.get(4), row.get(6));
        Ok(Capacity {
            max_connections: row.get(0),
            reserved: if superuser { 0 } else { row.get(1) },
            in_use: row.get(2),
            role_limit: (role_limit >= 0 && !superuser).then(|| (role_limit, row.get(5))),
            database_limit: (db_limit >= 0 && !superuser).then(|| (db_limit, row.get(7))),
        })
    }
}

/// Hides the password of a URL or key=value connection string, in every form.
pub fn redact(conn: &str) -> String {
    crate::secret::redact(conn)
}

/// A user's PostgreSQL URL or key=value string, checked for shape only (no connection):
/// a malformed one is a usage error, with the password hidden.
pub fn parse_url(url: &str) -> Result<Config, crate::error::UsageError> {
    let bad = |why: String| {
        crate::error::UsageError(format!(
            "bad PostgreSQL URL `{}`: {why} (expected postgres://USER[:PASSWORD]@HOST[:PORT]/DB \
             or `host=… user=… dbname=…`)",
            redact(url)
        ))
    };
    let cfg = Config::from_str(url).map_err(|e| bad(e.to_string()))?;
    let named = |h: &tokio_postgres::config::Host| match h {
        tokio_postgres::config::Host::Tcp(name) => !name.is_empty(),
        tokio_postgres::config::Host::Unix(path) => !path.as_os_str().is_empty(),
    };
    if cfg.get_hosts().is_empty() || !cfg.get_hosts().iter().all(named) {
        return Err(bad("it names no host".into()));
    }
    Ok(cfg)
}

/// The user's own server: checks it answers, and reports clearly when it does not.
pub async fn external(url: &str, schema: &str) -> anyhow::Result<PgTarget> {
    parse_url(url)?;
    Ok(PgTarget::new(url.to_string(), redact(url), schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_carries_no_startup_options_of_ours() {
        let t = PgTarget::for_worker(
            "postgres://u@h/db?options=-c%20search_path%3Dapp".into(),
            "s".into(),
        );
        let cfg = t.config("app").unwrap();
        assert_eq!(cfg.get_options(), Some("-c search_path=app"));
        assert_eq!(cfg.get_application_name(), Some("app"));
    }

    #[test]
    fn capacity_is_the_tightest_of_the_limits() {
        let mut c = Capacity {
            max_connections: 40,
            reserved: 3,
            in_use: 16,
            role_limit: None,
            database_limit: None,
        };
        assert_eq!(c.allows(), 21);
        assert_eq!(
            c.explain(),
            "max_connections 40, 3 reserved for superusers, 16 in use"
        );
        c.role_limit = Some((10, 4));
        assert_eq!(c.allows(), 6);
        c.database_limit = Some((5, 5));
        assert_eq!(c.allows(), 0);
        c.in_use = 100;
        assert_eq!(c.allows(), 0, "never negative");
    }

    #[test]
    fn redact_hides_passwords_in_both_forms() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("host=h user=u password=secret"),
            "host=h user=u password=***"
        );
    }
}
