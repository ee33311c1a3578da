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

use crate::env::postgres::Sql as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use std::future::Future;

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_postgres::{Client, Config, NoTls};
use tokio_util::sync::CancellationToken;

use super::orphan_lock::{Booking, HolderConfig, Prober, spawn_holder, wait_until_probe_queued};
use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun};
use crate::check::storm::{METRICS, Observations, Restart, THROTTLED, kind};
use crate::env::postgres::{PgServer, PgTarget, end_sessions_named};
use crate::error::UsageError;
use crate::fault::{Fault, Victim};
use crate::history::{Clock, History, Op, Outcome, class};
use crate::observe::cpu;
use crate::observe::pg_slots::SlotWatcher;
use crate::workload::OpError;

/// New connections a second, all kinds and retries together, past which a 2-core host
/// spends the run forking refused backends rather than showing the storm.
const MAX_CONNECTS_PER_SECOND: f64 = 3000.0;

/// Sessions locklab opens on the storm's server besides the workload: setup, observer, probe,
/// the payment provider's, and each ghost with its provider session (two ghosts at most).
const OWN_SESSIONS: usize = 8;
/// Of those, opened after the workload's share of the slots is known: each ghost's two.
const OWN_SESSIONS_LATER: usize = 4;
/// The fewest slots the other endpoints need beside a capped storm.
const OTHERS_SLOTS: usize = 2;
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
    restart: Option<(Duration, Duration)>,
    payment_call: Duration,
    booker_payment: Duration,
    deadline: Duration,
}

impl Code for ConnectionStorm {
    const NAME: &'static str = "connection-storm";
    const FILE: &'static str = include_str!("../../scenarios/connection-storm.toml");
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
        if capped && cap + OTHERS_SLOTS > slots {
            return Err(UsageError(format!(
                "cap {cap} leaves the other endpoints no connection slots: a server with \
                 max_connections {max_connections} has {slots} for the workload ({RESERVED} are \
                 reserved for superusers, {OWN_SESSIONS} are locklab's); lower --param cap to {} \
                 or less, or raise --param max_connections",
                slots.saturating_sub(OTHERS_SLOTS)
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
        Ok(ConnectionStorm {
            max_connections,
            arrival: Duration::from_secs_f64(scale / rate),
            others_arrival: (others_rate > 0.0)
                .then(|| Duration::from_secs_f64(scale / others_rate)),
            retries,
            immediate: p.switch("retry_policy", "immediate", "backoff")?,
            retry_base: p.duration("retry_base")?,
            cap: capped.then_some(cap),
            restart,
            payment_call: p.duration("payment_call")?,
            booker_payment: p.duration("booker_payment")?,
            deadline,
        })
    }

    fn unavailable(&self, env: &crate::env::Env) -> Option<String> {
        env.slots_missing()
    }

    fn sessions(&self) -> usize {
        // On the run's own server: only against a user's server does the storm run there, and
        // then it fills whatever is free, given room for a storm at all.
        OWN_SESSIONS + STORM_SLOTS
    }

    fn weight(&self) -> usize {
        // Its own server's slots, all taken, and its own sessions.
        self.max_connections + OWN_SESSIONS
    }

    fn cpu(&self) -> super::Cpu {
        // A storm forks a backend per connection attempt: most of a 2-core machine.
        super::Cpu::Hog
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
fn workload_slots(max_connections: usize) -> usize {
    max_connections.saturating_sub(RESERVED + OWN_SESSIONS)
}

impl ConnectionStorm {
    fn workload_slots(&self) -> usize {
        workload_slots(self.max_connections).max(1)
    }
}

/// Where the storm runs: a server of its own, or the user's.
struct Servers {
    own: Option<PgServer>,
    /// locklab's sessions: the superuser on a throwaway server.
    admin: PgTarget,
    /// The workload's path.
    workload: PgTarget,
}

async fn servers(cfg: &ConnectionStorm, ctx: &VariantCtx<'_>) -> anyhow::Result<Servers> {
    let schema = ctx.env.pg.schema.clone();
    let settings = [(
        "max_connections".to_string(),
        cfg.max_connections.to_string(),
    )];
    match ctx.env.start_own_pg(&settings).await {
        Some(server) => {
            let server = server?;
            let admin = server.target(&schema);
            let setup = async {
                let c = admin.connect(&ctx.app("admin")).await?;
                c.batch_execute(&format!(
                    "CREATE ROLE {WORKLOAD_ROLE} LOGIN; \
                     CREATE SCHEMA \"{schema}\" AUTHORIZATION {WORKLOAD_ROLE};"
                ))
                .await
                .context("could not create the storm's role and schema")?;
                anyhow::Ok(())
            };
            if let Err(e) = setup.await {
                let mut server = server;
                server.stop().await;
                return Err(e);
            }
            Ok(Servers {
                workload: server.target_as(WORKLOAD_ROLE, &schema),
                admin,
                own: Some(server),
            })
        }
        None => Ok(Servers {
            own: None,
            admin: ctx.env.direct.clone(),
            workload: ctx.env.direct.clone(),
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

/// Every attempt of every invocation, as it happens.
#[derive(Clone, Default)]
struct Recorder(Arc<std::sync::Mutex<Vec<Op>>>);

impl Recorder {
    fn start(&self, client: usize, kind: &'static str, clock: Clock) -> Option<usize> {
        let mut ops = self.0.lock().ok()?;
        ops.push(Op {
            client,
            kind: kind.into(),
            start_ms: clock.now_ms(),
            end_ms: None,
            outcome: Outcome::Unknown,
        });
        Some(ops.len() - 1)
    }

    fn end(&self, at: Option<usize>, clock: Clock, result: Result<(), OpError>) {
        let (Some(i), Ok(mut ops)) = (at, self.0.lock()) else {
            return;
        };
        if let Some(op) = ops.get_mut(i) {
            op.end_ms = Some(clock.now_ms());
            op.outcome = match result {
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::Error { class: e.class },
            };
        }
    }

    fn history(&self) -> History {
        let mut ops = self.0.lock().map(|o| o.clone()).unwrap_or_default();
        ops.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        History {
            ops,
            lost_clients: Vec::new(),
        }
    }
}

/// A count that remembers its peak.
#[derive(Default)]
struct Gauge {
    now: AtomicU64,
    max: AtomicU64,
}

impl Gauge {
    fn up(&self) -> GaugeGuard<'_> {
        let n = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.max.fetch_max(n, Ordering::Relaxed);
        GaugeGuard(self)
    }
    fn peak(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every invocation shares.
struct Fleet {
    /// Bookings through so far, for the progress bar.
    booked: Arc<std::sync::atomic::AtomicUsize>,
    /// The workload's connection settings; each attempt names itself.
    config: Config,
    app_prefix: String,
    booking: Booking,
    flights: String,
    check_ins: String,
    booker_payment: Duration,
    retries: usize,
    immediate: bool,
    retry_base: Duration,
    cap: Option<Semaphore>,
    clock: Clock,
    /// No attempt starts after this.
    deadline: Instant,
    /// Attempts still in flight now are cut off (their outcome unknown).
    hard_end: Instant,
    cancel: CancellationToken,
    record: Recorder,
    executing: Gauge,
    in_flight: Gauge,
    invocations: AtomicU64,
    /// Every connect passes this door; the relapse closes it for the moment its ghost takes a
    /// slot, so that the ghost's start never depends on winning a race with the fleet.
    door: tokio::sync::RwLock<()>,
}

impl Fleet {
    /// A fresh connection, as a serverless invocation opens (`max: 1`).
    async fn connect(&self, role: &str) -> Result<Client, OpError> {
        let _door = self.door.read().await;
        let mut config = self.config.clone();
        config.application_name(format!("{}{role}", self.app_prefix));
        let (client, conn) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// The seed's booking: BEGIN, take a seat (the row lock), the payment call, INSERT, COMMIT.
    async fn book_once(&self, passenger: &str) -> Result<(), OpError> {
        let c = self.connect("book").await?;
        self.booking.begin(&c).await?;
        if self.booking.take_seat(&c).await?.is_none() {
            return Err(OpError::new(class::SOLD_OUT));
        }
        tokio::time::sleep(self.booker_payment).await;
        self.booking.record(&c, passenger).await?;
        c.batch_execute("COMMIT").await?;
        Ok(())
    }

    async fn other_once(&self, kind: &'static str, n: usize) -> Result<(), OpError> {
        let c = self.connect(kind).await?;
        if kind == kind::SEARCH {
            c.rows(
                &format!(
                    "SELECT id, destination FROM {} WHERE origin = $1 ORDER BY id LIMIT 20",
                    self.flights
                ),
                &[&format!("O{}", n % 10)],
            )
            .await?;
        } else {
            c.rows(
                &format!(
                    "SELECT flight_id, seat FROM {} WHERE passenger = $1",
                    self.check_ins
                ),
                &[&format!("p{}", n % 500 + 1)],
            )
            .await?;
        }
        Ok(())
    }

    /// Runs `attempt` unless the run is over; records it. `None`: cut off mid-flight.
    async fn attempt<F: Future<Output = Result<(), OpError>>>(
        &self,
        client: usize,
        kind: &'static str,
        attempt: F,
    ) -> Option<Result<(), OpError>> {
        let at = self.record.start(client, kind, self.clock);
        let result = tokio::select! {
            r = attempt => Some(r),
            _ = tokio::time::sleep_until(self.hard_end) => None,
            _ = self.cancel.cancelled() => None,
        };
        if let Some(r) = &result {
            self.record.end(at, self.clock, r.clone());
        }
        result
    }

    /// One booking invocation: attempts until one books, the platform's retries are used up,
    /// or the run ends.
    async fn booking_invocation(self: Arc<Self>, id: usize) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let _alive = self.in_flight.up();
        for attempt in 0..=self.retries {
            if Instant::now() >= self.deadline || self.cancel.is_cancelled() {
                return;
            }
            let permit = match &self.cap {
                Some(cap) => match cap.try_acquire() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        let at = self.record.start(id, kind::BOOK, self.clock);
                        self.record
                            .end(at, self.clock, Err(OpError::new(THROTTLED)));
                        self.backoff(attempt).await;
                        continue;
                    }
                },
                None => None,
            };
            let executing = self.executing.up();
            let passenger = format!("p{id}-{attempt}");
            let result = self
                .attempt(id, kind::BOOK, self.book_once(&passenger))
                .await;
            drop((executing, permit));
            match result {
                Some(Ok(())) => {
                    self.booked.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                None => return,
                Some(Err(_)) => self.backoff(attempt).await,
            }
        }
    }

    async fn backoff(&self, attempt: usize) {
        if self.immediate || attempt >= self.retries {
            return;
        }
        let base = self.retry_base.mul_f64(2f64.powi(attempt as i32));
        let wait = base.mul_f64(0.5 + rand::random::<f64>());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.cancel.cancelled() => {}
        }
    }

    async fn other_invocation(self: Arc<Self>, id: usize) {
        let kind = if id.is_multiple_of(2) {
            kind::SEARCH
        } else {
            kind::CHECK_IN
        };
        self.attempt(id, kind, self.other_once(kind, id)).await;
    }
}

/// Starts `invocation` every `every` until the deadline; returns the tasks started.
async fn arrivals(
    fleet: &Arc<Fleet>,
    every: Duration,
    invocation: fn(Arc<Fleet>, usize) -> futures::future::BoxFuture<'static, ()>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut next = Instant::now();
    while next < fleet.deadline && !fleet.cancel.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = fleet.cancel.cancelled() => break,
        }
        tasks.push(tokio::spawn(invocation(fleet.clone(), tasks.len())));
        next += every;
    }
    tasks
}

/// The outage's CPU shares, taken once: when the row is free again, just before a restart, or
/// at the cut-off, whichever comes first.
struct CpuWindow {
    server: Option<(u32, cpu::Window)>,
    harness: Option<cpu::Window>,
    taken: std::sync::Mutex<Option<(Option<f64>, Option<f64>)>>,
}

impl CpuWindow {
    fn start(server_pid: Option<u32>) -> CpuWindow {
        CpuWindow {
            server: server_pid
                .and_then(|pid| Some((pid, cpu::Window::start(cpu::tree_ticks(pid))?))),
            harness: cpu::Window::start(cpu::self_ticks()),
            taken: std::sync::Mutex::new(None),
        }
    }

    fn close(&self) {
        let Ok(mut taken) = self.taken.lock() else {
            return;
        };
        if taken.is_none() {
            let server = self
                .server
                .and_then(|(pid, w)| w.share_pct(cpu::tree_ticks(pid)));
            let harness = self.harness.and_then(|w| w.share_pct(cpu::self_ticks()));
            *taken = Some((server, harness));
        }
    }

    fn shares(&self) -> (Option<f64>, Option<f64>) {
        self.close();
        self.taken
            .lock()
            .ok()
            .and_then(|t| *t)
            .unwrap_or((None, None))
    }
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
    match servers.own.as_mut() {
        Some(server) => server.stop().await,
        // Whatever of the variant's is left (a holder's provider session, say), in one go.
        None => {
            let _ = ctx.terminate_sessions("").await;
        }
    }
    result
}

async fn storm(
    cfg: &ConnectionStorm,
    ctx: &VariantCtx<'_>,
    servers: &mut Servers,
) -> anyhow::Result<VariantRun> {
    let env = ctx.env;
    let (admin_target, workload) = (servers.admin.clone(), servers.workload.clone());
    let booking = Booking::new(&workload, &ctx.variant.settings);
    let admin = admin_target.connect(&ctx.app("admin")).await?;
    admin
        .batch_execute(&format!(
            "{} {}",
            booking.ddl(1_000_000),
            others_ddl(&workload)
        ))
        .await
        .context("could not create the scenario's tables")?;
    if servers.own.is_some() {
        admin
            .batch_execute(&format!(
                "GRANT ALL ON ALL TABLES IN SCHEMA \"{s}\" TO {WORKLOAD_ROLE}; \
                 GRANT ALL ON ALL SEQUENCES IN SCHEMA \"{s}\" TO {WORKLOAD_ROLE};",
                s = workload.schema
            ))
            .await
            .context("could not grant the workload its tables")?;
    }

    let clock = Clock::start();
    let watcher =
        SlotWatcher::start(&admin_target, &ctx.app("observer"), clock, &ctx.app("w/")).await?;
    let probe_app = ctx.app("probe");
    let prober = Prober::connect(&admin_target, &probe_app, &booking).await?;

    // What the workload may open: at this many connections in all, the next gets 53300.
    let capacity = workload.capacity(&ctx.app("capacity")).await?;
    let usable_slots = capacity.in_use + capacity.allows();
    // The cap is a share of the workload's slots: as given on a server of `max_connections`,
    // the same share of what a user's server has free.
    let workload_slots = (capacity.allows() as usize).saturating_sub(OWN_SESSIONS_LATER);
    let share = cfg.cap.map(|cap| cap as f64 / cfg.workload_slots() as f64);
    let cap = share.map(|share| match servers.own {
        Some(_) => cfg.cap.unwrap_or(1),
        None => ((share * workload_slots as f64) as usize).max(1),
    });
    if let Some(cap) = cap
        && cap + OTHERS_SLOTS > workload_slots
    {
        watcher.finish().await;
        return Err(UsageError(format!(
            "a cap of {cap} leaves the other endpoints no connection slots at {}: the workload \
             may open {workload_slots} ({}; {OWN_SESSIONS_LATER} more are locklab's); lower \
             --param cap",
            workload.display,
            capacity.explain()
        ))
        .into());
    }
    crate::env::process::ensure_open_files(usable_slots as u64 + 512).map_err(UsageError)?;
    if servers.own.is_none() && !TOLD_SLOTS.swap(true, Ordering::Relaxed) {
        crate::say!(
            "note: connection-storm fills the free connection slots of {} ({} of max_connections \
             {}) for up to {} a variant: its other clients may be refused meanwhile",
            workload.display,
            capacity.allows(),
            capacity.max_connections,
            humantime::format_duration(cfg.deadline + cfg.deadline / 5)
        );
    }

    // The frozen holders, ended (killed) whatever happens.
    let victims = std::sync::Mutex::new(Vec::<Victim>::new());
    let keep = |v: Victim| {
        if let Ok(mut vs) = victims.lock() {
            vs.push(v);
        }
    };
    let outcome = async {
        let holder = |app: &str| {
            HolderConfig::new(
                workload.clone(),
                admin_target.clone(),
                ctx.app(app),
                ctx.variant.settings.clone(),
                cfg.payment_call,
            )
        };
        let (mut ghost, _) = spawn_holder(env, None, holder("w/holder")).await?;
        let locked_before_fault = prober.try_now().await?.is_none();
        let frozen = ghost.inject(Fault::Freeze);
        keep(ghost);
        frozen?;
        let fault_ms = clock.now_ms();
        let cpu = CpuWindow::start(servers.own.as_ref().map(PgServer::pid));
        let deadline = Instant::now() + cfg.deadline;
        let hard_end = deadline + cfg.deadline / 5;

        let released = Arc::new(std::sync::Mutex::new(None::<f64>));
        let probe_task = {
            let (cancel, released) = (ctx.cancel.clone(), released.clone());
            tokio::spawn(async move {
                let freed = prober.wait_free(hard_end, cancel).await;
                if let Ok(Some(_)) = freed
                    && let Ok(mut r) = released.lock()
                {
                    r.get_or_insert(clock.now_ms());
                }
                freed
            })
        };
        wait_until_probe_queued(&admin, &probe_app, &probe_task).await;

        let mut config = workload.config("")?;
        config.connect_timeout(Duration::from_secs(5));
        let (booked, ticker) = ctx.progress_counter(" booked".into());
        let fleet = Arc::new(Fleet {
            booked,
            config,
            app_prefix: ctx.app("w/"),
            booking: Booking::new(&workload, &ctx.variant.settings),
            flights: workload.table("flights"),
            check_ins: workload.table("check_ins"),
            booker_payment: cfg.booker_payment,
            retries: cfg.retries,
            immediate: cfg.immediate,
            retry_base: cfg.retry_base,
            cap: cap.map(Semaphore::new),
            clock,
            deadline,
            hard_end,
            cancel: ctx.cancel.clone(),
            record: Recorder::default(),
            executing: Gauge::default(),
            in_flight: Gauge::default(),
            invocations: AtomicU64::new(0),
            door: tokio::sync::RwLock::new(()),
        });
        let bookings = arrivals(&fleet, cfg.arrival, |f, id| Box::pin(f.booking_invocation(id)));
        let others = async {
            match cfg.others_arrival {
                Some(every) => arrivals(&fleet, every, |f, id| Box::pin(f.other_invocation(id))).await,
                None => Vec::new(),
            }
        };
        let restart = async {
            let Some((after, relapse)) = cfg.restart else {
                return anyhow::Ok(None);
            };
            let at = deadline - cfg.deadline + after;
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = ctx.cancel.cancelled() => return Ok(None),
            }
            cpu.close();
            let at_ms = clock.now_ms();
            if let Ok(mut r) = released.lock() {
                r.get_or_insert(at_ms);
            }
            match servers.own.as_mut() {
                Some(server) => server.restart().await?,
                // Stands in for a restart on a server that is not locklab's to restart.
                None => end_sessions(&admin, &ctx.app("w/")).await?,
            }
            tokio::select! {
                _ = tokio::time::sleep_until(Instant::now().max(at) + relapse) => {}
                _ = ctx.cancel.cancelled() => return Ok(Some(Restart { at_ms, relapse_at_ms: None })),
            }
            // The next slow payment call, with the same code: it freezes holding the row. The
            // fleet's connects wait at the door meanwhile: with the slots (or the role's limit)
            // full, the ghost would otherwise start only if it won a race for a freed slot.
            let door = fleet.door.write().await;
            let next = spawn_holder(env, None, holder("w/holder-2")).await;
            drop(door);
            let (mut next, _) = next?;
            let relapse_at_ms = clock.now_ms();
            let frozen = next.inject(Fault::Freeze);
            keep(next);
            frozen?;
            anyhow::Ok(Some(Restart {
                at_ms,
                relapse_at_ms: Some(relapse_at_ms),
            }))
        };
        let (bookings, others, restart) = tokio::join!(bookings, others, restart);
        for t in bookings.into_iter().chain(others) {
            let _ = t.await;
        }
        drop(ticker);
        cpu.close();
        let restart = restart?;
        let freed = probe_task.await.context("the probe task failed")?;
        if restart.is_none() {
            freed?;
        }
        let end_ms = clock.now_ms();
        let history = fleet.record.history();
        let cut_off = history.ops.iter().any(|o| o.outcome == Outcome::Unknown)
            || released.lock().map(|r| r.is_none()).unwrap_or(true);
        anyhow::Ok((fleet, history, restart, cpu.shares(), locked_before_fault, fault_ms, end_ms, cut_off, released))
    }
    .await;
    // On the session already open: with the slots full, a new one would be refused.
    let ended = end_sessions(&admin, &ctx.app("w/")).await;
    let frozen: Vec<Victim> = victims
        .lock()
        .map(|mut vs| vs.drain(..).collect())
        .unwrap_or_default();
    for v in frozen {
        v.end().await;
    }
    let samples = watcher.finish().await;
    if servers.own.is_none() {
        ended?;
    }
    let (
        fleet,
        history,
        restart,
        (db_cpu, harness_cpu),
        locked_before_fault,
        fault_ms,
        end_ms,
        cut_off,
        released,
    ) = outcome?;
    // After a restart the setup session is gone: count on a fresh one.
    let counter = admin_target.connect(&ctx.app("admin")).await?;
    let (committed, _) = booking.tally(&counter, "%").await?;
    let released_ms = released.lock().ok().and_then(|r| *r);
    Ok(VariantRun::checked(
        &clock,
        history,
        crate::check::Input::ConnectionStorm(Observations {
            cut_off,
            fault_ms,
            released_ms,
            locked_before_fault,
            end_ms,
            samples,
            max_connections: capacity.max_connections,
            usable_slots,
            invocations: fleet.invocations.load(Ordering::Relaxed),
            max_concurrent: fleet.executing.peak(),
            max_in_flight: fleet.in_flight.peak(),
            bookings_committed: committed,
            db_cpu_pct: db_cpu,
            harness_cpu_pct: harness_cpu,
            restart,
            runtime_cap: cap,
        }),
    ))
}
