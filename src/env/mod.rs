//! The environment: the servers a scenario runs against, throwaway or the user's own.
//! Each server kind is one file; `Env` only composes them and owns their teardown.

pub mod guardian;
pub mod netns;
pub mod pgbouncer;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod server;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use guardian::Guardian;
use pgbouncer::PoolerServer;
use postgres::{PgServer, PgTarget};
use redis::{RedisServer, RedisTarget};

/// What to do when a server binary is missing.
pub const INSTALL_HINT: &str = "install the server packages (Debian/Ubuntu: `apt-get install postgresql redis-server pgbouncer`), \
or point locklab at your own servers with --pg-url (docker compose up -d starts the ones the README uses)";

#[derive(Debug, Clone, Default)]
pub struct EnvOptions {
    /// The user's own PostgreSQL; `None` starts a throwaway one.
    pub pg_url: Option<String>,
    /// The user's own Redis; `None` starts a throwaway one when a scenario needs Redis.
    pub redis_url: Option<String>,
    /// Whether any scenario of the run uses Redis (no Redis is started or checked otherwise).
    pub need_redis: bool,
    /// Extra `-c name=value` for a throwaway server (never applied to the user's server).
    pub pg_server_settings: Vec<(String, String)>,
    /// The locklab binary, re-executed for the guardian and for worker processes.
    pub exe: PathBuf,
    /// Start the servers but create no schema (workshop mode: nothing runs in this process).
    pub servers_only: bool,
    /// The most PostgreSQL sessions the run opens at once, checked against what the server
    /// allows before anything is created on it.
    pub budget: Option<Budget>,
    /// A connection pooler between the workload and the server, if any.
    pub pooler: PoolerChoice,
    /// The user's pooler's admin console (`--pooler-admin-url`), for its own figures.
    pub pooler_admin_url: Option<String>,
    /// A second pool on the user's pooler (`--pooler-others-url`).
    pub pooler_others_url: Option<String>,
    /// Some variant runs its workload through a pooler: without one for the whole run, a
    /// throwaway PgBouncer is started for those variants alone.
    pub need_pooler: bool,
}

/// Whether the workload reaches PostgreSQL through a pooler, and whose.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum PoolerChoice {
    /// Straight to the server (a pooler behind `--pg-url` is still detected).
    #[default]
    None,
    /// A throwaway PgBouncer with these pgbouncer.ini settings over locklab's.
    Throwaway(Vec<(String, String)>),
    /// The user's own pooler, in front of the server `--pg-url` names.
    Url(String),
}

/// The pooler a run's workload goes through, as the table header names it.
#[derive(Debug, Clone)]
pub struct Pooler {
    /// e.g. `through a throwaway PgBouncer (transaction pooling)`.
    pub describe: String,
}

/// What a run needs of the server's connections, and what to say when it does not fit.
#[derive(Debug, Clone)]
pub struct Budget {
    pub sessions: usize,
    /// The scenario that needs the most, and the parameters its need grows with.
    pub scenario: String,
    pub sized_by: String,
}

/// Sessions a throwaway server keeps free beyond a run's budget (psql from `env up`, say).
const THROWAWAY_SPARE: usize = 20;
/// The throwaway server's max_connections unless a run needs more.
const THROWAWAY_MAX_CONNECTIONS: usize = 300;

impl Budget {
    /// Refuses a run the server cannot hold, naming the need, the limit and what to lower.
    pub fn check(&self, capacity: &postgres::Capacity) -> Result<(), crate::error::UsageError> {
        let allows = capacity.allows();
        match (self.sessions as i64) <= allows {
            true => Ok(()),
            false => Err(crate::error::UsageError(format!(
                "{} needs {} connections; the server allows {allows} more ({}); {}raise the \
                 server's limit",
                self.scenario,
                self.sessions,
                capacity.explain(),
                match self.sized_by.as_str() {
                    "" => String::new(),
                    by => format!("lower --param {by}, or "),
                }
            ))),
        }
    }
}

pub struct Env {
    /// The workload's path to PostgreSQL: through the pooler when the run has one.
    pub pg: PgTarget,
    /// locklab's own sessions (setup, observers, probes, cleanup): straight to the server when
    /// the run knows how, so a full pool never delays what measures it.
    pub direct: PgTarget,
    /// The pooler between the workload and the server, when the whole run goes through one.
    pub pooler: Option<Pooler>,
    /// The path through a transaction-mode pooler, for variants that run through one: the
    /// run's own pooler, or a throwaway PgBouncer started for them.
    pub pooled: Option<PgTarget>,
    /// A second pool of that pooler, apart from `pooled`'s (see [`pgbouncer::OTHERS_DATABASE`]).
    pub pooled_others: Option<PgTarget>,
    /// The user's pooler's admin console, when given (locklab's own PgBouncer's is
    /// [`Self::pooler_admin`]).
    pub users_pooler_admin: Option<PgTarget>,
    /// `--pooler-setting`s for locklab's own PgBouncers (the run's, and a variant's own).
    pub pooler_settings: Vec<(String, String)>,
    /// The user's pooler's max_client_conn, read from its admin console when given.
    pub users_pooler_max_clients: Option<usize>,
    /// Present when the run needs Redis.
    pub redis: Option<RedisTarget>,
    /// Prefix of every application_name and of the schema: tells our sessions from others'.
    pub run_tag: String,
    pub exe: PathBuf,
    pg_server: Option<PgServer>,
    redis_server: Option<RedisServer>,
    pooler_server: Option<PoolerServer>,
    /// `--pg-url` itself is a transaction-mode pooler: the run has no path straight to the
    /// server.
    no_direct_path: bool,
    guardian: Option<Arc<Guardian>>,
    /// The server's release (`server_version`, e.g. `15.8`), read as the run's schema is made.
    pub pg_release: Option<String>,
}

/// The run's guardian, started on first need.
fn guardian_for(
    slot: &mut Option<Arc<Guardian>>,
    exe: &std::path::Path,
) -> anyhow::Result<Arc<Guardian>> {
    match slot {
        Some(g) => Ok(g.clone()),
        None => {
            let g = Arc::new(Guardian::start(exe)?);
            *slot = Some(g.clone());
            Ok(g)
        }
    }
}

impl Env {
    pub async fn setup(opts: &EnvOptions) -> anyhow::Result<Env> {
        let run_tag = format!("locklab_{:08x}", rand::random::<u32>());
        // The guardian starts with the first throwaway server; a run by URL needs none.
        let mut guardian = None;
        let mut pooled_url = false;
        let (pg, pg_server) = match &opts.pg_url {
            Some(url) => {
                let target = postgres::external(url, &run_tag).await?;
                let too_small = match &opts.budget {
                    Some(budget) => {
                        let capacity = target.capacity(&format!("{run_tag}/capacity")).await?;
                        budget.check(&capacity).err()
                    }
                    None => None,
                };
                // Through a pooler the server's slots are not the run's clients: the pooler
                // maps them onto its own few connections, so the budget does not apply. (A
                // server too small may refuse the detection's two sessions too: then it is not
                // a pooler, as far as the budget goes.)
                if opts.pooler == PoolerChoice::None {
                    let probe = format!("{run_tag}/pooler-probe");
                    pooled_url = match &too_small {
                        None => target.pooled(&probe).await?,
                        Some(_) => target.pooled(&probe).await.unwrap_or(false),
                    };
                    if let Some(e) = too_small.filter(|_| !pooled_url) {
                        return Err(e.into());
                    }
                }
                (target, None)
            }
            None => {
                let g = guardian_for(&mut guardian, &opts.exe)?;
                let mut settings = opts.pg_server_settings.clone();
                // A throwaway server is sized to the run (a user's setting still wins).
                let need = opts.budget.as_ref().map_or(0, |b| b.sessions) + THROWAWAY_SPARE;
                settings.insert(
                    0,
                    (
                        "max_connections".into(),
                        need.max(THROWAWAY_MAX_CONNECTIONS).to_string(),
                    ),
                );
                match PgServer::start(g.clone(), &settings).await {
                    Ok(s) => (s.target(&run_tag), Some(s)),
                    Err(e) => {
                        g.finish();
                        return Err(e.context("could not start a throwaway PostgreSQL"));
                    }
                }
            }
        };
        let mut env = Env {
            direct: pg.clone(),
            pg,
            pooler: None,
            pooled: None,
            pooled_others: None,
            users_pooler_admin: None,
            users_pooler_max_clients: None,
            pooler_settings: match &opts.pooler {
                PoolerChoice::Throwaway(settings) => settings.clone(),
                _ => Vec::new(),
            },
            redis: None,
            run_tag,
            exe: opts.exe.clone(),
            pg_server,
            redis_server: None,
            pooler_server: None,
            no_direct_path: pooled_url,
            guardian,
            pg_release: None,
        };
        if let Err(e) = env.setup_pooler(opts, pooled_url).await {
            env.teardown().await;
            return Err(e);
        }
        if opts.need_redis
            && let Err(e) = env.setup_redis(opts).await
        {
            env.teardown().await;
            return Err(e);
        }
        if opts.servers_only {
            return Ok(env);
        }
        match env.create_schema().await {
            Ok(release) => env.pg_release = release,
            Err(e) => {
                env.teardown().await;
                return Err(e);
            }
        }
        Ok(env)
    }

    async fn setup_pooler(&mut self, opts: &EnvOptions, pooled_url: bool) -> anyhow::Result<()> {
        match &opts.pooler {
            PoolerChoice::None if opts.need_pooler && self.pg_server.is_some() => {
                let server = self.start_pgbouncer(opts, &[]).await?;
                self.pooled = Some(server.target(&self.pg.schema));
                self.pooled_others = Some(server.others_target(&self.pg.schema));
                self.pooler_server = Some(server);
                return Ok(());
            }
            PoolerChoice::None => {
                if pooled_url {
                    self.pooler = Some(Pooler {
                        describe: "(a transaction-mode pooler: its clients share server \
                                   connections)"
                            .into(),
                    });
                }
            }
            PoolerChoice::Url(url) => {
                let target = postgres::external(url, &self.run_tag).await?;
                // Fails here, before any variant, on a wrong URL or password.
                target.connect(&self.app("pooler-check")).await?;
                self.pooler = Some(Pooler {
                    describe: format!("through the pooler at {}", target.display),
                });
                self.pg = target;
                if let Some(url) = &opts.pooler_others_url {
                    let others = postgres::external(url, &self.run_tag).await?;
                    // PgBouncer pools per database and user: the same pair is the same pool.
                    let pool = |t: &PgTarget| -> anyhow::Result<_> {
                        let c = t.config("")?;
                        let user = c.get_user().map(str::to_string);
                        Ok((
                            c.get_hosts().to_vec(),
                            c.get_ports().to_vec(),
                            c.get_dbname().map(str::to_string).or(user.clone()),
                            user,
                        ))
                    };
                    if pool(&others)? == pool(&self.pg)? {
                        return Err(crate::error::UsageError(
                            "--pooler-others-url names the same pool as --pooler-url (the same \
                             database and user): give another database alias or user"
                                .into(),
                        )
                        .into());
                    }
                    others
                        .connect(&self.app("pooler-check"))
                        .await
                        .context("--pooler-others-url: could not connect to the second pool")?;
                    self.pooled_others = Some(others);
                }
                if let Some(url) = &opts.pooler_admin_url {
                    let admin = postgres::external(url, "pgbouncer").await?;
                    let c = admin.connect(&self.app("pooler-check")).await.context(
                        "--pooler-admin-url: could not connect to the pooler's admin console",
                    )?;
                    c.simple_query("SHOW POOLS").await.context(
                        "--pooler-admin-url: the admin console did not answer SHOW POOLS (is \
                         the user in PgBouncer's admin_users or stats_users?)",
                    )?;
                    // Readable to admin_users only; a stats user leaves it unknown.
                    if let Ok(rows) = c.simple_query("SHOW CONFIG").await {
                        self.users_pooler_max_clients = rows.iter().find_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r)
                                if r.try_get(0).ok().flatten() == Some("max_client_conn") =>
                            {
                                r.try_get(1).ok().flatten().and_then(|v| v.parse().ok())
                            }
                            _ => None,
                        });
                    }
                    self.users_pooler_admin = Some(admin);
                }
            }
            PoolerChoice::Throwaway(settings) => {
                // (app.rs refuses `--pooler --pg-url` with the reason; start_pgbouncer says it
                // again for any other caller.)
                let server = self.start_pgbouncer(opts, settings).await?;
                self.pg = server.target(&self.pg.schema);
                self.pooled_others = Some(server.others_target(&self.pg.schema));
                self.pooler = Some(Pooler {
                    describe: "through a throwaway PgBouncer (transaction pooling)".into(),
                });
                self.pooler_server = Some(server);
            }
        }
        if self.pooler.is_some() {
            self.pooled = Some(self.pg.clone());
        }
        Ok(())
    }

    async fn start_pgbouncer(
        &mut self,
        opts: &EnvOptions,
        settings: &[(String, String)],
    ) -> anyhow::Result<PoolerServer> {
        let backend = self
            .pg_server
            .as_ref()
            .ok_or_else(|| crate::error::UsageError(pgbouncer::FRONTS_OWN_SERVER.into()))?;
        let g = guardian_for(&mut self.guardian, &self.exe)?;
        let clients = opts.budget.as_ref().map_or(0, |b| b.sessions) + THROWAWAY_SPARE;
        PoolerServer::start(g, backend, clients.max(THROWAWAY_MAX_CONNECTIONS), settings)
            .await
            .context("could not start a throwaway PgBouncer")
    }

    /// A throwaway PostgreSQL of the caller's own, with these server settings, for a scenario
    /// whose fault is the server's own limits (the run's server is sized to the run and
    /// shared by its variants). `None` on a run against the user's server. The guardian
    /// stops it if locklab dies first; the caller stops it when done.
    pub async fn start_own_pg(
        &self,
        settings: &[(String, String)],
    ) -> Option<anyhow::Result<PgServer>> {
        self.pg_server.as_ref()?;
        let guardian = self.guardian.clone()?;
        Some(
            PgServer::start(guardian, settings)
                .await
                .context("could not start a throwaway PostgreSQL"),
        )
    }

    /// Throwaway Redis servers of the caller's own (the nodes a scenario restarts, kills or
    /// fails over), guarded like the run's: the caller stops them when done. Only on a run
    /// whose Redis locklab started itself ([`Self::own_redis_missing`] says why not).
    pub async fn start_own_redis(
        &self,
        count: usize,
        persistence: redis::Persistence,
    ) -> anyhow::Result<Vec<RedisServer>> {
        let Some(guardian) = self.redis_server.as_ref().and(self.guardian.clone()) else {
            anyhow::bail!(
                "Redis servers of a variant's own need a run whose Redis locklab started"
            );
        };
        let starts = (0..count).map(|_| RedisServer::start_with(guardian.clone(), persistence));
        let mut servers = Vec::with_capacity(count);
        let mut failed = None;
        for r in futures::future::join_all(starts).await {
            match r {
                Ok(s) => servers.push(s),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            for s in &mut servers {
                s.stop().await;
            }
            return Err(e.context("could not start a throwaway Redis"));
        }
        Ok(servers)
    }

    /// A primary, its replica and three Sentinels watching it, of the caller's own (see
    /// [`Self::start_own_redis`]). The caller stops them when done.
    pub async fn start_own_sentinel_pair(
        &self,
        down_after: std::time::Duration,
    ) -> anyhow::Result<(Vec<RedisServer>, Vec<redis::SentinelServer>)> {
        let mut nodes = self.start_own_redis(1, redis::Persistence::None).await?;
        let guardian = self
            .guardian
            .clone()
            .context("no guardian for the run's servers")?;
        let primary = nodes[0].port;
        match RedisServer::start_replica(guardian.clone(), primary).await {
            Ok(r) => nodes.push(r),
            Err(e) => {
                nodes[0].stop().await;
                return Err(e.context("could not start a throwaway Redis replica"));
            }
        }
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            match redis::SentinelServer::start(guardian.clone(), primary, down_after).await {
                Ok(s) => sentinels.push(s),
                Err(e) => {
                    for s in &mut sentinels {
                        s.stop().await;
                    }
                    for n in &mut nodes {
                        n.stop().await;
                    }
                    return Err(e.context("could not start a throwaway Redis Sentinel"));
                }
            }
        }
        Ok((nodes, sentinels))
    }

    /// Why a scenario that restarts or fails over Redis servers cannot run here: the run's
    /// Redis is the user's (`--redis-url`).
    pub fn own_redis_missing(&self, does: &str) -> Option<String> {
        self.redis_server.is_none().then(|| {
            format!(
                "it {does}, which locklab does only to Redis servers it started: run it \
                 without --redis-url"
            )
        })
    }

    /// A throwaway PgBouncer of the caller's own in front of `backend` (a server from
    /// [`Self::start_own_pg`]), guarded like it; the caller stops it when done.
    pub async fn start_own_pooler(
        &self,
        backend: &PgServer,
        max_client_conn: usize,
        settings: &[(String, String)],
    ) -> anyhow::Result<PoolerServer> {
        let Some(guardian) = self.guardian.clone() else {
            anyhow::bail!("a PgBouncer of a variant's own needs a server locklab started");
        };
        PoolerServer::start(guardian, backend, max_client_conn, settings)
            .await
            .context("could not start a throwaway PgBouncer")
    }

    /// As [`Self::start_own_pg`], inside a network namespace of the run's own (created here,
    /// deleted with [`netns::Netns::delete`] after the server is stopped). `None` on a run
    /// against the user's server.
    pub async fn start_own_pg_in_netns(
        &self,
        settings: &[(String, String)],
    ) -> Option<anyhow::Result<(PgServer, netns::Netns)>> {
        self.pg_server.as_ref()?;
        let guardian = self.guardian.clone()?;
        Some(
            async {
                let mut ns = netns::Netns::create(guardian.clone()).await?;
                match PgServer::start_in(guardian, settings, Some(ns.handle()?)).await {
                    Ok(server) => Ok((server, ns)),
                    Err(e) => {
                        ns.delete().await;
                        Err(e.context("could not start a throwaway PostgreSQL in a namespace"))
                    }
                }
            }
            .await,
        )
    }

    /// Why a scenario whose fault is the server's own connection slots cannot run here: the
    /// run's workload goes through a pooler that hides them.
    pub fn slots_missing(&self) -> Option<String> {
        self.pooler.as_ref().map(|_| {
            "its fault is the server's own connection slots, and this run's workload goes \
             through a pooler that hides them: give the server itself as --pg-url, without \
             --pooler or --pooler-url"
                .into()
        })
    }

    /// The run is on the user's server (`--pg-url`), not one locklab started.
    pub fn on_users_server(&self) -> bool {
        self.pg_server.is_none()
    }

    /// `direct` is itself a transaction-mode pooler (`--pg-url` names one): a session-level
    /// `SET` on it would not stay with the session, and would leak to the pooler's next client.
    pub fn direct_is_pooled(&self) -> bool {
        self.no_direct_path
    }

    /// Why a scenario that compares the pooler's path with one straight to the server cannot
    /// run here: --pg-url is itself a pooler.
    pub fn direct_path_missing(&self) -> Option<String> {
        self.no_direct_path.then(|| {
            "it compares the pooler's path with one straight to the server, and --pg-url is \
             itself a pooler: give the server with --pg-url and the pooler with --pooler-url"
                .into()
        })
    }

    /// Why a scenario that starts, restarts or partitions a server of its own cannot run here:
    /// the run was given the user's server. `does` says what it would do to it.
    pub fn own_server_missing(&self, does: &str) -> Option<String> {
        self.pg_server.is_none().then(|| {
            format!(
                "it {does}, which locklab does only to a server it started: run it without \
                 --pg-url"
            )
        })
    }

    /// Why a scenario that works on the server's own connections cannot run through the run's
    /// pooler: `does` says what it does to them.
    pub fn pooler_in_the_way(&self, does: &str) -> Option<String> {
        self.pooler.as_ref().map(|_| {
            format!(
                "it {does}; through a pooler those connections would be the pooler's, which \
                 it does not model (run it without --pooler, --pooler-url, or a pooler as \
                 --pg-url)"
            )
        })
    }

    /// Why a variant cannot run in this environment (it needs a pooler the run lacks), if so.
    pub fn cannot_run(&self, through_pooler: bool, pooler_settings: bool) -> Option<String> {
        if pooler_settings && self.pooler_server.is_none() {
            return Some(
                "it changes PgBouncer's settings, which only locklab's own PgBouncer lets it do \
                 (run without --pg-url, or with --pooler)"
                    .into(),
            );
        }
        if through_pooler && self.pooled.is_none() {
            return Some(
                "it runs through a pooler: give yours with --pooler-url, or run without --pg-url"
                    .into(),
            );
        }
        None
    }

    /// Sets PgBouncer settings on locklab's own PgBouncer through its admin console; returns
    /// the values they had, to put back with another call.
    pub async fn set_pooler(
        &self,
        settings: &[(String, String)],
    ) -> anyhow::Result<Vec<(String, String)>> {
        let Some(admin) = self.pooler_admin() else {
            anyhow::bail!("this run has no PgBouncer of locklab's own");
        };
        let c = admin.connect(&self.app("pooler-admin")).await?;
        let mut before = Vec::new();
        for msg in c.simple_query("SHOW CONFIG").await? {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = msg
                && let (Some(k), Some(v)) = (r.get(0), r.get(1))
                && settings.iter().any(|(name, _)| name == k)
            {
                before.push((k.to_string(), v.to_string()));
            }
        }
        for (k, v) in settings {
            let value = v.replace('\'', "''");
            c.simple_query(&format!("SET {k} = '{value}'"))
                .await
                .with_context(|| format!("PgBouncer refused `{k} = {v}`"))?;
        }
        Ok(before)
    }

    /// The throwaway PgBouncer's URL.
    pub fn pooler_url(&self) -> Option<String> {
        self.pooler_server.as_ref().map(PoolerServer::url)
    }

    /// The throwaway PgBouncer's admin console.
    pub fn pooler_admin(&self) -> Option<PgTarget> {
        self.pooler_server.as_ref().map(PoolerServer::admin_target)
    }

    async fn setup_redis(&mut self, opts: &EnvOptions) -> anyhow::Result<()> {
        let prefix = format!("{}:", self.run_tag);
        let target = match &opts.redis_url {
            Some(url) => RedisTarget::new(url, &prefix),
            None => {
                let g = guardian_for(&mut self.guardian, &self.exe)?;
                let server = RedisServer::start(g)
                    .await
                    .context("could not start a throwaway Redis")?;
                let target = server.target(&prefix);
                self.redis_server = Some(server);
                target
            }
        };
        // Fails here, before any variant, on a wrong URL or password.
        target.connect().await?;
        self.redis = Some(target);
        Ok(())
    }

    /// Starts `scenario`'s worker process with `config` (see [`worker`]).
    pub async fn spawn_worker(
        &self,
        scenario: &str,
        config: &impl serde::Serialize,
    ) -> anyhow::Result<worker::Worker> {
        worker::Worker::spawn(&self.exe, scenario, config, self.guardian.clone(), None).await
    }

    /// As [`Self::spawn_worker`], inside a network namespace of the run's own.
    pub async fn spawn_worker_in(
        &self,
        netns: &netns::Netns,
        scenario: &str,
        config: &impl serde::Serialize,
    ) -> anyhow::Result<worker::Worker> {
        let handle = netns.handle()?;
        worker::Worker::spawn(
            &self.exe,
            scenario,
            config,
            self.guardian.clone(),
            Some(handle),
        )
        .await
    }

    /// The run's Redis, for scenarios that declared they need it.
    pub fn redis(&self) -> anyhow::Result<&RedisTarget> {
        self.redis
            .as_ref()
            .context("this scenario needs Redis, but the run was set up without it")
    }

    /// The throwaway Redis's URL, with its password.
    pub fn redis_url(&self) -> Option<String> {
        self.redis_server.as_ref().map(RedisServer::url)
    }

    /// The run's schema, and the server's release (for every table's header).
    async fn create_schema(&self) -> anyhow::Result<Option<String>> {
        use postgres::Sql as _;
        let admin = self.direct.connect(&self.app("admin")).await?;
        admin
            .batch_execute(&format!("CREATE SCHEMA \"{}\"", self.pg.schema))
            .await
            .with_context(|| {
                format!(
                    "could not create schema {} at {} (locklab needs CREATE on the database)",
                    self.pg.schema, self.pg.display
                )
            })?;
        let release = admin
            .one("SELECT current_setting('server_version')", &[])
            .await
            .ok()
            .and_then(|row| row.try_get::<_, String>(0).ok())
            // `15.8 (Debian 15.8-0+deb12u1)`: the release alone.
            .and_then(|v| v.split_whitespace().next().map(str::to_string));
        Ok(release)
    }

    /// An application_name of this run, e.g. `locklab_1a2b3c4d/booker`.
    pub fn app(&self, role: &str) -> String {
        format!("{}/{role}", self.run_tag)
    }

    /// The URL a person can paste into psql (throwaway servers only).
    pub fn pg_url(&self) -> Option<String> {
        self.pg_server.as_ref().map(PgServer::url)
    }

    /// The throwaway server's major version.
    pub fn pg_version(&self) -> Option<String> {
        self.pg_server.as_ref().map(|s| s.version.clone())
    }

    /// Ends every session this run opened, so nothing of ours holds a lock afterwards.
    pub async fn terminate_sessions(&self, role_prefix: &str) -> anyhow::Result<()> {
        // When the "server" is a PgBouncer (given as --pg-url), the sessions a previous call
        // ended may include idle server connections in its pool; the next client it links to
        // one is refused ("invalid server parameter": its SETs failed on a dead backend). A
        // fresh connection gets a live one.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let admin = self.direct.connect(&self.app("admin")).await?;
            match postgres::end_sessions_named(&admin, &self.app(role_prefix)).await {
                Ok(_) => return Ok(()),
                Err(_) if attempt < 3 => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e).context("could not end this run's sessions"),
            }
        }
    }

    /// Stops throwaway servers, or removes our schema from the user's server.
    pub async fn teardown(mut self) {
        if let Some(server) = self.pooler_server.as_mut() {
            server.stop().await;
        }
        if let Some(server) = self.redis_server.as_mut() {
            server.stop().await;
        } else if let Some(r) = &self.redis {
            let _ = r.remove_keys("").await;
        }
        if let Some(server) = self.pg_server.as_mut() {
            server.stop().await;
        } else {
            let _ = self.terminate_sessions("").await;
            if let Ok(admin) = self.direct.connect(&self.app("admin")).await {
                let _ = admin
                    .batch_execute(&format!(
                        "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                        self.pg.schema
                    ))
                    .await;
                // A step file's variants work in schemas of their own, named after the run's:
                // any a cut-off variant left behind goes too.
                let _ = admin
                    .batch_execute(&format!(
                        "DO $$ DECLARE s text; BEGIN FOR s IN SELECT nspname FROM pg_namespace \
                         WHERE nspname LIKE '{}\\_s%' LOOP EXECUTE format('DROP SCHEMA %I CASCADE', s); \
                         END LOOP; END $$",
                        self.pg.schema
                    ))
                    .await;
            }
        }
        if let Some(g) = self.guardian.take() {
            g.finish();
        }
    }
}
