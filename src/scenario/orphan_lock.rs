//! orphan-lock: a booking holder locks the flight's inventory row, goes off to "call the
//! payment provider", and never comes back (frozen, killed, or its task aborted). Meanwhile
//! booking clients queue on the row. The checker decides from a probe session and from
//! pg_stat_activity how long the row stayed locked and what the clients got.

use crate::env::postgres::Sql as _;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use anyhow::Context;
use tokio::time::Instant;
use tokio_postgres::Client;

use super::booking::holder::*;
use super::booking::{self, *};
use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun, Window};
use crate::check::orphan_lock::{METRICS, Observations, Probe};
use crate::env::worker::WorkerIo;
use crate::error::UsageError;
use crate::fault::{Fault, Victim};
use crate::history::Clock;
use crate::observe::Observer;
use crate::workload;

/// orphan-lock's configuration: its parameters, parsed once.
pub struct OrphanLock {
    clients: usize,
    fault: Fault,
    /// Where the booking code calls the payment provider: inside the transaction or before it.
    payment_inside: bool,
    /// A reconciler refunds charges that never became a booking (pay-first only).
    reconcile: bool,
    seats: usize,
    payment_call: Duration,
    booker_payment: Duration,
    retry_after: Duration,
    deadline: Duration,
    /// `holder = polling`: the holder asks after its payment this often, inside the
    /// transaction, and no fault hits it: it is alive and talking the whole time.
    poll_every: Option<Duration>,
    /// The variant sets `transaction_timeout` (PostgreSQL 17 and newer).
    transaction_timeout: bool,
}

impl Code for OrphanLock {
    const NAME: &'static str = "orphan-lock";
    const FILE: &'static str = include_str!("../../scenarios/orphan-lock.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::count("clients", 1, 1000),
        ParamSpec::words("fault", crate::fault::FAULTS),
        ParamSpec::words("payment", &["inside", "outside"]),
        ParamSpec::flag("reconcile"),
        ParamSpec::count("seats", 1, 1_000_000),
        ParamSpec::duration("payment_call", 1, HOUR_MS),
        ParamSpec::duration("booker_payment", 0, HOUR_MS),
        ParamSpec::duration("retry_after", 1, HOUR_MS),
        ParamSpec::duration("idle_timeout", 1, HOUR_MS),
        ParamSpec::duration("lock_timeout", 1, HOUR_MS),
        ParamSpec::duration("statement_timeout", 1, HOUR_MS),
        ParamSpec::words("holder", &["quiet", "polling"]),
        ParamSpec::duration("poll_every", 1, HOUR_MS),
        ParamSpec::duration("transaction_timeout", 1, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = METRICS;
    const SIZED_BY: &'static str = "clients";

    fn config(p: &Params) -> Result<OrphanLock, UsageError> {
        // A variant that sets the idle timeout is judged on a release within 1.5 of them.
        if p.in_settings("idle_timeout") {
            let idle_timeout = p.duration("idle_timeout")?;
            let why = "the idle timeout could not free the row before the cut-off";
            p.deadline_outlasts(2, "idle_timeout", idle_timeout, why)?;
        }
        // Once the row is free, the queued clients take turns at it, each holding it for its
        // own payment call: the cut-off must leave them room, or a mitigation is judged
        // "stuck" for a queue it did cause. Three times the bare queue covers the lock
        // timeouts and retries between turns on a busy machine.
        let payment_inside = p.switch("payment", "inside", "outside")?;
        if payment_inside {
            let clients = p.count("clients")?;
            let turn = p.duration("booker_payment")?;
            let timeout = |name: &str| match p.in_settings(name) {
                true => p.duration(name),
                false => Ok(Duration::ZERO),
            };
            let freed = timeout("idle_timeout")?.max(timeout("transaction_timeout")?);
            let need = freed + turn * (3 * clients as u32);
            let deadline = p.duration("deadline")?;
            if deadline < need {
                return Err(UsageError(format!(
                    "deadline ({}) is too short for {clients} clients: once the row is free they \
                     take turns holding it for booker_payment ({}) each, so the cut-off needs {} \
                     or more. Raise it (--param deadline={}) or lower clients",
                    p.as_written(deadline),
                    p.as_written(turn),
                    p.as_written(need),
                    p.as_written(need)
                )));
            }
        }
        let polling = p.switch("holder", "polling", "quiet")?;
        let poll_every = p.duration("poll_every")?;
        if polling
            && p.in_settings("idle_timeout")
            && poll_every * 2 > p.duration("idle_timeout")?
        {
            return Err(UsageError(format!(
                "poll_every ({}) must be under half of idle_timeout ({}): a holder that polls \
                 less often sits idle long enough for the idle timeout, which is not the \
                 failure holder=polling shows (lower --param poll_every)",
                p.as_written(poll_every),
                p.as_written(p.duration("idle_timeout")?)
            )));
        }
        if polling && p.duration("payment_call")? <= p.duration("deadline")? {
            return Err(UsageError(format!(
                "payment_call ({}) must outlast the deadline ({}) with holder=polling: a holder \
                 that is never faulted commits when its call ends, and the row it held would \
                 read as freed by a timeout (lower --param deadline below it)",
                p.as_written(p.duration("payment_call")?),
                p.as_written(p.duration("deadline")?)
            )));
        }
        let transaction_timeout = p.in_settings("transaction_timeout");
        if transaction_timeout {
            let why = "the transaction timeout could not free the row before the cut-off";
            p.deadline_outlasts(
                2,
                "transaction_timeout",
                p.duration("transaction_timeout")?,
                why,
            )?;
        }
        Ok(OrphanLock {
            poll_every: polling.then_some(poll_every),
            transaction_timeout,
            clients: p.count("clients")?,
            fault: p.one_of("fault", crate::fault::FAULT_OF)?,
            payment_inside,
            reconcile: p.flag("reconcile")?,
            seats: p.count("seats")?,
            payment_call: p.duration("payment_call")?,
            booker_payment: p.duration("booker_payment")?,
            retry_after: p.duration("retry_after")?,
            deadline: p.duration("deadline")?,
        })
    }

    fn unavailable(&self, env: &crate::env::Env) -> Option<String> {
        let release = env.pg_release.as_deref()?;
        let major: u32 = release.split('.').next()?.parse().ok()?;
        (self.transaction_timeout && major < 17).then(|| {
            // Not naming this server's release: the table's header does, and a version matrix
            // then reads one reason for every release that skipped it.
            "transaction_timeout came with PostgreSQL 17 (run it on 17 or newer, e.g. --pg-bin \
             with a PostgreSQL 17 or 18)"
                .to_string()
        })
    }

    fn sessions(&self) -> usize {
        // Each client, the holder, the setup session, the prober, the observer, and the
        // payment provider's two (the holder's own, everyone else's).
        self.clients + 6
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        run(self, ctx)
    }

    async fn worker(io: WorkerIo) -> anyhow::Result<()> {
        booking::holder::holder_main(io).await
    }
}

/// Starts the holder and waits until it is inside its payment call. Returns the victim for the
/// fault and the server clock when the call began.
async fn start_holder(
    ctx: &VariantCtx<'_>,
    cfg: &OrphanLock,
) -> anyhow::Result<(Victim, f64, Option<deadpool_postgres::Pool>)> {
    let env = ctx.env;
    let app = ctx.app("w/holder");
    let settings = &ctx.variant.settings;
    let (inside, payment_call) = (cfg.payment_inside, cfg.payment_call);
    // A polling holder is never faulted: whatever the run's fault, it is a process of its own.
    if cfg.fault == Fault::Leak && cfg.poll_every.is_none() {
        // One application pool of one connection, as in a service with a small pool.
        let pool = ctx
            .pg()
            .pool(&app, 1, None, deadpool_postgres::QueueMode::Fifo)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (task_pool, target) = (pool.clone(), ctx.pg().clone());
        let provider_target = provider_target(env).clone();
        let settings = settings.clone();
        let provider = provider_app(&app);
        let task = tokio::spawn(async move {
            let Ok(conn) = task_pool.get().await else {
                return;
            };
            let booking = Booking::new(&target, &settings);
            let Ok(provider) = provider_target.connect(&provider).await else {
                return;
            };
            let how = (HOLDER, inside, payment_call);
            let _ = hold(&conn, &provider, &booking, how, None, |at| {
                let _ = tx.send(at);
            })
            .await;
        });
        let at = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .context("the holder task did not start its payment call within 10 s")?
            .context("the holder task failed before its payment call")?;
        return Ok((Victim::Task(task), at, Some(pool)));
    }

    let config = HolderConfig {
        payment_inside: inside,
        poll_every: cfg.poll_every,
        ..HolderConfig::new(
            ctx.pg().clone(),
            provider_target(env).clone(),
            app,
            settings.clone(),
            payment_call,
        )
    };
    let (victim, at) = spawn_holder(env, None, config).await?;
    Ok((victim, at, None))
}

async fn run(cfg: &OrphanLock, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let env = ctx.env;
    let (clients, inside) = (cfg.clients, cfg.payment_inside);
    // The workload's path: through the pooler for a variant that runs through one.
    let pg = ctx.pg();
    let booking = Arc::new(Booking::new(pg, &ctx.variant.settings));

    let admin = ctx.admin(&booking.ddl(cfg.seats)).await?;

    let clock = Clock::start();
    let observer = Observer::start(
        &env.direct,
        &ctx.app("observer"),
        clock,
        ctx.app("w/"),
        ctx.app("w/holder"),
    )
    .await?;

    let provider = Arc::new(provider_target(env).connect(&ctx.app("provider")).await?);

    // The booking clients are already running when the holder freezes: connect them first, so
    // connection set-up (slow with SCRAM over TCP) never eats into the window being measured.
    let apps: Vec<String> = (0..clients)
        .map(|i| ctx.app(&format!("w/booker-{i}")))
        .collect();
    let bookers =
        connect_bookers(pg, &provider, &booking, &apps, (inside, cfg.booker_payment)).await?;

    // Everything after this point must reach the teardown below, whatever fails.
    let outcome = fault(cfg, ctx, (&admin, &booking), bookers, clock).await;

    // Whatever the fault left behind (a frozen holder's session, a cancelled waiter) ends here,
    // so the next variant starts clean.
    for role in ["w/", "probe", "provider"] {
        ctx.terminate_sessions(role).await?;
    }
    let samples = observer.finish().await;
    let Faulted {
        driven,
        probe,
        waited_ms,
        next_user_in_leaked_tx,
        paying_at,
    } = outcome?;
    let (committed, payments) = booking.tally(&admin, "%").await?;
    Ok(VariantRun::checked(
        &clock,
        driven.history,
        crate::check::Input::OrphanLock(Observations {
            cut_off: driven.cut_off || probe.free_at_epoch.is_none(),
            holder_paying_epoch: paying_at,
            probe,
            waited_ms,
            samples,
            bookings_committed: committed,
            payments,
            next_user_in_leaked_tx,
        }),
    ))
}

/// What the fault left: the bookers' history, what the probe found, how long the holder had
/// been gone, and where the holder leaked, whether the pool's next user found its transaction.
struct Faulted {
    driven: workload::Driven,
    probe: Probe,
    waited_ms: f64,
    next_user_in_leaked_tx: Option<bool>,
    /// Server clock when the holder began its payment call.
    paying_at: f64,
}

/// The holder takes the row and starts paying; the probe looks; the fault hits; the probe
/// queues first on the row, then the bookers, until the cut-off. The holder is ended
/// whatever happens.
async fn fault(
    cfg: &OrphanLock,
    ctx: &VariantCtx<'_>,
    (admin, booking): (&Client, &Arc<Booking>),
    bookers: Vec<Box<dyn workload::Client>>,
    clock: Clock,
) -> anyhow::Result<Faulted> {
    let (mut victim, paying_at, pool) = start_holder(ctx, cfg).await?;
    let result = async {
        let reported = Instant::now();
        let prober = Prober::connect(&ctx.env.direct, &ctx.app("probe"), booking).await?;
        // Looked at just before the fault: a row the holder never locked reads free here.
        let locked_before_fault = prober.try_now().await?.is_none();
        // A polling holder is not faulted: it goes on talking through its whole payment call.
        if cfg.poll_every.is_none() {
            victim.inject(cfg.fault)?;
        }
        let window = Window {
            clock,
            deadline: Instant::now() + cfg.deadline,
        };
        let next_user_in_leaked_tx = match &pool {
            Some(pool) => Some(next_user_in_leaked_tx(pool).await?),
            None => None,
        };
        let (driven, probe) = book_behind_the_probe(
            ctx,
            (prober, admin),
            bookers,
            &window,
            cfg.retry_after,
            locked_before_fault,
        )
        .await?;
        let waited_ms = reported.elapsed().as_secs_f64() * 1000.0;
        if cfg.reconcile {
            // The reconciler runs once the payment call's own time is up, while the holder is
            // still frozen, dead or leaked: its charge has no booking.
            let grace = cfg.payment_call;
            tokio::time::sleep_until(reported + grace + grace / 10).await;
            reconcile(admin, booking, grace)
                .await
                .context("the reconciler failed")?;
        }
        anyhow::Ok(Faulted {
            driven,
            probe,
            waited_ms,
            next_user_in_leaked_tx,
            paying_at,
        })
    }
    .await;
    victim.end().await;
    drop(pool);
    result
}

/// Leak fault: the next user of the holder's pool checks whether it was handed a connection
/// still inside the aborted task's transaction (transaction start earlier than statement start).
async fn next_user_in_leaked_tx(pool: &deadpool_postgres::Pool) -> anyhow::Result<bool> {
    let conn = tokio::time::timeout(Duration::from_secs(5), pool.get())
        .await
        .context("the holder's pool gave no connection within 5 s")?
        .context("the holder's pool gave no connection")?;
    let row = conn
        .one(
            "SELECT transaction_timestamp() < statement_timestamp()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}
