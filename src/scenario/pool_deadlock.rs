//! pool-deadlock: request handlers that, while streaming the rows of an outer query, check out
//! a second connection from the same pool for an inner query. When every connection is held by
//! an outer query, every handler waits for a second one that never comes back.

use crate::env::postgres::Sql as _;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use futures::StreamExt;
use futures::future::BoxFuture;

use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun};
use crate::check::pool::{DEADLOCK_METRICS, DeadlockObservations};
use crate::error::UsageError;
use crate::observe;
use crate::workload::{self, OpError, Plan};

/// pool-deadlock's configuration: its parameters, parsed once.
pub struct PoolDeadlock {
    pool_size: usize,
    handlers: usize,
    rows: i32,
    /// Inner queries while the outer rows stream (`nested`), or the fix (`drain-first`).
    nested: bool,
    /// The pool's checkout timeout; `None` waits forever (deadpool's default).
    wait_timeout: Option<Duration>,
    deadline: Duration,
}

impl Code for PoolDeadlock {
    const NAME: &'static str = "pool-deadlock";
    const FILE: &'static str = include_str!("../../scenarios/pool-deadlock.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::count("pool_size", 1, 1000),
        ParamSpec::count("handlers", 1, 1000),
        ParamSpec::count("rows", 1, 100_000),
        ParamSpec::words("code", &["nested", "drain-first"]),
        ParamSpec::duration("wait_timeout", 0, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = DEADLOCK_METRICS;
    const SIZED_BY: &'static str = "pool_size";

    fn config(p: &Params) -> Result<PoolDeadlock, UsageError> {
        let d = p.duration("wait_timeout")?;
        // wait-timeout is judged on every checkout failing within a few timeouts.
        p.deadline_outlasts(
            4,
            "wait_timeout",
            d,
            "checkouts could not time out before it",
        )?;
        Ok(PoolDeadlock {
            pool_size: p.count("pool_size")?,
            handlers: p.count("handlers")?,
            rows: i32::try_from(p.count("rows")?).unwrap_or(i32::MAX),
            nested: p.switch("code", "nested", "drain-first")?,
            wait_timeout: (!d.is_zero()).then_some(d),
            deadline: p.duration("deadline")?,
        })
    }

    fn sessions(&self) -> usize {
        // Everything, setup included, goes through the pool.
        self.pool_size
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        run(self, ctx)
    }
}

/// Longest a handler waits at the start line for the others: a safety net, never reached.
const BARRIER_PATIENCE: Duration = Duration::from_secs(10);

/// Opens, for good, once as many handlers as can hold a connection at once (the smaller of
/// handlers and pool size) hold their first: the worst interleaving, every run. Handlers that
/// only get a connection later pass straight through; a barrier for all handlers would wait
/// for ones that cannot get a connection until someone gives one back.
struct StartLine {
    need: usize,
    arrived: std::sync::atomic::AtomicUsize,
    open: tokio::sync::watch::Sender<bool>,
}

impl StartLine {
    fn new(need: usize) -> StartLine {
        StartLine {
            need,
            arrived: std::sync::atomic::AtomicUsize::new(0),
            open: tokio::sync::watch::channel(false).0,
        }
    }

    async fn wait(&self) {
        let arrived = self
            .arrived
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if arrived >= self.need {
            self.open.send_replace(true);
        }
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|o| *o).await;
    }
}

struct Handler {
    pool: deadpool_postgres::Pool,
    /// Everyone holds a first connection before anyone asks for a second.
    start_line: Arc<StartLine>,
    rows: i32,
    nested: bool,
}

const OUTER: &str = "SELECT g FROM generate_series(1, $1) AS g";
const INNER: &str = "SELECT $1::int * 2";

impl Handler {
    async fn handle(&self) -> Result<(), OpError> {
        let outer = self.pool.get().await?;
        if self.nested {
            // The rows stream in while the handler works on each one: the connection is busy
            // until the stream is drained.
            let stream = outer
                .query_typed_raw(OUTER, [(self.rows, tokio_postgres::types::Type::INT4)])
                .await
                .map_err(OpError::from)?;
            futures::pin_mut!(stream);
            let mut first = true;
            while let Some(row) = stream.next().await {
                let g: i32 = row?.get(0);
                if first {
                    first = false;
                    self.wait_for_everyone().await;
                }
                let inner = self.pool.get().await?;
                inner.one(INNER, &[&g]).await?;
            }
            Ok(())
        } else {
            // The fix: read the outer rows into memory and give the connection back first.
            let rows = outer.rows(OUTER, &[&self.rows]).await?;
            self.wait_for_everyone().await;
            drop(outer);
            for row in rows {
                let g: i32 = row.get(0);
                let inner = self.pool.get().await?;
                inner.one(INNER, &[&g]).await?;
            }
            Ok(())
        }
    }

    async fn wait_for_everyone(&self) {
        let _ = tokio::time::timeout(BARRIER_PATIENCE, self.start_line.wait()).await;
    }
}

impl workload::Client for Handler {
    fn kind(&self) -> &'static str {
        "handle"
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.handle())
    }
    fn canceller(&self) -> Option<crate::env::postgres::Canceller> {
        // What hangs is the pool checkout, not a statement on the server.
        None
    }
}

async fn run(cfg: &PoolDeadlock, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let handlers = cfg.handlers;
    let pool = ctx.env.pg.pool(
        &ctx.app("w/pool"),
        cfg.pool_size,
        cfg.wait_timeout,
        deadpool_postgres::QueueMode::Fifo,
    )?;
    // A running service's pool is warm: the timeouts measured are checkouts, not connecting.
    crate::env::postgres::PgTarget::warm(&pool).await?;
    let start_line = Arc::new(StartLine::new(handlers.min(cfg.pool_size)));
    let (rows, nested) = (cfg.rows, cfg.nested);
    let clients: Vec<Box<dyn workload::Client>> = (0..handlers)
        .map(|_| {
            Box::new(Handler {
                pool: pool.clone(),
                start_line: start_line.clone(),
                rows,
                nested,
            }) as Box<dyn workload::Client>
        })
        .collect();

    let window = ctx.window(cfg.deadline);
    // The pool's counters as they were just before the cut-off, for a run that is cut off.
    let sampler = observe::pool::last_before(pool.clone(), window.deadline);
    let label = format!(" of {handlers} handlers done");
    let driven = ctx.drive(clients, Plan::Once, &window, label).await;
    // Cut off: the pool as it was just before the cut-off; else as the handlers left it.
    let last = sampler.finish().await;
    let pool_at_end = match driven.cut_off {
        true => last,
        false => observe::pool::state(&pool),
    };
    pool.close();
    ctx.terminate_sessions("w/").await?;
    Ok(VariantRun::checked(
        &window.clock,
        driven.history,
        crate::check::Input::PoolDeadlock(DeadlockObservations {
            pool_at_end,
            cut_off: driven.cut_off,
        }),
    ))
}
