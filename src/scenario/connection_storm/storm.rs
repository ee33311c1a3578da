//! One storm: the slots sized, the holder frozen on the row, the fleet let loose until the
//! cut-off (and the restart, for `restart-db`), and everything of the variant's ended after.

use crate::check::storm::{Observations, Restart};
use crate::env::postgres::PgServer;
use crate::error::UsageError;
use crate::fault::{Fault, Victim};
use crate::history::{Clock, Outcome};
use crate::observe::pg_slots::SlotWatcher;
use crate::scenario::booking::{Booking, HolderConfig, Prober, spawn_holder};
use crate::scenario::{VariantCtx, VariantRun};
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_postgres::Client;

use super::fleet::*;
use super::*;

/// How many slots the workload has on the server it runs on, and the runtime's cap sized to
/// them.
pub(super) struct Sizing {
    pub(super) capacity: crate::env::postgres::Capacity,
    /// Every slot the workload may take: at this many connections in all, the next gets 53300.
    pub(super) usable_slots: i64,
    pub(super) cap: Option<usize>,
}

/// The cap is a share of the workload's slots: as given on a server of `max_connections`, the
/// same share of what a user's server has free. A cap that leaves the other endpoints no slot
/// is refused (exit 2), before anything is frozen. Read once the run's own sessions (observer,
/// probe) are open, as they count against the slots.
pub(super) async fn size(
    cfg: &ConnectionStorm,
    ctx: &VariantCtx<'_>,
    servers: &Servers,
) -> anyhow::Result<Sizing> {
    let workload = &servers.workload;
    let capacity = workload.capacity(&ctx.app("capacity")).await?;
    let usable_slots = capacity.in_use + capacity.allows();
    let workload_slots = (capacity.allows() as usize).saturating_sub(OWN_SESSIONS_LATER);
    let share = cfg.cap.map(|cap| cap as f64 / cfg.workload_slots() as f64);
    let cap = share.map(|share| match servers.own {
        Some(_) => cfg.cap.unwrap_or(1),
        // The same share of what is free, lowered where it would leave less than its
        // headroom (the other endpoints' slots, and backends still exiting).
        None => ((share * workload_slots as f64) as usize)
            .min(super::most_cap(workload_slots, cfg.others_slots))
            .max(1),
    });
    if let Some(cap) = cap
        && cap + super::headroom(cap, cfg.others_slots) > workload_slots
    {
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
    if servers.own.is_none()
        && servers.pooler.is_none()
        && !TOLD_SLOTS.swap(true, Ordering::Relaxed)
    {
        crate::say!(
            "note: connection-storm fills the free connection slots of {} ({} of max_connections \
             {}) for up to {} a variant: its other clients may be refused meanwhile",
            workload.display,
            capacity.allows(),
            capacity.max_connections,
            humantime::format_duration(cfg.deadline + cfg.deadline / 5)
        );
    }
    Ok(Sizing {
        capacity,
        usable_slots,
        cap,
    })
}

/// The variant's tables on the server, the workload's role granted them where it is not the
/// owner (a throwaway server's workload role).
pub(super) async fn make_tables(
    servers: &Servers,
    admin: &Client,
    booking: &Booking,
) -> anyhow::Result<()> {
    let workload = &servers.workload;
    admin
        .batch_execute(&format!(
            "{} {}",
            booking.ddl(1_000_000),
            others_ddl(workload)
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
    Ok(())
}

/// The frozen holders of a variant: kept as they freeze, ended (killed) whatever happens.
#[derive(Default)]
pub(super) struct Frozen(std::sync::Mutex<Vec<Victim>>);

impl Frozen {
    /// Freezes `ghost` and keeps it, frozen or not, for [`Frozen::end`].
    pub(super) fn freeze(&self, mut ghost: Victim) -> anyhow::Result<()> {
        let frozen = ghost.inject(Fault::Freeze);
        if let Ok(mut vs) = self.0.lock() {
            vs.push(ghost);
        }
        frozen
    }

    pub(super) async fn end(&self) {
        let all: Vec<Victim> = self
            .0
            .lock()
            .map(|mut vs| vs.drain(..).collect())
            .unwrap_or_default();
        for v in all {
            v.end().await;
        }
    }
}

/// What the storm left, for the checker.
pub(super) struct Stormed {
    pub(super) fleet: Arc<Fleet>,
    pub(super) history: crate::history::History,
    pub(super) restart: Option<Restart>,
    pub(super) cpu: (Option<f64>, Option<f64>),
    pub(super) locked_before_fault: bool,
    pub(super) fault_ms: f64,
    pub(super) end_ms: f64,
    pub(super) cut_off: bool,
    pub(super) released_ms: Option<f64>,
}

pub(super) async fn storm(
    cfg: &ConnectionStorm,
    ctx: &VariantCtx<'_>,
    servers: &mut Servers,
) -> anyhow::Result<VariantRun> {
    let admin_target = servers.admin.clone();
    let booking = Booking::new(&servers.workload, &ctx.variant.settings);
    let admin = admin_target.connect(&ctx.app("admin")).await?;
    make_tables(servers, &admin, &booking).await?;
    let clock = Clock::start();
    let watcher =
        SlotWatcher::start(&admin_target, &ctx.app("observer"), clock, &ctx.app("w/")).await?;
    let prober = Prober::connect(&admin_target, &ctx.app("probe"), &booking).await?;
    let (pooler_watch, pooler_unknown) = match servers.pooler.as_ref().map(|p| &p.admin) {
        Some(Ok(admin)) => {
            let pools = servers.pooler.as_ref().map(|p| p.pools.clone());
            let pools = pools.context("a pooler without its pools")?;
            match crate::observe::pooler::watch(admin, &ctx.app("pooler-observer"), clock, pools)
                .await
            {
                Ok(w) => (Some(w), None),
                Err(e) => (
                    None,
                    Some(format!("its admin console did not answer: {e:#}")),
                ),
            }
        }
        Some(Err(why)) => (None, Some(why.clone())),
        None => (None, None),
    };
    if let Some(why) = &pooler_unknown {
        crate::say!(
            "note: connection-storm/{}: the pooler's own figures are unknown: {why}",
            ctx.variant.name
        );
    }
    let sizing = match size(cfg, ctx, servers).await {
        Ok(sizing) => sizing,
        Err(e) => {
            watcher.finish().await;
            return Err(e);
        }
    };
    let frozen = Frozen::default();
    let outcome = unleash(
        cfg,
        ctx,
        servers,
        (&admin, prober, &frozen),
        clock,
        sizing.cap,
    )
    .await;
    // On the session already open: with the slots full, a new one would be refused.
    let ended = end_sessions(&admin, &ctx.app("w/")).await;
    frozen.end().await;
    let samples = watcher.finish().await;
    let pooler_samples = match pooler_watch {
        Some(w) => w.finish().await,
        None => Vec::new(),
    };
    if servers.own.is_none() {
        ended?;
    }
    let stormed = outcome?;
    // After a restart the setup session is gone: count on a fresh one.
    let counter = admin_target.connect(&ctx.app("admin")).await?;
    let (committed, _) = booking.tally(&counter, "%").await?;
    let fleet = &stormed.fleet;
    Ok(VariantRun::checked(
        &clock,
        stormed.history,
        crate::check::Input::ConnectionStorm(Observations {
            cut_off: stormed.cut_off,
            fault_ms: stormed.fault_ms,
            released_ms: stormed.released_ms,
            locked_before_fault: stormed.locked_before_fault,
            end_ms: stormed.end_ms,
            samples,
            max_connections: sizing.capacity.max_connections,
            usable_slots: sizing.usable_slots,
            invocations: fleet.invocations.load(Ordering::Relaxed),
            max_concurrent: fleet.executing.peak(),
            max_in_flight: fleet.in_flight.peak(),
            bookings_committed: committed,
            db_cpu_pct: stormed.cpu.0,
            harness_cpu_pct: stormed.cpu.1,
            restart: stormed.restart,
            runtime_cap: sizing.cap,
            through_pooler: servers.pooler.is_some(),
            pooler_samples,
            pooler_unknown,
        }),
    ))
}

/// The holder freezes on the row; the fleet of invocations arrives until the cut-off (and the
/// restart, for `restart-db`, happens meanwhile).
pub(super) async fn unleash(
    cfg: &ConnectionStorm,
    ctx: &VariantCtx<'_>,
    servers: &mut Servers,
    (admin, prober, frozen): (&Client, Prober, &Frozen),
    clock: Clock,
    cap: Option<usize>,
) -> anyhow::Result<Stormed> {
    let workload = servers.workload.clone();
    let (ghost, paying_epoch) =
        spawn_holder(ctx.env, None, holder(cfg, ctx, servers, "w/holder")).await?;
    // The fault is the holder going silent on the row, in its payment call: on the variant's
    // clock here, on the server's as `paying_epoch`, so the release read from the server's
    // clock (below) lands on this clock as the same span.
    let fault_ms = clock.now_ms();
    let locked_before_fault = prober.try_now().await?.is_none();
    frozen.freeze(ghost)?;
    let cpu = CpuWindow::start(servers.own.as_ref().map(PgServer::pid));
    let deadline = Instant::now() + cfg.deadline;
    let hard_end = deadline + cfg.deadline / 5;
    let queued = prober
        .queue_first(admin, hard_end, ctx.cancel.clone(), clock)
        .await;
    let released = queued.released_ms.clone();

    let mut config = servers.book().config("")?;
    config.connect_timeout(Duration::from_secs(5));
    let mut others_config = servers.others().config("")?;
    others_config.connect_timeout(Duration::from_secs(5));
    let (booked, ticker) = ctx.progress_counter(" booked".into());
    let fleet = Arc::new(Fleet {
        booked,
        config,
        others_config,
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
    let bookings = arrivals(&fleet, cfg.arrival, |f, id| {
        Box::pin(f.booking_invocation(id))
    });
    let others = async {
        match cfg.others_arrival {
            Some(every) => arrivals(&fleet, every, |f, id| Box::pin(f.other_invocation(id))).await,
            None => Vec::new(),
        }
    };
    let restart = restart(cfg, ctx, servers, (admin, &fleet, frozen), &cpu, &released);
    let (bookings, others, restart) = tokio::join!(bookings, others, restart);
    for t in bookings.into_iter().chain(others) {
        let _ = t.await;
    }
    drop(ticker);
    cpu.close();
    let restart = restart?;
    let freed = queued.free_at_epoch().await;
    let seen_by_probe = released.lock().ok().and_then(|r| *r);
    let released_ms = match restart {
        // Without a restart the row is freed by the server (a timeout ending the holder): how
        // long it was held is read from the server's clock, from the holder's payment call to
        // the probe's lock, so a harness slowed by the storm lengthens neither it nor the
        // outage that ends with it.
        None => freed?.map(|at| fault_ms + ((at - paying_epoch) * 1000.0).max(0.0)),
        Some(_) => seen_by_probe,
    };
    let end_ms = clock.now_ms();
    let history = fleet.record.history();
    Ok(Stormed {
        cut_off: history.ops.iter().any(|o| o.outcome == Outcome::Unknown) || released_ms.is_none(),
        fleet,
        history,
        restart,
        cpu: cpu.shares(),
        locked_before_fault,
        fault_ms,
        end_ms,
        released_ms,
    })
}

/// A frozen holder's configuration: a payment call on the workload's path, its provider on
/// locklab's own.
pub(super) fn holder(
    cfg: &ConnectionStorm,
    ctx: &VariantCtx<'_>,
    servers: &Servers,
    app: &str,
) -> HolderConfig {
    HolderConfig::new(
        servers.book().clone(),
        servers.admin.clone(),
        ctx.app(app),
        ctx.variant.settings.clone(),
        cfg.payment_call,
    )
}

/// `restart-db`: the server restarts `after` into the storm (freeing the row: the release is
/// counted from here), and `relapse` later the next slow payment call freezes holding the row
/// again. `None` for variants without a restart, or on Ctrl-C before it.
pub(super) async fn restart(
    cfg: &ConnectionStorm,
    ctx: &VariantCtx<'_>,
    servers: &mut Servers,
    (admin, fleet, frozen): (&Client, &Fleet, &Frozen),
    cpu: &CpuWindow,
    released: &std::sync::Mutex<Option<f64>>,
) -> anyhow::Result<Option<Restart>> {
    let Some((after, relapse)) = cfg.restart else {
        return Ok(None);
    };
    let (clock, at) = (fleet.clock, fleet.deadline - cfg.deadline + after);
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
        None => end_sessions(admin, &ctx.app("w/")).await?,
    }
    tokio::select! {
        _ = tokio::time::sleep_until(Instant::now().max(at) + relapse) => {}
        _ = ctx.cancel.cancelled() => return Ok(Some(Restart { at_ms, relapse_at_ms: None })),
    }
    // The next slow payment call, with the same code: it freezes holding the row. The fleet's
    // connects wait at the door meanwhile: with the slots (or the role's limit) full, the
    // ghost would otherwise start only if it won a race for a freed slot.
    let door = fleet.door.write().await;
    let next = spawn_holder(ctx.env, None, holder(cfg, ctx, servers, "w/holder-2")).await;
    drop(door);
    let (next, _) = next?;
    let relapse_at_ms = clock.now_ms();
    frozen.freeze(next)?;
    Ok(Some(Restart {
        at_ms,
        relapse_at_ms: Some(relapse_at_ms),
    }))
}
