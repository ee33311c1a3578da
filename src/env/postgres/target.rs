//! Where a scenario's PostgreSQL is and how locklab talks to it: the connection settings, pools,
//! and password redaction. Whether locklab started the server or the user gave a URL does not
//! matter here.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{Client, Config, NoTls};

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

    /// A connection config with the given application_name and per-session settings, passed
    /// as startup options so nothing on the server, database or role is changed.
    pub fn config(&self, app: &str, settings: &[(String, String)]) -> anyhow::Result<Config> {
        let mut cfg = Config::from_str(&self.conn)
            .with_context(|| format!("bad PostgreSQL URL {}", self.display))?;
        cfg.application_name(app);
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(Duration::from_secs(5));
        }
        if !settings.is_empty() {
            let mut opts: Vec<String> = cfg.get_options().map(str::to_string).into_iter().collect();
            // Appended after the URL's own options: on a repeated -c, the last one wins.
            opts.extend(
                settings
                    .iter()
                    .map(|(k, v)| format!("-c {k}={}", v.replace(' ', "\\ "))),
            );
            cfg.options(opts.join(" "));
        }
        Ok(cfg)
    }

    pub async fn connect(
        &self,
        app: &str,
        settings: &[(String, String)],
    ) -> anyhow::Result<Client> {
        let cfg = self.config(app, settings)?;
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
        settings: &[(String, String)],
        size: usize,
        wait: Option<Duration>,
        queue: deadpool_postgres::QueueMode,
    ) -> anyhow::Result<deadpool_postgres::Pool> {
        let mgr = deadpool_postgres::Manager::from_config(
            self.config(app, settings)?,
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

/// Hides the password of a URL or key=value connection string.
pub fn redact(conn: &str) -> String {
    // Any URL, not only postgres:// ones: a wrong scheme is still somebody's password.
    if let Some((scheme, rest)) = conn.split_once("://") {
        let scheme = format!("{scheme}://");
        if let Some((userinfo, host)) = rest.rsplit_once('@')
            && let Some((user, _)) = userinfo.split_once(':')
        {
            return format!("{scheme}{user}:***@{host}");
        }
        return conn.to_string();
    }
    conn.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => "password=***".to_string(),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
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
    fn session_settings_are_appended_to_the_urls_own_options() {
        let t = PgTarget::for_worker(
            "postgres://u@h/db?options=-c%20search_path%3Dapp".into(),
            "s".into(),
        );
        let cfg = t
            .config("app", &[("lock_timeout".into(), "50ms".into())])
            .unwrap();
        assert_eq!(
            cfg.get_options(),
            Some("-c search_path=app -c lock_timeout=50ms")
        );
        assert_eq!(cfg.get_application_name(), Some("app"));
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
