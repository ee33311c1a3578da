//! shutdown: deploys and restarts meet a booking in flight. The holder is a booking service of
//! its own process, serving bookings one after another (BEGIN, UPDATE, payment call, INSERT,
//! COMMIT). Mid-call it gets a deploy's SIGTERM, with or without a drain, and the platform's
//! SIGKILL after the grace period; or the database restarts under everyone. Booking clients
//! share an application pool (deadpool) and queue on the row meanwhile.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::os::unix::process::ExitStatusExt;

use anyhow::Context;
use futures::future::BoxFuture;
use tokio::time::Instant;

use super::booking::{Booking, HolderConfig, HolderEvent, Prober, server_epoch, spawn_holder};
use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun};
use crate::check::shutdown::{METRICS, Observations};
use crate::env::Env;
use crate::env::postgres::{PgServer, PgTarget};
use crate::env::process;
use crate::error::UsageError;
use crate::fault::Victim;
use crate::history::{Clock, class};
use crate::workload::{self, OpError, Plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A deploy: SIGTERM to the holder, SIGKILL after the grace period if it is still there.
    Sigterm,
    /// A fast restart of the database (a throwaway server's own).
    DbRestart,
}

pub struct Shutdown {
    clients: usize,
    event: Event,
    drain: bool,
    payment_call: Duration,
    booker_payment: Duration,
    retry_after: Duration,
    event_after: Duration,
    grace: Duration,
    deadline: Duration,
}

impl Code for Shutdown {
    const NAME: &'static str = "shutdown";
    const FILE: &'static str = include_str!("../../scenarios/shutdown.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::count("clients", 1, 500),
        ParamSpec::words("event", &["sigterm", "db-restart"]),
        ParamSpec::flag("drain"),
        ParamSpec::duration("payment_call", 1, DAY_MS),
        ParamSpec::duration("booker_payment", 0, HOUR_MS),
        ParamSpec::duration("retry_after", 1, HOUR_MS),
        ParamSpec::duration("event_after", 0, HOUR_MS),
        ParamSpec::duration("grace", 1, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = METRICS;
    const SIZED_BY: &'static str = "clients";

    fn config(p: &Params) -> Result<Shutdown, UsageError> {
        let event = match p.text("event")? {
            "db-restart" => Event::DbRestart,
            _ => Event::Sigterm,
        };
        let cfg = Shutdown {
            clients: p.count("clients")?,
            event,
            drain: p.flag("drain")?,
            payment_call: p.duration("payment_call")?,
            booker_payment: p.duration("booker_payment")?,
            retry_after: p.duration("retry_after")?,
            event_after: p.duration("event_after")?,
            grace: p.duration("grace")?,
            deadline: p.duration("deadline")?,
        };
        if event == Event::Sigterm {
            p.deadline_outlasts(
                2,
                "grace",
                cfg.grace,
                "the platform's SIGKILL could not come before the cut-off",
            )?;
        }
        // A drain waits for the booking in flight: where its payment call ends within the run
        // (it is not a hang), the platform's grace must let it (found by `bench claims`: a
        // grace of 12.76s against 15s of payment left killed sigterm-drain's holder).
        let left = cfg.payment_call.saturating_sub(cfg.event_after);
        if event == Event::Sigterm && cfg.drain && left < cfg.deadline && left >= cfg.grace {
            return Err(UsageError(format!(
                "grace ({}) must outlast what is left of the payment call when SIGTERM comes \
                 (payment_call - event_after = {}): a drain that needs longer is killed like \
                 no drain at all (--param grace={} or more)",
                p.as_written(cfg.grace),
                p.as_written(left),
                p.as_written(left.mul_f64(1.5))
            )));
        }
        if cfg.event_after >= cfg.payment_call {
            return Err(UsageError(format!(
                "event_after ({}) must come before the holder's payment call ends ({}): the \
                 event is to hit a booking in flight",
                humantime::format_duration(cfg.event_after),
                humantime::format_duration(cfg.payment_call)
            )));
        }
        Ok(cfg)
    }

    fn sessions(&self) -> usize {
        // The bookers' pool, the holder and its provider session, setup (twice across a
        // restart), probe, and the bookers' payment provider.
        self.clients + 6
    }

    fn unavailable(&self, env: &Env) -> Option<String> {
        match self.event {
            Event::DbRestart => env
                .own_server_missing("restarts the database")
                .or_else(|| env.pooler_in_the_way("restarts the server under its clients")),
            Event::Sigterm => None,
        }
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        run(self, ctx)
    }
}

/// A booking client of a service whose connections come from a shared application pool.
struct PoolBooker {
    pool: deadpool_postgres::Pool,
    /// The payment provider's records, through a pool of its own so that it reconnects after a
    /// restart like any service would (its errors then are not the bookers' pool's).
    provider: deadpool_postgres::Pool,
    booking: Arc<Booking>,
    payment: Duration,
    passenger: String,
}

impl PoolBooker {
    async fn book(&mut self) -> Result<(), OpError> {
        let conn = self.pool.get().await?;
        let provider = self
            .provider
            .get()
            .await
            .map_err(|_| OpError::new(class::CLIENT))?;
        let how = (self.passenger.as_str(), self.payment);
        self.booking.book_inside(&conn, &provider, how).await
    }
}

impl workload::Client for PoolBooker {
    fn kind(&self) -> &'static str {
        "book"
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.book())
    }
    fn canceller(&self) -> Option<crate::env::postgres::Canceller> {
        None
    }
}

/// Polls the row without waiting on it (a waiting session would be ended by a restart too),
/// reconnecting as needed; returns the server clock when it was first free.
async fn watch_free(
    target: PgTarget,
    app: String,
    booking: Arc<Booking>,
    deadline: Instant,
    cancel: tokio_util::sync::CancellationToken,
) -> Option<f64> {
    let mut prober = None;
    while Instant::now() < deadline && !cancel.is_cancelled() {
        if prober.is_none() {
            prober = Prober::connect(&target, &app, &booking).await.ok();
        }
        if let Some(p) = &prober {
            match p.try_now().await {
                Ok(Some(at)) => return Some(at),
                Ok(None) => {}
                Err(_) => prober = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// What the holder's process came to.
#[derive(Default)]
struct HolderEnd {
    exit_code: Option<i32>,
    killed: bool,
    drained: bool,
}

/// The deploy: SIGTERM now; SIGKILL when the grace period is up and the holder is still there.
async fn deploy(victim: &mut Victim, grace: Duration) -> anyhow::Result<HolderEnd> {
    let pid = victim.pid().context("the holder process already exited")?;
    let worker = victim.worker().context("the holder is not a process")?;
    process::signal(pid, libc::SIGTERM);
    let kill_at = Instant::now() + grace;
    let mut end = HolderEnd::default();
    loop {
        match worker.next::<HolderEvent>(kill_at).await {
            Ok(Some(HolderEvent::Drained { .. })) => end.drained = true,
            Ok(Some(_)) => {}
            Ok(None) => {
                // The grace period is over: the platform kills what is left.
                process::signal(pid, libc::SIGKILL);
                break;
            }
            Err(_) => break, // it exited
        }
    }
    let status = worker
        .exit_status(Instant::now() + Duration::from_secs(5))
        .await
        .context("the holder process did not end after SIGKILL")?;
    end.exit_code = status.code();
    end.killed = status.signal().is_some();
    Ok(end)
}

async fn run(cfg: &Shutdown, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    if cfg.event == Event::DbRestart {
        let settings = [("max_connections".into(), (cfg.sessions() + 10).to_string())];
        let schema = ctx.env.pg.schema.clone();
        return ctx
            .on_own_pg(&settings, false, async |own| {
                let target = own.server.target(&schema);
                run_on(cfg, ctx, (&target, &target), Some(&mut own.server)).await
            })
            .await
            .context("db-restart needs a throwaway PostgreSQL")?;
    }
    let result = run_on(cfg, ctx, (ctx.pg(), &ctx.env.direct), None).await;
    // Whatever a killed holder or a cut-off left, so the next variant starts clean.
    for role in ["w/", "probe", "provider"] {
        ctx.terminate_sessions(role).await?;
    }
    result
}

/// The rest of the booking service: `clients` bookers on a warm pool of the workload's, their
/// payment provider on a pool of its own (both returned, to close after the run).
async fn bookers(
    cfg: &Shutdown,
    ctx: &VariantCtx<'_>,
    (workload, direct): (&PgTarget, &PgTarget),
    booking: &Arc<Booking>,
) -> anyhow::Result<(
    Vec<Box<dyn workload::Client>>,
    deadpool_postgres::Pool,
    deadpool_postgres::Pool,
)> {
    let fifo = deadpool_postgres::QueueMode::Fifo;
    let provider = direct.pool(&ctx.app("provider"), 1, None, fifo)?;
    let pool = workload.pool(&ctx.app("w/booker"), cfg.clients, None, fifo)?;
    PgTarget::warm(&pool).await?;
    let bookers = (0..cfg.clients)
        .map(|i| {
            Box::new(PoolBooker {
                pool: pool.clone(),
                provider: provider.clone(),
                booking: booking.clone(),
                payment: cfg.booker_payment,
                passenger: format!("passenger-{i}"),
            }) as Box<dyn workload::Client>
        })
        .collect();
    Ok((bookers, pool, provider))
}

/// `workload`: the service's path to the database; `direct`: locklab's own (setup, probe, the
/// payment provider's records). `server`: the throwaway server a restart restarts.
async fn run_on(
    cfg: &Shutdown,
    ctx: &VariantCtx<'_>,
    (workload, direct): (&PgTarget, &PgTarget),
    mut server: Option<&mut PgServer>,
) -> anyhow::Result<VariantRun> {
    let booking = Arc::new(Booking::new(workload, &ctx.variant.settings));
    let admin = direct.connect(&ctx.app("admin")).await?;
    admin
        .batch_execute(&booking.ddl(1000))
        .await
        .context("could not create the scenario's tables")?;
    let clock = Clock::start();
    let (bookers, pool, provider) = bookers(cfg, ctx, (workload, direct), &booking).await?;

    let holder = HolderConfig {
        serve: true,
        drain: cfg.drain,
        ..HolderConfig::new(
            workload.clone(),
            direct.clone(),
            ctx.app("w/holder"),
            ctx.variant.settings.clone(),
            cfg.payment_call,
        )
    };
    let (mut victim, _) = spawn_holder(ctx.env, None, holder).await?;
    let outcome = async {
        let (booked, ticker) = ctx.progress_counter(format!(" of {} booked", cfg.clients));
        let plan = Plan::UntilOk {
            retry_after: cfg.retry_after,
            stop_on: &[],
        };
        let started = Instant::now();
        let event_at = started + cfg.event_after;
        let deadline = event_at + cfg.deadline;
        let cancel = ctx.cancel.clone();
        let drive = workload::drive(bookers, plan, clock, deadline, &cancel, booked);
        let event = async {
            tokio::time::sleep_until(event_at).await;
            let event_epoch = server_epoch(&admin).await?;
            let watch = tokio::spawn(watch_free(
                direct.clone(),
                ctx.app("probe"),
                booking.clone(),
                deadline,
                cancel.clone(),
            ));
            let mut restart = None;
            let end = match server.as_deref_mut() {
                Some(server) => {
                    let began = clock.now_ms();
                    server.restart().await?;
                    restart = Some((began, clock.now_ms()));
                    HolderEnd::default()
                }
                None => deploy(&mut victim, cfg.grace).await?,
            };
            let free_at = watch.await.context("the probe task failed")?;
            anyhow::Ok((event_epoch, free_at, end, restart, Instant::now()))
        };
        let (driven, event) = tokio::join!(drive, event);
        drop(ticker);
        let (event_epoch, free_at, end, restart, watched_until) = event?;
        anyhow::Ok((
            driven,
            event_epoch,
            free_at,
            end,
            restart,
            watched_until - event_at,
        ))
    }
    .await;
    victim.end().await;
    drop(pool);
    drop(provider);
    let (driven, event_epoch, free_at, end, restart, waited) = outcome?;
    // The restart ended the setup session too: count on a fresh one.
    let admin = direct.connect(&ctx.app("admin")).await?;
    let (holder_committed, holder_payments) = booking.tally(&admin, "holder%").await?;
    Ok(VariantRun::checked(
        &clock,
        driven.history,
        crate::check::Input::Shutdown(Observations {
            event_epoch,
            free_at_epoch: free_at,
            waited_ms: waited.as_secs_f64() * 1000.0,
            cut_off: driven.cut_off || free_at.is_none(),
            holder_exit_code: end.exit_code,
            holder_killed: end.killed,
            holder_drained: end.drained,
            holder_committed,
            holder_charged_without_booking: holder_payments.charged_without_booking,
            restart,
        }),
    ))
}
