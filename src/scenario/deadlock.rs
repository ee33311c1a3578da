//! deadlock: two transfers lock the same two accounts in opposite orders. Each takes its first
//! row, then both meet at a gate, then each asks for the other's row: a cycle on every run.
//! PostgreSQL finds it after deadlock_timeout and ends one transaction with 40P01.

use crate::env::postgres::Sql as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;

use anyhow::Context;
use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_postgres::Client;

use super::isolation::Conflicts;
use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun};
use crate::check::isolation::{TRANSFER_METRICS, TransferObservations, kind};
use crate::error::UsageError;
use crate::workload::gate::Gates;
use crate::workload::{self, OpError, Plan};

/// deadlock's configuration: its parameters, parsed once.
pub struct Deadlock {
    pairs: usize,
    ordered: bool,
    retry: bool,
    max_retries: usize,
    deadlock_timeout: Duration,
    step: Duration,
    deadline: Duration,
}

impl Code for Deadlock {
    const NAME: &'static str = "deadlock";
    const FILE: &'static str = include_str!("../../scenarios/deadlock.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::count("pairs", 1, 250),
        ParamSpec::words("order", &["opposite", "ordered"]),
        ParamSpec::flag("retry"),
        ParamSpec::count("max_retries", 0, 1000),
        ParamSpec::duration("deadlock_timeout", 1, HOUR_MS),
        ParamSpec::duration("step", 1, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = TRANSFER_METRICS;
    const SIZED_BY: &'static str = "pairs";

    fn config(p: &Params) -> Result<Deadlock, UsageError> {
        let (timeout, step) = (p.duration("deadlock_timeout")?, p.duration("step")?);
        p.deadline_outlasts(
            3,
            "deadlock_timeout + step",
            timeout + step,
            "a deadlock could not be detected and retried before it",
        )?;
        Ok(Deadlock {
            pairs: p.count("pairs")?,
            ordered: p.switch("order", "ordered", "opposite")?,
            retry: p.flag("retry")?,
            max_retries: p.count("max_retries")?,
            deadlock_timeout: timeout,
            step,
            deadline: p.duration("deadline")?,
        })
    }

    fn sessions(&self) -> usize {
        // Two transfers a pair, each on a connection of its own, and the setup session.
        2 * self.pairs + 1
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        run(self, ctx)
    }
}

struct Shared {
    /// `BEGIN`, with `SET LOCAL deadlock_timeout` where the role may set it.
    begin: String,
    debit: String,
    credit: String,
    retry: bool,
    max_retries: usize,
    gates: Gates,
    conflicts: Conflicts,
    victim_waits_ms: Mutex<Vec<f64>>,
    /// deadlock_timeout as the transfers' own transactions read it, in ms.
    effective_timeout_ms: Mutex<Option<f64>>,
}

struct Transfer {
    client: Client,
    pair: usize,
    from: i32,
    /// The row locked first, then the second.
    order: [i32; 2],
    shared: Arc<Shared>,
}

const AMOUNT: i64 = 10;

impl Transfer {
    async fn transfer(&mut self) -> Result<(), OpError> {
        let s = &self.shared;
        s.conflicts
            .retrying(&self.client, s.retry, s.max_retries, |first| {
                self.attempt(first)
            })
            .await
    }

    async fn touch(&self, account: i32) -> Result<u64, tokio_postgres::Error> {
        let s = &self.shared;
        match account == self.from {
            true => self.client.exec(&s.debit, &[&account, &AMOUNT]).await,
            false => self.client.exec(&s.credit, &[&account, &AMOUNT]).await,
        }
    }

    async fn attempt(&self, first: bool) -> Result<(), OpError> {
        let s = &self.shared;
        let first_lock = async {
            self.client.batch_execute(&s.begin).await?;
            // pg_settings gives the value this transaction runs under, in milliseconds.
            let timeout: f64 = self
                .client
                .one(
                    "SELECT setting::float8 FROM pg_settings WHERE name = 'deadlock_timeout'",
                    &[],
                )
                .await?
                .get(0);
            if let Ok(mut t) = s.effective_timeout_ms.lock() {
                *t = Some(timeout);
            }
            self.touch(self.order[0]).await
        }
        .await;
        if first {
            // Both transfers of the pair hold their first row before either asks for its second.
            s.gates.pass(self.pair).await;
        }
        first_lock?;
        let asked = Instant::now();
        if let Err(e) = self.touch(self.order[1]).await {
            let e = OpError::from(e);
            if e.class == crate::history::class::DEADLOCK
                && let Ok(mut w) = s.victim_waits_ms.lock()
            {
                w.push(asked.elapsed().as_secs_f64() * 1000.0);
            }
            return Err(e);
        }
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

impl workload::Client for Transfer {
    fn kind(&self) -> &'static str {
        kind::TRANSFER
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.transfer())
    }
    fn canceller(&self) -> Option<crate::env::postgres::Canceller> {
        None
    }
}

async fn run(cfg: &Deadlock, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let env = ctx.env;
    let accounts = env.pg.table("transfer_accounts");
    let admin = ctx
        .admin(&format!(
            "DROP TABLE IF EXISTS {accounts}; \
             CREATE TABLE {accounts} (id int PRIMARY KEY, balance bigint NOT NULL); \
             INSERT INTO {accounts} SELECT g, 1000 FROM generate_series(0, {}) g;",
            2 * cfg.pairs - 1
        ))
        .await?;
    let total = || async {
        admin
            .one(&format!("SELECT sum(balance)::bigint FROM {accounts}"), &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .context("could not add up the balances")
    };
    let total_before = total().await?;
    // deadlock_timeout is a superuser setting: set it per transaction where the role may,
    // else the server's own value stands (and the table shows which one applied).
    let wanted = format!("{}ms", cfg.deadlock_timeout.as_millis().max(1));
    let may_set = admin
        .batch_execute(&format!(
            "BEGIN; SET LOCAL deadlock_timeout = '{wanted}'; ROLLBACK"
        ))
        .await
        .is_ok();
    if !may_set {
        let _ = admin.batch_execute("ROLLBACK").await;
    }
    let mut settings = ctx.variant.settings.clone();
    if may_set {
        settings.push(("deadlock_timeout".into(), wanted));
    }
    let shared = Arc::new(Shared {
        begin: crate::env::postgres::sql::begin(&settings),
        debit: format!("UPDATE {accounts} SET balance = balance - $2 WHERE id = $1"),
        credit: format!("UPDATE {accounts} SET balance = balance + $2 WHERE id = $1"),
        retry: cfg.retry,
        max_retries: cfg.max_retries,
        gates: Gates::new(cfg.pairs, 2, cfg.step),
        conflicts: Conflicts::default(),
        victim_waits_ms: Mutex::new(Vec::new()),
        effective_timeout_ms: Mutex::new(None),
    });
    let mut clients: Vec<Box<dyn workload::Client>> = Vec::new();
    for pair in 0..cfg.pairs {
        let (a, b) = (2 * pair as i32, 2 * pair as i32 + 1);
        for (from, to) in [(a, b), (b, a)] {
            let order = match cfg.ordered {
                true => [from.min(to), from.max(to)],
                false => [from, to],
            };
            let app = ctx.app(&format!("w/transfer-{from}-{to}"));
            clients.push(Box::new(Transfer {
                client: ctx.pg().connect(&app).await?,
                pair,
                from,
                order,
                shared: shared.clone(),
            }));
        }
    }
    let window = ctx.window(cfg.deadline);
    let driven = ctx.drive(clients, Plan::Once, &window, " transfers").await;
    ctx.terminate_sessions("w/").await?;
    let total_after = total().await?;
    let (deadlocks, retries) = shared.conflicts.counts();
    Ok(VariantRun::checked(
        &window.clock,
        driven.history,
        crate::check::Input::Transfers(TransferObservations {
            deadlocks,
            victim_waits_ms: shared
                .victim_waits_ms
                .lock()
                .map(|w| w.clone())
                .unwrap_or_default(),
            retries,
            deadlock_timeout_ms: shared
                .effective_timeout_ms
                .lock()
                .ok()
                .and_then(|t| *t)
                .unwrap_or(f64::NAN),
            total_before,
            total_after,
            cut_off: driven.cut_off,
        }),
    ))
}
