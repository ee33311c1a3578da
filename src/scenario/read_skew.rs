//! read-skew: a report reads two related figures with two queries while a writer moves value
//! between them in one transaction. In each round every report reads the first figure, the
//! writer commits its move, and only then do the reports read the second: gates, not timing.

use crate::env::postgres::Sql as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;

use futures::future::BoxFuture;
use tokio_postgres::Client;

use super::isolation::{LEVELS, Level};
use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun};
use crate::check::isolation::{REPORT_METRICS, ReportObservations, kind};
use crate::error::UsageError;
use crate::workload::gate::Gates;
use crate::workload::{self, OpError, Plan};

/// read-skew's configuration: its parameters, parsed once.
pub struct ReadSkew {
    readers: usize,
    rounds: usize,
    /// Each query its own checkout from the pool (the drain-first code), or one transaction
    /// on one connection.
    pooled: bool,
    pool_size: usize,
    level: Level,
    total: i64,
    transfer: i64,
    step: Duration,
    deadline: Duration,
}

impl Code for ReadSkew {
    const NAME: &'static str = "read-skew";
    const FILE: &'static str = include_str!("../../scenarios/read-skew.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::count("readers", 1, 500),
        ParamSpec::count("rounds", 1, 1000),
        ParamSpec::words("read", &["pool", "transaction"]),
        ParamSpec::count("pool_size", 1, 1000),
        ParamSpec::words("isolation", LEVELS),
        ParamSpec::count("total", 2, 1_000_000_000),
        ParamSpec::count("transfer", 1, 1_000_000_000),
        ParamSpec::duration("step", 1, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = REPORT_METRICS;
    const SIZED_BY: &'static str = "readers";

    fn config(p: &Params) -> Result<ReadSkew, UsageError> {
        let (rounds, step) = (p.count("rounds")?, p.duration("step")?);
        p.deadline_outlasts(
            2,
            "rounds × 2 steps",
            step * (2 * rounds) as u32,
            "the rounds could not finish before it",
        )?;
        Ok(ReadSkew {
            readers: p.count("readers")?,
            rounds,
            pooled: p.switch("read", "pool", "transaction")?,
            pool_size: p.count("pool_size")?,
            level: p.parse("isolation")?,
            total: p.count("total")? as i64,
            transfer: p.count("transfer")? as i64,
            step,
            deadline: p.duration("deadline")?,
        })
    }

    fn sessions(&self) -> usize {
        // The readers' connections (or the pool), the writer and the setup session.
        let readers = if self.pooled {
            self.pool_size
        } else {
            self.readers
        };
        readers + 2
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        run(self, ctx)
    }
}

struct Shared {
    level: Level,
    settings: Vec<(String, String)>,
    read_first: String,
    read_second: String,
    move_sql: String,
    transfer: i64,
    /// Every reader has read the first figure (the writer waits here).
    first_read: Gates,
    /// The writer has committed its move (the readers wait here).
    moved: Gates,
    seen: Mutex<Vec<(i64, i64)>>,
}

enum Via {
    Pool(deadpool_postgres::Pool),
    Client(Client),
}

struct Reader {
    via: Via,
    shared: Arc<Shared>,
    round: usize,
}

impl Reader {
    async fn report(&mut self) -> Result<(), OpError> {
        let r = self.round;
        self.round += 1;
        let s = self.shared.clone();
        let result = self.read_both(r, &s).await;
        if let Via::Client(c) = &self.via {
            let _ = c.batch_execute("ROLLBACK").await;
        }
        let (a, b) = result?;
        if let Ok(mut seen) = s.seen.lock() {
            seen.push((a, b));
        }
        Ok(())
    }

    async fn read_both(&self, r: usize, s: &Shared) -> Result<(i64, i64), OpError> {
        let mut passed = false;
        let result = async {
            let a = match &self.via {
                Via::Pool(pool) => pool.get().await?.one(&s.read_first, &[]).await?,
                Via::Client(c) => {
                    let begin = crate::env::postgres::sql::begin_with(s.level.begin(), &s.settings);
                    c.batch_execute(&begin).await?;
                    c.one(&s.read_first, &[]).await?
                }
            };
            s.first_read.pass(r).await;
            s.moved.pass(r).await;
            passed = true;
            let b = match &self.via {
                Via::Pool(pool) => pool.get().await?.one(&s.read_second, &[]).await?,
                Via::Client(c) => {
                    let row = c.one(&s.read_second, &[]).await?;
                    c.batch_execute("COMMIT").await?;
                    row
                }
            };
            Ok::<_, OpError>((a.get(0), b.get(0)))
        }
        .await;
        if !passed {
            s.first_read.skip(r, r + 1);
            s.moved.skip(r, r + 1);
        }
        result
    }
}

impl workload::Client for Reader {
    fn kind(&self) -> &'static str {
        kind::REPORT
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.report())
    }
    fn canceller(&self) -> Option<crate::env::postgres::Canceller> {
        None
    }
}

/// Moves `transfer` from the first figure to the second, in one transaction, once per round
/// between the readers' two queries.
struct Writer {
    client: Client,
    shared: Arc<Shared>,
    round: usize,
}

impl Writer {
    async fn move_value(&mut self) -> Result<(), OpError> {
        let r = self.round;
        self.round += 1;
        let s = self.shared.clone();
        s.first_read.pass(r).await;
        let moved = self.client.exec(&s.move_sql, &[&s.transfer]).await;
        s.moved.pass(r).await;
        moved?;
        Ok(())
    }
}

impl workload::Client for Writer {
    fn kind(&self) -> &'static str {
        "move"
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.move_value())
    }
    fn canceller(&self) -> Option<crate::env::postgres::Canceller> {
        None
    }
}

async fn run(cfg: &ReadSkew, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let env = ctx.env;
    let figures = env.pg.table("figures");
    let half = cfg.total / 2;
    let _admin = ctx
        .admin(&format!(
            "DROP TABLE IF EXISTS {figures}; \
             CREATE TABLE {figures} (name text PRIMARY KEY, amount bigint NOT NULL); \
             INSERT INTO {figures} VALUES ('checking', {half}), ('savings', {});",
            cfg.total - half
        ))
        .await?;
    let parties = cfg.readers + 1;
    let shared = Arc::new(Shared {
        level: cfg.level,
        settings: ctx.variant.settings.clone(),
        read_first: format!("SELECT amount FROM {figures} WHERE name = 'checking'"),
        read_second: format!("SELECT amount FROM {figures} WHERE name = 'savings'"),
        // One statement, one transaction: both rows change at the same commit.
        move_sql: format!(
            "UPDATE {figures} SET amount = amount + CASE name WHEN 'checking' THEN -$1::bigint \
             ELSE $1::bigint END WHERE name IN ('checking', 'savings')"
        ),
        transfer: cfg.transfer,
        first_read: Gates::new(cfg.rounds, parties, cfg.step),
        moved: Gates::new(cfg.rounds, parties, cfg.step),
        seen: Mutex::new(Vec::new()),
    });
    let pool = match cfg.pooled {
        true => {
            let pool = ctx.pg().pool(
                &ctx.app("w/pool"),
                cfg.pool_size,
                None,
                deadpool_postgres::QueueMode::Fifo,
            )?;
            crate::env::postgres::PgTarget::warm(&pool).await?;
            Some(pool)
        }
        false => None,
    };
    let mut clients: Vec<Box<dyn workload::Client>> = Vec::new();
    for i in 0..cfg.readers {
        let via = match &pool {
            Some(p) => Via::Pool(p.clone()),
            None => Via::Client(ctx.pg().connect(&ctx.app(&format!("w/report-{i}"))).await?),
        };
        clients.push(Box::new(Reader {
            via,
            shared: shared.clone(),
            round: 0,
        }));
    }
    clients.push(Box::new(Writer {
        client: ctx.pg().connect(&ctx.app("w/writer")).await?,
        shared: shared.clone(),
        round: 0,
    }));
    let window = ctx.window(cfg.deadline);
    let driven = ctx
        .drive(clients, Plan::Times(cfg.rounds), &window, " reports")
        .await;
    if let Some(p) = &pool {
        p.close();
    }
    ctx.terminate_sessions("w/").await?;
    let seen = shared.seen.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(VariantRun::checked(
        &window.clock,
        driven.history,
        crate::check::Input::Reports(ReportObservations {
            invariant_total: cfg.total,
            seen,
            cut_off: driven.cut_off,
        }),
    ))
}
