//! check-then-act: withdrawals that read the balance, check it covers the amount, then
//! withdraw. Every withdrawer reads before anyone writes (a gate between the check and the
//! act), so the race shows on every run; the ledger and the final balance are the verdict.

use crate::env::postgres::Sql as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::future::Future;

use anyhow::Context;
use futures::future::BoxFuture;
use tokio_postgres::Client;

use super::isolation::{Conflicts, LEVEL_OF, LEVELS, Level};
use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun};
use crate::check::isolation::{ACCOUNT_METRICS, AccountObservations, REFUSED};
use crate::error::UsageError;
use crate::workload::gate::Gates;
use crate::workload::{self, OpError, Plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Update {
    /// `SET balance = balance - amount`: the write-up's code.
    Relative,
    /// `... WHERE balance >= amount`, its row count checked.
    Conditional,
    /// `SET balance = new, version = version + 1 WHERE version = read`, retried on 0 rows.
    Version,
}

crate::scenario::spec::words!(UPDATES, UPDATE_OF: Update = {
    "relative" => Update::Relative,
    "conditional" => Update::Conditional,
    "version" => Update::Version,
});

/// check-then-act's configuration: its parameters, parsed once.
pub struct CheckThenAct {
    withdrawers: usize,
    balance: i64,
    amount: i64,
    level: Level,
    for_update: bool,
    update: Update,
    retry: bool,
    max_retries: usize,
    /// Independent application instances, each with its own in-process per-account queue
    /// (0: no queue).
    instances: usize,
    step: Duration,
    deadline: Duration,
}

impl Code for CheckThenAct {
    const NAME: &'static str = "check-then-act";
    const FILE: &'static str = include_str!("../../scenarios/check-then-act.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::count("withdrawers", 2, 500),
        ParamSpec::count("balance", 1, 1_000_000_000),
        ParamSpec::count("amount", 1, 1_000_000_000),
        ParamSpec::words("isolation", LEVELS),
        ParamSpec::words("read", &["plain", "for-update"]),
        ParamSpec::words("update", UPDATES),
        ParamSpec::flag("retry"),
        ParamSpec::count("max_retries", 0, 1000),
        ParamSpec::count("queue_instances", 0, 16),
        ParamSpec::duration("step", 1, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = ACCOUNT_METRICS;
    const SIZED_BY: &'static str = "withdrawers";

    fn config(p: &Params) -> Result<CheckThenAct, UsageError> {
        let (withdrawers, step) = (p.count("withdrawers")?, p.duration("step")?);
        let for_update = p.switch("read", "for-update", "plain")?;
        // Behind a locking read each withdrawer waits out one step at the gate, in turn.
        if for_update {
            p.deadline_outlasts(
                1,
                "withdrawers × step",
                step * withdrawers as u32,
                "withdrawals serialised by the locking read could not all finish before it",
            )?;
        }
        // The harm needs something to lose: more asked for than the balance holds (else no
        // check can pass wrongly), and room for two withdrawals (else the first to commit is
        // the only valid one, and no error can cost a valid withdrawal).
        let (balance, amount) = (p.count("balance")?, p.count("amount")?);
        if withdrawers * amount <= balance {
            return Err(UsageError(format!(
                "withdrawers × amount ({withdrawers} × {amount}) fits in the balance ({balance}): \
                 nothing can be overdrawn. Raise withdrawers or amount, or lower balance, so \
                 that withdrawers × amount > balance"
            )));
        }
        if balance < 2 * amount {
            return Err(UsageError(format!(
                "the balance ({balance}) holds one withdrawal of {amount}: the first to commit \
                 is the only valid one, so no error can cost a valid withdrawal. Raise balance \
                 to at least 2 × amount ({}) or lower amount",
                2 * amount
            )));
        }
        // Instances with a queue each withdraw side by side, one withdrawal each a round: the
        // balance falls by instances × amount a round, and only a round that starts with room
        // for one withdrawal but not for all of them overdraws.
        let instances = p.count("queue_instances")?;
        if instances >= 2 && balance % (instances * amount) < amount {
            return Err(UsageError(format!(
                "with {instances} instances withdrawing {amount} side by side, the balance \
                 ({balance}) falls by {} a round and ends at {}, below one withdrawal: no \
                 round overdraws. Pick balance and amount so that balance mod (instances × \
                 amount) ≥ amount (the defaults: 100 mod 60 = 40 ≥ 30)",
                instances * amount,
                balance % (instances * amount)
            )));
        }
        Ok(CheckThenAct {
            withdrawers,
            balance: balance as i64,
            amount: amount as i64,
            level: p.one_of("isolation", LEVEL_OF)?,
            for_update,
            update: p.one_of("update", UPDATE_OF)?,
            retry: p.flag("retry")?,
            max_retries: p.count("max_retries")?,
            instances: p.count("queue_instances")?,
            step,
            deadline: p.duration("deadline")?,
        })
    }

    fn sessions(&self) -> usize {
        // One dedicated client per withdrawer, and the setup session.
        self.withdrawers + 1
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        run(self, ctx)
    }
}

const ACCOUNT: i32 = 1;

struct Shared {
    level: Level,
    update: Update,
    retry: bool,
    max_retries: usize,
    amount: i64,
    select: String,
    relative: String,
    conditional: String,
    versioned: String,
    insert: String,
    gates: Gates,
    conflicts: Conflicts,
    settings: Vec<(String, String)>,
}

/// An application instance's per-account queue: withdrawals on one account run one at a time
/// within the instance (a promise chain per key, in the write-up), and not across instances.
struct Queue {
    lock: tokio::sync::Mutex<()>,
    /// How many withdrawals have entered the queue: the k-th meets the other instances' k-th.
    entered: AtomicUsize,
}

struct Withdrawer {
    client: Client,
    id: i32,
    shared: Arc<Shared>,
    queue: Option<Arc<Queue>>,
}

impl Withdrawer {
    async fn withdraw(&mut self) -> Result<(), OpError> {
        let queue = self.queue.clone();
        let (_turn, gate) = match &queue {
            Some(q) => {
                let turn = q.lock.lock().await;
                (Some(turn), q.entered.fetch_add(1, Ordering::SeqCst))
            }
            None => (None, 0),
        };
        let mut tries = 0;
        loop {
            tries += 1;
            match self.attempt(gate, tries == 1).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let _ = self.client.batch_execute("ROLLBACK").await;
                    let s = &self.shared;
                    let version_lost = e.class == VERSION_CHANGED;
                    if version_lost && tries <= s.max_retries {
                        s.conflicts.retries.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if !s.conflicts.again(&e, s.retry, tries, s.max_retries + 1) {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// One transaction: read, check, (meet the others at the gate the first time), write.
    async fn attempt(&self, gate: usize, first: bool) -> Result<(), OpError> {
        let s = &self.shared;
        let c = &self.client;
        let begin = crate::env::postgres::sql::begin_with(s.level.begin(), &s.settings);
        if let Err(e) = c.batch_execute(&begin).await {
            if first {
                s.gates.skip(gate, gate + 1);
            }
            return Err(e.into());
        }
        let read = c.one(&s.select, &[&ACCOUNT]).await;
        if first {
            // Everyone has read before anyone writes (or a step has passed: a locking read
            // lets only one through at a time).
            s.gates.pass(gate).await;
        }
        let row = read?;
        let (balance, version): (i64, i64) = (row.get(0), row.get(1));
        if balance < s.amount {
            return Err(OpError::new(REFUSED));
        }
        match s.update {
            Update::Relative => {
                c.exec(&s.relative, &[&ACCOUNT, &s.amount]).await?;
            }
            Update::Conditional => {
                if c.exec(&s.conditional, &[&ACCOUNT, &s.amount]).await? == 0 {
                    return Err(OpError::new(REFUSED));
                }
            }
            Update::Version => {
                let new = balance - s.amount;
                if c.exec(&s.versioned, &[&ACCOUNT, &new, &version]).await? == 0 {
                    return Err(OpError::new(VERSION_CHANGED));
                }
            }
        }
        c.exec(&s.insert, &[&s.amount, &self.id]).await?;
        c.batch_execute("COMMIT").await?;
        Ok(())
    }
}

/// The version read is no longer the row's: someone wrote in between (retried).
const VERSION_CHANGED: &str = "version-changed";

impl workload::Client for Withdrawer {
    fn kind(&self) -> &'static str {
        crate::check::isolation::kind::WITHDRAW
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.withdraw())
    }
    fn canceller(&self) -> Option<crate::env::postgres::Canceller> {
        None
    }
}

/// What every withdrawer shares: the statements of the variant's way of withdrawing, the gates
/// that line them up, and the conflicts counted.
fn shared(cfg: &CheckThenAct, ctx: &VariantCtx<'_>, accounts: &str, ledger: &str) -> Shared {
    let lock = if cfg.for_update { " FOR UPDATE" } else { "" };
    let parties = match cfg.instances {
        0 => cfg.withdrawers,
        n => n,
    };
    Shared {
        level: cfg.level,
        update: cfg.update,
        retry: cfg.retry,
        max_retries: cfg.max_retries,
        amount: cfg.amount,
        select: format!("SELECT balance, version FROM {accounts} WHERE id = $1{lock}"),
        relative: format!("UPDATE {accounts} SET balance = balance - $2 WHERE id = $1"),
        conditional: format!(
            "UPDATE {accounts} SET balance = balance - $2 WHERE id = $1 AND balance >= $2"
        ),
        versioned: format!(
            "UPDATE {accounts} SET balance = $2, version = version + 1 \
             WHERE id = $1 AND version = $3"
        ),
        insert: format!("INSERT INTO {ledger} (amount, withdrawer) VALUES ($1, $2)"),
        // Only a locking read keeps withdrawers from reaching the gate, so only then is the
        // wait cut short at `step`; otherwise everyone arrives, and a late one on a loaded
        // machine is worth waiting for (up to a quarter of the deadline).
        gates: Gates::new(
            cfg.withdrawers,
            parties,
            match cfg.for_update {
                true => cfg.step,
                false => cfg.step.max(cfg.deadline / 4),
            },
        ),
        conflicts: Conflicts::default(),
        settings: ctx.variant.settings.clone(),
    }
}

async fn run(cfg: &CheckThenAct, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let env = ctx.env;
    let (accounts, ledger) = (env.pg.table("accounts"), env.pg.table("withdrawals"));
    let admin = ctx
        .admin(&format!(
            "DROP TABLE IF EXISTS {accounts}, {ledger}; \
             CREATE TABLE {accounts} (id int PRIMARY KEY, balance bigint NOT NULL, \
                                      version bigint NOT NULL DEFAULT 0); \
             CREATE TABLE {ledger} (id bigserial PRIMARY KEY, amount bigint NOT NULL, \
                                    withdrawer int NOT NULL); \
             INSERT INTO {accounts} (id, balance) VALUES ({ACCOUNT}, {});",
            cfg.balance
        ))
        .await?;
    let shared = Arc::new(shared(cfg, ctx, &accounts, &ledger));
    let queues: Vec<Arc<Queue>> = (0..cfg.instances)
        .map(|_| {
            Arc::new(Queue {
                lock: tokio::sync::Mutex::new(()),
                entered: AtomicUsize::new(0),
            })
        })
        .collect();
    let mut clients: Vec<Box<dyn workload::Client>> = Vec::new();
    for i in 0..cfg.withdrawers {
        // A dedicated client per withdrawer, connected before the clock starts.
        let app = ctx.app(&format!("w/withdrawer-{i}"));
        let client = ctx.pg().connect(&app).await?;
        clients.push(Box::new(Withdrawer {
            client,
            id: i as i32,
            shared: shared.clone(),
            queue: queues.get(i % cfg.instances.max(1)).cloned(),
        }));
    }
    let window = ctx.window(cfg.deadline);
    let driven = ctx
        .drive(clients, Plan::Once, &window, " withdrawals")
        .await;
    ctx.terminate_sessions("w/").await?;

    let final_balance: i64 = admin
        .one(
            &format!("SELECT balance FROM {accounts} WHERE id = $1"),
            &[&ACCOUNT],
        )
        .await
        .context("could not read the balance")?
        .get(0);
    let amounts: Vec<i64> = admin
        .rows(&format!("SELECT amount FROM {ledger} ORDER BY id"), &[])
        .await
        .context("could not read the ledger")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (failures, retries) = shared.conflicts.counts();
    let valid = ((cfg.balance / cfg.amount) as usize).min(cfg.withdrawers);
    Ok(VariantRun::checked(
        &window.clock,
        driven.history,
        crate::check::Input::Account(AccountObservations {
            initial_balance: cfg.balance,
            ledger: amounts,
            final_balance,
            serialization_failures: failures,
            retries,
            valid_withdrawals: valid,
            cut_off: driven.cut_off,
        }),
    ))
}
