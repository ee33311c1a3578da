//! lost-client: the booking holder's network goes silent mid-transaction. Its process lives on,
//! but no packet of its connection reaches the server or comes back: no FIN, no RST, as when a
//! host or container vanishes or a network splits. The server sees a healthy session idle in
//! its transaction, and the row stays locked until something on the server's side gives up on
//! the peer: its own TCP keepalives, or the idle-in-transaction timeout.
//!
//! Each variant gets a throwaway PostgreSQL of its own inside a network namespace of its own
//! (see [`crate::env::netns`]), started with the variant's settings as server settings. The
//! holder runs in that namespace and books over TCP loopback; everything else (bookers, probe,
//! observers) uses the unix socket, which the partition does not touch.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use anyhow::Context;
use tokio::time::Instant;
use tokio_postgres::Client;

use super::booking::{
    Booking, HolderConfig, Prober, book_behind_the_probe, connect_bookers, spawn_holder,
};
use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun, Window};
use crate::check::lost_client::{Backend, Keepalive, METRICS, ServerSide};
use crate::check::orphan_lock::{Observations, Probe};
use crate::env::Env;
use crate::env::netns;
use crate::env::postgres::PgTarget;
use crate::env::postgres::{PgServer, Sql as _};
use crate::error::UsageError;
use crate::history::Clock;
use crate::observe::Observer;

/// How long the holder sits idle before the partition, at least, after --time-scale.
const MIN_PARTITION_AFTER: Duration = Duration::from_millis(100);

pub struct LostClient {
    clients: usize,
    payment_call: Duration,
    booker_payment: Duration,
    retry_after: Duration,
    /// How long the holder sits idle in its transaction before its network goes silent.
    partition_after: Duration,
    deadline: Duration,
    /// The variant's TCP keepalive values (whole seconds), used by the server, the client, or
    /// neither.
    keepalive: Keepalive,
    server_keepalives: bool,
    client_keepalives: bool,
    user_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
}

impl Code for LostClient {
    const NAME: &'static str = "lost-client";
    const FILE: &'static str = include_str!("../../scenarios/lost-client.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::count("clients", 1, 200),
        ParamSpec::duration("payment_call", 1, DAY_MS),
        ParamSpec::duration("booker_payment", 0, HOUR_MS),
        ParamSpec::duration("retry_after", 1, HOUR_MS),
        ParamSpec::duration("partition_after", 0, HOUR_MS),
        ParamSpec::seconds("keepalives_idle", 1, DAY_MS),
        ParamSpec::seconds("keepalives_interval", 1, DAY_MS),
        ParamSpec::count("keepalives_count", 1, 100),
        ParamSpec::flag("client_keepalives"),
        ParamSpec::duration("user_timeout", 1, DAY_MS),
        ParamSpec::duration("idle_timeout", 1, HOUR_MS),
        ParamSpec::duration("statement_timeout", 1, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = METRICS;
    const SIZED_BY: &'static str = "clients";

    fn config(p: &Params) -> Result<LostClient, UsageError> {
        let server_keepalives = p.in_settings("keepalives_idle");
        let client_keepalives = p.flag("client_keepalives")?;
        let keepalive = Keepalive {
            idle_s: whole_seconds(p, "keepalives_idle")?,
            interval_s: whole_seconds(p, "keepalives_interval")?,
            count: p.count("keepalives_count")? as u64,
        };
        let user_timeout = match p.in_settings("user_timeout") {
            true => Some(p.duration("user_timeout")?),
            false => None,
        };
        let idle_timeout = match p.in_settings("idle_timeout") {
            true => Some(p.duration("idle_timeout")?),
            false => None,
        };
        let deadline = p.duration("deadline")?;
        let payment_call = p.duration("payment_call")?;
        if payment_call <= deadline {
            return Err(UsageError(format!(
                "payment_call ({}) must outlast the deadline ({}): the holder must still be in \
                 its call, idle in its transaction, when the run ends",
                p.as_written(payment_call),
                p.as_written(deadline)
            )));
        }
        // The holder's last reply must be acknowledged before the network goes silent: the
        // client's kernel may delay that ACK by 40 ms or more, and a server left with data
        // unacknowledged retransmits instead of probing, so neither keepalives nor the lack of
        // tcp_user_timeout would show (found by `bench claims`: 800ms at time scale 0.05, 40
        // ms, left server-keepalives' backend alive past the cut-off once).
        let partition_after = p.scaled_at_least(
            "partition_after",
            MIN_PARTITION_AFTER,
            "the holder's last reply may be unacknowledged when the network goes silent \
             (delayed ACKs), and the server then retransmits instead of sending keepalives",
        )?;
        let cfg = LostClient {
            clients: p.count("clients")?,
            payment_call,
            booker_payment: p.duration("booker_payment")?,
            retry_after: p.duration("retry_after")?,
            partition_after,
            deadline,
            keepalive,
            server_keepalives,
            client_keepalives,
            user_timeout,
            idle_timeout,
        };
        // A variant whose settings should free the row is judged within 1.5 times the
        // prediction: the cut-off must leave room for it.
        let expected = crate::check::lost_client::expected_release_ms(&cfg.server_side());
        if expected < 600_000.0 && deadline.as_secs_f64() * 1000.0 < expected * 1.5 {
            return Err(UsageError(format!(
                "deadline ({}, {} after --time-scale) must be at least 1.5 times the release \
                 the variant's settings predict ({}, in the kernel's whole seconds): the row \
                 could not be seen freed before the cut-off; raise deadline, or lower the \
                 variant's timeouts",
                p.as_written(deadline),
                humantime::format_duration(deadline),
                humantime::format_duration(Duration::from_millis(expected as u64))
            )));
        }
        Ok(cfg)
    }

    fn sessions(&self) -> usize {
        // The bookers, the holder and its payment provider's session, setup, probe, observer,
        // the backend watcher, and the bookers' payment provider.
        self.clients + 7
    }

    fn cpu(&self) -> super::Cpu {
        match self.idle_timeout {
            // The row is freed by the server's keepalive probes, or not before the cut-off:
            // whole seconds of kernel time, and the variant's own CPU is two samplers.
            None => super::Cpu::Kernel,
            // idle_in_transaction_session_timeout is a backend's timer: a busy CPU fires it late.
            Some(_) => super::Cpu::Timed,
        }
    }

    fn unavailable(&self, env: &Env) -> Option<String> {
        env.own_server_missing("runs PostgreSQL in a network namespace to cut a connection")
            .or_else(|| env.pooler_in_the_way("cuts the holder's connection to PostgreSQL"))
            .or_else(netns::unavailable)
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        run(self, ctx)
    }
}

/// A keepalive duration as the kernel takes it: whole seconds, at least one. Refused otherwise,
/// rather than rounded: PostgreSQL would round 300ms to 0, which means the kernel's 2 hours.
fn whole_seconds(p: &Params, name: &str) -> Result<u64, UsageError> {
    let d = p.duration(name)?;
    // On the nearest millisecond first: a scaled 3 s may come out a nanosecond short.
    let ms = (d.as_secs_f64() * 1000.0).round() as u64;
    if !ms.is_multiple_of(1000) || ms == 0 {
        return Err(UsageError(format!(
            "{name} is {} at time scale {}, but TCP keepalive settings are whole seconds (at \
             least 1 s): choose a value or --time-scale that gives whole seconds",
            humantime::format_duration(d),
            p.time_scale
        )));
    }
    Ok(ms / 1000)
}

impl LostClient {
    fn server_side(&self) -> ServerSide {
        ServerSide {
            keepalive: match self.server_keepalives {
                true => self.keepalive,
                false => Keepalive::KERNEL_DEFAULT,
            },
            user_timeout_ms: self.user_timeout.map(|d| d.as_millis() as u64),
            idle_timeout_ms: self.idle_timeout.map(|d| d.as_millis() as u64),
        }
    }

    /// The holder's own connection settings: client-side keepalives where the variant asks.
    fn client_settings(&self) -> String {
        match self.client_keepalives {
            true => format!(
                "keepalives=1 keepalives_idle={} keepalives_interval={} keepalives_retries={}",
                self.keepalive.idle_s, self.keepalive.interval_s, self.keepalive.count
            ),
            false => String::new(),
        }
    }
}

/// Watches the holder's backend in pg_stat_activity from a session of its own; returns the
/// server clock when it was first seen gone, or `None` at the deadline. It asks the function
/// behind the view for that one pid: a hundred times a second for ten seconds, the view's joins
/// would cost more CPU than the rest of the variant.
async fn watch_backend(
    c: Client,
    pid: i32,
    deadline: Instant,
    cancel: tokio_util::sync::CancellationToken,
) -> Option<f64> {
    let stmt = "SELECT extract(epoch FROM clock_timestamp())::float8, \
                       EXISTS (SELECT 1 FROM pg_stat_get_activity($1))";
    while Instant::now() < deadline && !cancel.is_cancelled() {
        if let Ok(row) = c.one(stmt, &[&pid]).await
            && !row.get::<_, bool>(1)
        {
            return Some(row.get(0));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

async fn run(cfg: &LostClient, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let mut settings = ctx.variant.settings.clone();
    settings.push(("max_connections".into(), (cfg.sessions() + 10).to_string()));
    ctx.on_own_pg(&settings, true, async |own| match &own.netns {
        Some(ns) => run_on(cfg, ctx, &own.server, ns).await,
        None => anyhow::bail!("lost-client's server has no network namespace"),
    })
    .await
    .context("lost-client needs a throwaway PostgreSQL")?
}

/// What the partition left: the bookers' history, what the probe found, when the server ended
/// the holder's backend, and how long the holder had been gone.
struct Partitioned {
    driven: crate::workload::Driven,
    probe: Probe,
    gone: Option<f64>,
    waited_ms: f64,
}

/// The holder's connection is cut off once it sits idle in its payment call; the probe queues
/// first on the row, a watcher waits for the server to end the backend, and the bookers book
/// until the cut-off.
async fn partition(
    cfg: &LostClient,
    ctx: &VariantCtx<'_>,
    ns: &netns::Netns,
    (admin, local, booking): (&Client, &PgTarget, &Arc<Booking>),
    bookers: Vec<Box<dyn crate::workload::Client>>,
    clock: Clock,
) -> anyhow::Result<Partitioned> {
    let reported = Instant::now();
    let row = admin
        .one(
            "SELECT pid, client_port FROM pg_stat_activity WHERE application_name = $1",
            &[&ctx.app("w/holder")],
        )
        .await
        .context("could not find the holder's backend")?;
    let (pid, port): (i32, i32) = (row.get(0), row.get(1));
    let port = u16::try_from(port).context("the holder's connection has no TCP port")?;
    let prober = Prober::connect(local, &ctx.app("probe"), booking).await?;
    let locked_before_fault = prober.try_now().await?.is_none();

    // The holder's last reply is acknowledged by now: the connection is idle, with nothing
    // in flight, as a holder that has waited on its call for a while is.
    tokio::time::sleep_until(reported + cfg.partition_after).await;
    ns.partition(port).await?;
    let window = Window {
        clock,
        deadline: Instant::now() + cfg.deadline,
    };
    let watcher = local.connect(&ctx.app("backend-watch")).await?;
    let watch = tokio::spawn(watch_backend(
        watcher,
        pid,
        window.deadline,
        ctx.cancel.clone(),
    ));
    let (driven, probe) = book_behind_the_probe(
        ctx,
        (prober, admin),
        bookers,
        &window,
        cfg.retry_after,
        locked_before_fault,
    )
    .await?;
    let gone = watch.await.context("the backend watcher failed")?;
    let waited_ms = reported.elapsed().as_secs_f64() * 1000.0;
    Ok(Partitioned {
        driven,
        probe,
        gone,
        waited_ms,
    })
}

async fn run_on(
    cfg: &LostClient,
    ctx: &VariantCtx<'_>,
    server: &PgServer,
    ns: &netns::Netns,
) -> anyhow::Result<VariantRun> {
    let env = ctx.env;
    let schema = env.pg.schema.clone();
    let local = server.target(&schema);
    let booking = Arc::new(Booking::new(&local, &[]));
    let admin = local.connect(&ctx.app("admin")).await?;
    admin
        .batch_execute(&booking.ddl(1000))
        .await
        .context("could not create the scenario's tables")?;

    let clock = Clock::start();
    let holder_app = ctx.app("w/holder");
    let observer = Observer::start(
        &local,
        &ctx.app("observer"),
        clock,
        ctx.app("w/"),
        holder_app.clone(),
    )
    .await?;
    let provider = Arc::new(local.connect(&ctx.app("provider")).await?);
    let apps: Vec<String> = (0..cfg.clients)
        .map(|i| ctx.app(&format!("w/booker-{i}")))
        .collect();
    let bookers = connect_bookers(
        &local,
        &provider,
        &booking,
        &apps,
        (true, cfg.booker_payment),
    )
    .await?;

    let holder = HolderConfig::new(
        server.tcp_target(&schema, &cfg.client_settings()),
        local.clone(),
        holder_app.clone(),
        Vec::new(),
        cfg.payment_call,
    );
    let (victim, paying_at) = spawn_holder(env, Some(ns), holder).await?;
    let outcome = partition(cfg, ctx, ns, (&admin, &local, &booking), bookers, clock).await;
    victim.end().await;
    let samples = observer.finish().await;
    let Partitioned {
        driven,
        probe,
        gone,
        waited_ms,
    } = outcome?;
    let (bookings_committed, payments) = booking.tally(&admin, "%").await?;
    let input = crate::check::input::LostClientInput {
        observations: Observations {
            cut_off: driven.cut_off || probe.free_at_epoch.is_none(),
            holder_paying_epoch: paying_at,
            probe,
            waited_ms,
            samples,
            bookings_committed,
            payments,
            next_user_in_leaked_tx: None,
        },
        backend: Backend {
            gone_at_epoch: gone,
        },
        server: cfg.server_side(),
    };
    Ok(VariantRun::checked(
        &clock,
        driven.history,
        crate::check::Input::LostClient(Box::new(input)),
    ))
}
