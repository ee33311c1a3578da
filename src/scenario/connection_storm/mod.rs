//! connection-storm: orphan-lock's ghost (a booking frozen in its payment call with the row
//! locked) meets a fleet of serverless invocations, each on a fresh connection of its own,
//! retried by the platform when it fails, and the other endpoints that share the server's
//! connection slots. The checker decides from a probe on the row, the server's slot counts
//! (pg_stat_activity), the history and the server's CPU (/proc).
//!
//! Isolation: on a throwaway run each variant gets a PostgreSQL of its own, started with the
//! variant's `max_connections`, because the fault is the server's slot limit itself and the
//! run's shared server is sized for the run. The workload connects as a role without superuser,
//! so it meets the limit where an application does; locklab's own sessions (setup, observer,
//! probe) are the superuser's, which keeps them in when the slots are full. Against a user's
//! server (`--pg-url`), the storm fills what that server has free.
//!
//! Through a pooler (the `pooler-*` variants): a throwaway PgBouncer of the variant's own in
//! front of its server (or the user's pooler), transaction pooling at PgBouncer's default pool
//! size. The server's slots stay free; the pool's server connections are what the waiting
//! bookings pin, and the queue in the pooler is where the others wait (read from its admin
//! console, `SHOW POOLS`).

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use std::future::Future;

use anyhow::Context;
use tokio_postgres::Client;

use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun};
use crate::check::storm::METRICS;
use crate::env::postgres::{PgServer, PgTarget, end_sessions_named};
use crate::error::UsageError;

mod fleet;
mod storm;

use storm::*;

/// New connections a second, all kinds and retries together, past which a 2-core host
/// spends the run forking backends rather than showing the storm: the backends still exiting
/// outgrow any headroom a cap leaves. Measured on 2 cores: 1,400 a second (rate 40, 2
/// retries, others 20, time scale 0.1) held cap-only and mitigated 3 of 3; 2,280 (found by
/// `bench claims`) gave mitigated 53300s in 2 runs of 3.
const MAX_CONNECTS_PER_SECOND: f64 = 1500.0;

/// Sessions locklab opens on the storm's server besides the workload: setup, observer, probe,
/// the payment provider's, and each ghost with its provider session (two ghosts at most).
const OWN_SESSIONS: usize = 8;
/// Of those, opened after the workload's share of the slots is known: each ghost's two.
const OWN_SESSIONS_LATER: usize = 4;
/// The fewest slots the other endpoints need beside a capped storm: enough at the defaults'
/// 100 fresh connections a second (time scale 0.1).
const OTHERS_SLOTS: usize = 2;
/// Fresh connections a second one slot serves for the other endpoints, each open from fork to
/// exit: past 100 a second they need more than the two (found by `bench claims`: 440 a second
/// at time scale 0.05 got 53300s beside a cap that left them two).
const OTHERS_PER_SLOT: f64 = 50.0;
/// A capped invocation's connection, closed, holds its slot until its backend has exited,
/// while the next invocation already connects: slots in limbo beside the cap, in proportion
/// to it. Measured at the defaults (time scale 0.1, 89 workload slots): a cap of 73 (16 left)
/// failed 1 run in 3 with 53300s, 82 and 84 every run; 69 (20 left) held 4 of 4, and 65 (24
/// left) 7 of 7 on a throwaway and a 40-slot server; a scaled cap of 24 of 33 slots (9 left)
/// failed 1 in 3. A capped storm leaves the others' slots plus a third of its cap.
const LIMBO_PER_CAP: usize = 3;
/// The fewest slots a storm on a user's server needs to pile up in at all.
const STORM_SLOTS: usize = 12;

/// The role the workload connects as on a throwaway server: not a superuser, so the slots
/// reserved for superusers are not its to take.
const WORKLOAD_ROLE: &str = "locklab_app";

pub struct ConnectionStorm {
    max_connections: usize,
    /// Between booking arrivals, scaled.
    arrival: Duration,
    /// Between other endpoints' arrivals, scaled (`None`: no other traffic).
    others_arrival: Option<Duration>,
    retries: usize,
    immediate: bool,
    retry_base: Duration,
    cap: Option<usize>,
    /// Whether the workload goes through a pooler, and the others on a pool of their own.
    pooler: PoolerMode,
    /// PgBouncer's query_wait_timeout on the variant's own PgBouncer, scaled.
    query_wait_timeout: Duration,
    /// Slots the other endpoints' fresh connections need beside a capped storm.
    others_slots: usize,
    restart: Option<(Duration, Duration)>,
    payment_call: Duration,
    booker_payment: Duration,
    deadline: Duration,
}

impl Code for ConnectionStorm {
    const NAME: &'static str = "connection-storm";
    const FILE: &'static str = include_str!("../../../scenarios/connection-storm.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::count("max_connections", 20, 5000),
        ParamSpec::count("rate", 1, 100_000),
        ParamSpec::count("others_rate", 0, 100_000),
        ParamSpec::count("retries", 0, 20),
        ParamSpec::words("retry_policy", &["backoff", "immediate"]),
        ParamSpec::duration("retry_base", 1, HOUR_MS),
        ParamSpec::count("cap", 1, 100_000),
        ParamSpec::flag("capped"),
        ParamSpec::flag("restart"),
        ParamSpec::duration("restart_after", 1, HOUR_MS),
        ParamSpec::duration("relapse_after", 1, HOUR_MS),
        ParamSpec::duration("payment_call", 1, HOUR_MS),
        ParamSpec::duration("booker_payment", 0, HOUR_MS),
        ParamSpec::duration("idle_timeout", 1, HOUR_MS),
        ParamSpec::duration("lock_timeout", 1, HOUR_MS),
        ParamSpec::duration("statement_timeout", 1, HOUR_MS),
        ParamSpec::words("pooler", POOLERS),
        ParamSpec::duration("query_wait_timeout", 1, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = METRICS;
    // On a user's server the storm fills what is free; nothing the user sets makes it need more.
    const SIZED_BY: &'static str = "";

    fn config(p: &Params) -> Result<ConnectionStorm, UsageError> {
        let scale = p.time_scale;
        let (rate, others_rate) = (p.count("rate")? as f64, p.count("others_rate")? as f64);
        let retries = p.count("retries")?;
        let connects = ((rate * (retries + 1) as f64) + others_rate) / scale;
        if connects > MAX_CONNECTS_PER_SECOND {
            return Err(UsageError(format!(
                "rate {rate} and others_rate {others_rate} with {retries} retries at time scale \
                 {scale} ask for up to {connects:.0} new connections a second; this host cannot \
                 open more than {MAX_CONNECTS_PER_SECOND:.0} a second and still show the storm: \
                 lower --param rate or retries, or raise --time-scale"
            )));
        }
        let max_connections = p.count("max_connections")?;
        let capped = p.flag("capped")?;
        let cap = p.count("cap")?;
        // The cap leaves other endpoints their slots only below the workload's share.
        let slots = workload_slots(max_connections);
        let others_slots = others_slots(others_rate / scale);
        let headroom = headroom(cap, others_slots);
        if capped && cap + headroom > slots {
            return Err(UsageError(format!(
                "cap {cap} leaves the other endpoints too few connection slots: a server with \
                 max_connections {max_connections} has {slots} for the workload ({RESERVED} are \
                 reserved for superusers, {OWN_SESSIONS} are locklab's), and a capped storm \
                 of {cap} must leave {headroom} free ({others_slots} for the other endpoints' \
                 {:.0} connections a second, the rest for backends still exiting); lower \
                 --param cap to {} or less, or raise --param max_connections",
                others_rate / scale,
                most_cap(slots, others_slots)
            )));
        }
        let deadline = p.duration("deadline")?;
        if p.in_settings("idle_timeout") {
            let why = "the idle timeout could not free the row before the cut-off";
            p.deadline_outlasts(2, "idle_timeout", p.duration("idle_timeout")?, why)?;
        }
        let restart = match p.flag("restart")? {
            true => {
                let (after, relapse) = (p.duration("restart_after")?, p.duration("relapse_after")?);
                if after + relapse >= deadline {
                    return Err(UsageError(format!(
                        "restart_after + relapse_after ({}) must end before the deadline ({}): \
                         the relapse would never be seen",
                        humantime::format_duration(after + relapse),
                        humantime::format_duration(deadline)
                    )));
                }
                Some((after, relapse))
            }
            false => None,
        };
        let storm = ConnectionStorm {
            max_connections,
            arrival: Duration::from_secs_f64(scale / rate),
            others_arrival: (others_rate > 0.0)
                .then(|| Duration::from_secs_f64(scale / others_rate)),
            retries,
            immediate: p.switch("retry_policy", "immediate", "backoff")?,
            retry_base: p.duration("retry_base")?,
            cap: capped.then_some(cap),
            pooler: p.one_of("pooler", POOLER_MODES)?,
            query_wait_timeout: p.duration("query_wait_timeout")?,
            others_slots,
            restart,
            payment_call: p.duration("payment_call")?,
            booker_payment: p.duration("booker_payment")?,
            deadline,
        };
        storm.fills(
            slots,
            &format!("a server of max_connections {max_connections} gives the workload"),
        )?;
        Ok(storm)
    }

    fn unavailable(&self, env: &crate::env::Env) -> Option<String> {
        match self.pooler {
            PoolerMode::None => env.slots_missing(),
            mode => pooler_missing(mode, self.most_clients(), env),
        }
    }

    /// On a user's server `storm::size` scales the cap to the slots it has free, and lowers
    /// it where it would not leave its headroom: refused here only when no cap at all fits.
    fn fits(&self, capacity: &crate::env::postgres::Capacity) -> Result<(), UsageError> {
        let slots = (capacity.allows() as usize).saturating_sub(OWN_SESSIONS);
        if self.cap.is_none() {
            return self.fills(
                slots,
                &format!("this server has free ({})", capacity.explain()),
            );
        }
        match most_cap(slots, self.others_slots) > 0 {
            true => Ok(()),
            false => Err(UsageError(format!(
                "connection-storm's capped variants need {} free connection slots or more on \
                 the server (a cap of at least 1, {} left free for the other endpoints and \
                 backends still exiting, {OWN_SESSIONS} of locklab's own); it allows {} more \
                 ({}): free some slots or raise max_connections, or leave out the capped \
                 variants with --variant",
                1 + headroom(1, self.others_slots) + OWN_SESSIONS,
                headroom(1, self.others_slots),
                capacity.allows(),
                capacity.explain()
            ))),
        }
    }

    fn sessions(&self) -> usize {
        // On the run's own server: only against a user's server does the storm run there, and
        // then it fills whatever is free, given room for a storm at all.
        OWN_SESSIONS + STORM_SLOTS
    }

    fn weight(&self) -> usize {
        match self.pooler {
            // Its own server's slots, all taken, and its own sessions.
            PoolerMode::None => self.max_connections + OWN_SESSIONS,
            // Through a pooler the server sees the pools' connections only (the fleet's wait
            // in the pooler's queue, idle): at most PgBouncer's default pool size each.
            PoolerMode::Shared => crate::env::pgbouncer::DEFAULT_POOL_SIZE + OWN_SESSIONS,
            PoolerMode::Separate => 2 * crate::env::pgbouncer::DEFAULT_POOL_SIZE + OWN_SESSIONS,
        }
    }

    fn cpu(&self) -> super::Cpu {
        match self.pooler {
            // A storm forks a backend per connection attempt: most of a 2-core machine.
            PoolerMode::None => super::Cpu::Hog,
            // Through a pooler it forks none past the pool: PgBouncer takes the connections,
            // a third to four fifths of a core on average (1.2-3.1 CPU-s a 3.8 s run against
            // the direct storm's 4.9), and its windows are the pooler's and the server's
            // timeouts, like any timed run's.
            _ => super::Cpu::Timed,
        }
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        run(self, ctx)
    }
}

/// A throwaway server's slots reserved for superusers (PostgreSQL's default).
const RESERVED: usize = 3;

/// The slots a throwaway server of `max_connections` leaves the workload.
/// Slots a storm capped at `cap` leaves free: the other endpoints' and those in limbo.
fn headroom(cap: usize, others_slots: usize) -> usize {
    others_slots + cap.div_ceil(LIMBO_PER_CAP)
}

/// The other endpoints' slots at `per_second` fresh connections a second (real time).
fn others_slots(per_second: f64) -> usize {
    OTHERS_SLOTS.max((per_second / OTHERS_PER_SLOT).ceil() as usize)
}

/// Whether the storm runs through a pooler, and how its pools are shared.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PoolerMode {
    /// Straight to the server: each invocation a server connection of its own.
    None,
    /// Through a pooler, bookings and the other endpoints on the same pool.
    Shared,
    /// Through a pooler, the other endpoints on a pool of their own.
    Separate,
}

// The `pooler` parameter's words.
crate::scenario::spec::words!(POOLERS, POOLER_MODES: PoolerMode = {
    "none" => PoolerMode::None,
    "shared" => PoolerMode::Shared,
    "separate" => PoolerMode::Separate,
});

/// Why a variant through a pooler cannot run here: a throwaway server needs pgbouncer
/// installed; a user's server needs the user's pooler (and a second pool of it, to keep the
/// others apart), and a path straight to the server for locklab's probe and observers.
fn pooler_missing(mode: PoolerMode, clients: usize, env: &crate::env::Env) -> Option<String> {
    if !env.on_users_server() {
        return crate::env::pgbouncer::find_binary()
            .err()
            .map(|e| format!("it runs through a PgBouncer of its own: {e:#}"));
    }
    if let Some(why) = env.direct_path_missing() {
        return Some(why);
    }
    if env.pooled.is_none() {
        return Some(
            "it runs the storm through a pooler: give yours with --pooler-url (and the server \
             behind it as --pg-url), or run without --pg-url for a throwaway PgBouncer"
                .into(),
        );
    }
    if let Some(max) = env.users_pooler_max_clients
        && max < clients
    {
        return Some(format!(
            "your pooler's max_client_conn ({max}) is below the clients the fleet may open at \
             once (up to {clients}): it would refuse them at connect, for every pool alike, \
             which these variants do not model: raise max_client_conn, or lower --param rate \
             or --param others_rate"
        ));
    }
    if mode == PoolerMode::Separate && env.pooled_others.is_none() {
        return Some(
            "it puts the other endpoints on a pool of their own: give a second pool of your \
             pooler with --pooler-others-url (another database alias or user of the same server)"
                .into(),
        );
    }
    None
}

/// The largest cap that leaves its headroom free of `slots`.
fn most_cap(slots: usize, others_slots: usize) -> usize {
    (1..=slots)
        .rev()
        .find(|c| c + headroom(*c, others_slots) <= slots)
        .unwrap_or(0)
}

fn workload_slots(max_connections: usize) -> usize {
    max_connections.saturating_sub(RESERVED + OWN_SESSIONS)
}

impl ConnectionStorm {
    fn workload_slots(&self) -> usize {
        workload_slots(self.max_connections).max(1)
    }

    /// The most clients the fleet may have open at once: every invocation that arrives before
    /// the cut-off (each on one connection at a time), and room for locklab's own.
    fn most_clients(&self) -> usize {
        let arrivals =
            |every: Duration| (self.deadline.as_secs_f64() / every.as_secs_f64()) as usize;
        arrivals(self.arrival) + self.others_arrival.map_or(0, arrivals) + 50
    }

    /// Straight to the server and uncapped, the storm is the bookings filling every slot, each
    /// holding its own behind the row: the fleet must bring at least twice the slots' worth
    /// before the cut-off (found by `bench claims`: 6 a second for 30 s against 191 slots never
    /// filled them, and the baseline's 53300 never came). `slots` is what `whose` has.
    fn fills(&self, slots: usize, whose: &str) -> Result<(), UsageError> {
        let bookings = self.deadline.as_secs_f64() / self.arrival.as_secs_f64();
        if self.pooler != PoolerMode::None || self.cap.is_some() || bookings >= 2.0 * slots as f64 {
            return Ok(());
        }
        Err(UsageError(format!(
            "rate × deadline ({bookings:.0} bookings) must reach twice the {slots} connection \
             slots {whose}: the fleet could not fill them before the cut-off (raise --param rate \
             or --param deadline, or give the storm fewer slots)"
        )))
    }
}

/// Where the storm runs: a server of its own, or the user's.
struct Servers {
    own: Option<PgServer>,
    /// locklab's sessions: the superuser on a throwaway server.
    admin: PgTarget,
    /// The workload's role, straight to the server: its tables, and the slots it may take.
    workload: PgTarget,
    /// The pooler the bookings and the others go through, for the `pooler-*` variants.
    pooler: Option<StormPooler>,
}

impl Servers {
    /// The bookings' path: through the pooler where there is one.
    fn book(&self) -> &PgTarget {
        self.pooler.as_ref().map_or(&self.workload, |p| &p.book)
    }

    /// The other endpoints' path: their own pool, the bookings' pool, or the server.
    fn others(&self) -> &PgTarget {
        self.pooler.as_ref().map_or(&self.workload, |p| &p.others)
    }
}

/// A pooler in front of the storm's server.
struct StormPooler {
    /// A PgBouncer of the variant's own (stopped with it); `None`: the user's.
    own: Option<crate::env::pgbouncer::PoolerServer>,
    book: PgTarget,
    others: PgTarget,
    /// Its admin console, or why its own figures cannot be read.
    admin: Result<PgTarget, String>,
    pools: crate::observe::pooler::Pools,
}

/// The pooler for a `pooler-*` variant: a PgBouncer of its own in front of `own` (PgBouncer's
/// default pool size, room for every client the fleet may open, `query_wait_timeout` scaled),
/// or the user's from --pooler-url.
async fn storm_pooler(
    cfg: &ConnectionStorm,
    ctx: &VariantCtx<'_>,
    own: Option<&PgServer>,
) -> anyhow::Result<Option<StormPooler>> {
    use crate::env::pgbouncer::OTHERS_DATABASE;
    use crate::observe::pooler::Pools;
    if cfg.pooler == PoolerMode::None {
        return Ok(None);
    }
    let separate = cfg.pooler == PoolerMode::Separate;
    let schema = &ctx.env.pg.schema;
    // Every client the fleet may open is a socket here, and one in a PgBouncer of our own,
    // which inherits this process's limit.
    let clients = cfg.most_clients();
    crate::env::process::ensure_open_files(clients as u64 + 512).map_err(UsageError)?;
    let Some(server) = own else {
        let (Some(book), others) = (ctx.env.pooled.clone(), ctx.env.pooled_others.clone()) else {
            anyhow::bail!("no pooler to run through (see --pooler-url)");
        };
        let others = match separate {
            true => others.context("no second pool (see --pooler-others-url)")?,
            false => book.clone(),
        };
        // The pool PgBouncer lists: the database as connected to (the user's name where the
        // URL names none, as libpq does), and the user.
        let db = |t: &PgTarget| -> anyhow::Result<(String, String)> {
            let c = t.config("")?;
            let user = c.get_user().unwrap_or_default().to_string();
            let db = c.get_dbname().map_or_else(|| user.clone(), str::to_string);
            Ok((db, user))
        };
        let pools = Pools {
            workload: db(&book)?,
            others: separate.then(|| db(&others)).transpose()?,
        };
        let admin = ctx.env.users_pooler_admin.clone().ok_or_else(|| {
            "no admin console given: give it with --pooler-admin-url for the pooler's own \
             figures"
                .to_string()
        });
        return Ok(Some(StormPooler {
            own: None,
            book,
            others,
            admin,
            pools,
        }));
    };
    // PgBouncer's default pool size, or each pool's share of the server's slots where they
    // would not all fit (a pool the server refuses connections would starve, not pin).
    let pools = 1 + usize::from(separate);
    let pool_size = crate::env::pgbouncer::DEFAULT_POOL_SIZE.min(cfg.workload_slots() / pools);
    let settings = [
        (
            "default_pool_size".to_string(),
            pool_size.max(1).to_string(),
        ),
        (
            "query_wait_timeout".to_string(),
            format!("{:.3}", cfg.query_wait_timeout.as_secs_f64()),
        ),
        // Hundreds of fresh connections a second: SCRAM's key stretching would make the
        // pooler's one thread the bottleneck (see `pgbouncer::defaults`).
        ("auth_type".to_string(), "md5".to_string()),
    ];
    // The user's --pooler-setting after the storm's: a later setting replaces an earlier one
    // of the same name (see `pgbouncer::merged`).
    let settings: Vec<_> = settings
        .into_iter()
        .chain(ctx.env.pooler_settings.iter().cloned())
        .collect();
    let bouncer = ctx.env.start_own_pooler(server, clients, &settings).await?;
    let book = bouncer.target(schema);
    let others = match separate {
        true => bouncer.others_target(schema),
        false => book.clone(),
    };
    Ok(Some(StormPooler {
        admin: Ok(bouncer.admin_target()),
        own: Some(bouncer),
        book,
        others,
        pools: Pools {
            workload: ("postgres".into(), "locklab".into()),
            others: separate.then(|| (OTHERS_DATABASE.to_string(), "locklab".into())),
        },
    }))
}

async fn servers(cfg: &ConnectionStorm, ctx: &VariantCtx<'_>) -> anyhow::Result<Servers> {
    let schema = ctx.env.pg.schema.clone();
    let settings = [(
        "max_connections".to_string(),
        cfg.max_connections.to_string(),
    )];
    let setup = format!(
        "CREATE ROLE {WORKLOAD_ROLE} LOGIN; \
         CREATE SCHEMA \"{schema}\" AUTHORIZATION {WORKLOAD_ROLE};"
    );
    match ctx.own_pg(&settings, false, Some(&setup)).await {
        Some(own) => {
            let server = own
                .context("could not create the storm's role and schema")?
                .server;
            let admin = server.target(&schema);
            let pooler = match storm_pooler(cfg, ctx, Some(&server)).await {
                Ok(p) => p,
                Err(e) => {
                    let mut server = server;
                    server.stop().await;
                    return Err(e);
                }
            };
            Ok(Servers {
                workload: server.target_as(WORKLOAD_ROLE, &schema),
                admin,
                own: Some(server),
                pooler,
            })
        }
        None => Ok(Servers {
            own: None,
            admin: ctx.env.direct.clone(),
            workload: ctx.env.direct.clone(),
            pooler: storm_pooler(cfg, ctx, None).await?,
        }),
    }
}

/// The other endpoints' tables: nothing a booking locks.
fn others_ddl(workload: &PgTarget) -> String {
    let (flights, check_ins) = (workload.table("flights"), workload.table("check_ins"));
    format!(
        "DROP TABLE IF EXISTS {flights}, {check_ins}; \
         CREATE TABLE {flights} (id int PRIMARY KEY, origin text, destination text); \
         INSERT INTO {flights} SELECT i, 'O' || (i % 10), 'D' || (i % 7) FROM generate_series(1, 200) i; \
         CREATE TABLE {check_ins} (passenger text PRIMARY KEY, flight_id int, seat text); \
         INSERT INTO {check_ins} SELECT 'p' || i, i % 200 + 1, (i % 30) || 'A' FROM generate_series(1, 500) i;"
    )
}

/// Ends the storm's sessions whose application_name starts with `prefix`, from `admin`'s.
async fn end_sessions(admin: &Client, prefix: &str) -> anyhow::Result<()> {
    end_sessions_named(admin, prefix)
        .await
        .context("could not end the storm's sessions")?;
    Ok(())
}

static TOLD_SLOTS: AtomicBool = AtomicBool::new(false);

async fn run(cfg: &ConnectionStorm, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let mut servers = servers(cfg, ctx).await?;
    let result = storm(cfg, ctx, &mut servers).await;
    if let Some(bouncer) = servers.pooler.as_mut().and_then(|p| p.own.as_mut()) {
        bouncer.stop().await;
    }
    match servers.own.as_mut() {
        Some(server) => server.stop().await,
        // Whatever of the variant's is left (a holder's provider session, say), in one go.
        None => {
            let _ = ctx.terminate_sessions("").await;
        }
    }
    result
}
