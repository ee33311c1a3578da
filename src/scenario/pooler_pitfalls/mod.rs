//! pooler-pitfalls: features that keep state on the server connection, used through a
//! transaction-mode pooler that hands each transaction whichever server connection is free.
//!
//! The shape is the same for every pitfall. The first client (client 0) makes its move alone:
//! it prepares a statement, SETs something, takes a session lock or LISTENs. Then `tenants`
//! other clients run `rounds` rounds; in each round every tenant opens a transaction, reads
//! what the server shows it (its backend, its settings, the advisory locks its backend holds),
//! does its work, and waits at the round's gate until every tenant is inside its transaction
//! before it commits. With at least as many tenants as the pooler has server connections, every
//! server connection serves some tenant in every round, so the one client 0 left its state on
//! is always drawn by someone: no luck involved. What the tenants were told and what the
//! server showed them is the verdict.

use crate::env::postgres::Sql as _;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;

use anyhow::Context;
use tokio::time::Instant;
use tokio_postgres::Client;

use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun};
use crate::check::pooler::{Belief, METRICS, PoolerObservations, Seen, Settings};
use crate::env::postgres::PgTarget;
use crate::error::UsageError;
use crate::history::{Clock, History};
use crate::workload::gate::Gates;
use crate::workload::{self, Plan};

mod member;

use member::{Member, Phase};

/// The shortest leaked statement_timeout that lets client 0's own transaction finish (scaled).
const MIN_SET_TIMEOUT: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pitfall {
    PreparedStatements,
    SessionSettings,
    AdvisoryLocks,
    ListenNotify,
}

crate::scenario::spec::words!(PITFALLS, PITFALL_OF: Pitfall = {
    "prepared-statements" => Pitfall::PreparedStatements,
    "session-settings" => Pitfall::SessionSettings,
    "advisory-locks" => Pitfall::AdvisoryLocks,
    "listen-notify" => Pitfall::ListenNotify,
});

/// The time zone client 0 sets: far from any server's default, so a stray one shows.
const FOREIGN_TIMEZONE: &str = "Pacific/Chatham";

/// pooler-pitfalls' configuration: its parameters, parsed once.
pub struct PoolerPitfalls {
    pitfall: Pitfall,
    /// Named prepared statements (a driver's statement cache), or the unnamed statement.
    named: bool,
    /// `-c plan_cache_mode=force_custom_plan` as a startup option, as the write-up suggests.
    plan_cache_option: bool,
    /// SET without LOCAL.
    set_session: bool,
    /// pg_advisory_lock rather than pg_advisory_xact_lock.
    lock_session: bool,
    /// The listener's own connection straight to the server, not through the pooler.
    listen_direct: bool,
    tenants: usize,
    rounds: usize,
    step: Duration,
    work: Duration,
    set_timeout: Duration,
    deadline: Duration,
}

impl Code for PoolerPitfalls {
    const NAME: &'static str = "pooler-pitfalls";
    const FILE: &'static str = include_str!("../../../scenarios/pooler-pitfalls.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::words("pitfall", PITFALLS),
        ParamSpec::words("statements", &["named", "unnamed"]),
        ParamSpec::flag("plan_cache_option"),
        ParamSpec::words("set", &["session", "local"]),
        ParamSpec::words("advisory", &["session", "xact"]),
        ParamSpec::words("listener", &["pooler", "direct"]),
        ParamSpec::count("tenants", 2, 500),
        ParamSpec::count("rounds", 1, 100),
        ParamSpec::duration("step", 1, HOUR_MS),
        ParamSpec::duration("work", 0, HOUR_MS),
        ParamSpec::duration("set_timeout", 1, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = METRICS;
    const SIZED_BY: &'static str = "tenants";

    fn config(p: &Params) -> Result<PoolerPitfalls, UsageError> {
        let (rounds, step, work) = (p.count("rounds")?, p.duration("step")?, p.duration("work")?);
        // Each round takes the work plus at most one step at its gate.
        let all_rounds = (step + work) * (rounds as u32 + 2);
        p.deadline_outlasts(
            1,
            "(rounds + 2) × (step + work)",
            all_rounds,
            "the rounds could not finish before it",
        )?;
        // Every tenant's transaction takes the same advisory lock: they take turns, so their
        // work adds up (found by `bench claims`: 45 tenants × 9 rounds cut the xact fix off).
        let pitfall = p.one_of("pitfall", PITFALL_OF)?;
        if pitfall == Pitfall::AdvisoryLocks {
            p.deadline_outlasts(
                1,
                "tenants × rounds × work",
                work * (p.count("tenants")? * rounds) as u32,
                "transactions that take turns at the advisory lock could not all finish before it",
            )?;
        }
        // The leaked statement_timeout shows only by cancelling a tenant's work: a timeout no
        // shorter than the work cancels nothing (found by `bench claims`: 400 ms over 370 ms).
        let set_timeout = p.duration("set_timeout")?;
        if pitfall == Pitfall::SessionSettings && set_timeout >= work {
            return Err(UsageError(format!(
                "set_timeout ({}) must be shorter than work ({}): a leaked statement_timeout \
                 cancels a tenant's work only when the work outlasts it (--param set_timeout={} \
                 or less)",
                p.as_written(set_timeout),
                p.as_written(work),
                p.as_written(work / 2),
            )));
        }
        // Client 0 reads what its transaction shows right after its SET: a timeout shorter
        // than that query cancels it, the transaction rolls back and the SET with it, and there
        // is nothing to leak (found by `bench claims`: 57ms at time scale 0.05, 2.85 ms).
        if pitfall == Pitfall::SessionSettings {
            p.scaled_at_least(
                "set_timeout",
                MIN_SET_TIMEOUT,
                "it cancels the setting client's own next query, and the SET is rolled back \
                 with it",
            )?;
        }
        Ok(PoolerPitfalls {
            pitfall,
            named: p.switch("statements", "named", "unnamed")?,
            plan_cache_option: p.flag("plan_cache_option")?,
            set_session: p.switch("set", "session", "local")?,
            lock_session: p.switch("advisory", "session", "xact")?,
            listen_direct: p.switch("listener", "direct", "pooler")?,
            tenants: p.count("tenants")?,
            rounds,
            step,
            work,
            set_timeout,
            deadline: p.duration("deadline")?,
        })
    }

    fn unavailable(&self, env: &crate::env::Env) -> Option<String> {
        env.direct_path_missing()
    }

    fn sessions(&self) -> usize {
        // Through the pooler at most one server connection per client (client 0 and the
        // tenants); straight to the server the setup session and a direct listener.
        self.tenants + 3
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        run(self, ctx)
    }
}

/// Names of this variant run's own state on the server: unique per run, so that nothing one
/// run leaves on a pooled server connection can meet the next.
struct Names {
    /// The prepared statement, the same in every client (as the same code in every process).
    statement: String,
    /// The advisory lock key (two int4 halves; the second is the write-up's 42).
    key: (i64, i64),
    channel: String,
}

/// What every client shares: the gates, and what they saw.
struct Shared {
    pitfall: Pitfall,
    named: bool,
    lock_session: bool,
    set_session: bool,
    names: Names,
    work: Duration,
    set_timeout: String,
    gates: Gates,
    clock: Clock,
    seen: Mutex<Vec<Seen>>,
    beliefs: Mutex<Vec<Belief>>,
    failed_unlocks: AtomicUsize,
    sent: AtomicUsize,
    /// Apart from the rest: the connections' own tasks fill them, and must not keep the
    /// connections (below) alive.
    received: Arc<Mutex<BTreeSet<String>>>,
    misdelivered: Arc<AtomicUsize>,
    /// Every connection opened, for the clean-up round; emptied at the end, which closes them.
    conns: Mutex<Vec<Arc<Client>>>,
}

impl Shared {
    fn now(&self) -> f64 {
        self.clock.now_ms()
    }

    fn believe(&self, client: usize) -> Option<usize> {
        let mut b = self.beliefs.lock().ok()?;
        b.push(Belief {
            client,
            from_ms: self.now(),
            to_ms: None,
        });
        Some(b.len() - 1)
    }

    fn let_go(&self, belief: Option<usize>) {
        let now = self.now();
        if let (Some(i), Ok(mut b)) = (belief, self.beliefs.lock())
            && let Some(b) = b.get_mut(i)
        {
            b.to_ms = Some(now);
        }
    }
}

/// Puts a history of another phase after this one's, its clients numbered from `offset`.
fn absorb(into: &mut History, from: History, offset: usize) {
    into.ops.extend(from.ops.into_iter().map(|mut o| {
        o.client += offset;
        o
    }));
    into.lost_clients
        .extend(from.lost_clients.into_iter().map(|mut l| {
            l.client += offset;
            l
        }));
    into.ops.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
}

/// The server's own defaults of the settings a leaked SET would change.
async fn server_defaults(admin: &Client) -> anyhow::Result<Settings> {
    let row = admin
        .one(
            "SELECT current_setting('statement_timeout'), current_setting('TimeZone'), \
                    current_setting('plan_cache_mode')",
            &[],
        )
        .await
        .context("could not read the server's defaults")?;
    Ok(Settings {
        statement_timeout: row.get(0),
        timezone: row.get(1),
        plan_cache_mode: row.get(2),
    })
}

/// What every client of the variant shares: names unique to the run (a statement, an advisory
/// lock key, a channel), the gates, and what they saw.
fn shared(cfg: &PoolerPitfalls, clock: Clock) -> Shared {
    let nonce = rand::random::<u32>() & 0x7fff_ffff;
    let names = Names {
        statement: format!("get_seat_{nonce:08x}"),
        key: (i64::from(nonce), 42),
        channel: format!("locklab_{nonce:08x}"),
    };
    Shared {
        pitfall: cfg.pitfall,
        named: cfg.named,
        lock_session: cfg.lock_session,
        set_session: cfg.set_session,
        names,
        work: cfg.work,
        set_timeout: format!("{}ms", cfg.set_timeout.as_millis().max(1)),
        gates: Gates::new(cfg.rounds, cfg.tenants, cfg.step),
        clock,
        seen: Mutex::new(Vec::new()),
        beliefs: Mutex::new(Vec::new()),
        failed_unlocks: AtomicUsize::new(0),
        sent: AtomicUsize::new(0),
        received: Arc::new(Mutex::new(BTreeSet::new())),
        misdelivered: Arc::new(AtomicUsize::new(0)),
        conns: Mutex::new(Vec::new()),
    }
}

/// What the clients saw and the server kept, for the checker.
fn observations(
    cfg: &PoolerPitfalls,
    shared: &Shared,
    defaults: Settings,
    locks_left: i64,
    cut_off: bool,
) -> PoolerObservations {
    PoolerObservations {
        defaults,
        setters: match cfg.pitfall {
            Pitfall::SessionSettings => BTreeSet::from([0]),
            _ => BTreeSet::new(),
        },
        seen: shared.seen.lock().map(|s| s.clone()).unwrap_or_default(),
        beliefs: shared.beliefs.lock().map(|b| b.clone()).unwrap_or_default(),
        failed_unlocks: shared.failed_unlocks.load(Ordering::Relaxed),
        locks_left,
        notifications_sent: shared.sent.load(Ordering::Relaxed),
        received: shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default(),
        misdelivered: shared.misdelivered.load(Ordering::Relaxed),
        cut_off,
    }
}

async fn run(cfg: &PoolerPitfalls, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let env = ctx.env;
    let admin = ctx.admin("").await?;
    let defaults = server_defaults(&admin).await?;
    let clock = Clock::start();
    let shared = Arc::new(shared(cfg, clock));
    let options = cfg
        .plan_cache_option
        .then(|| "-c plan_cache_mode=force_custom_plan".to_string());
    let pooled = ctx.pg().clone();
    let member = |id: usize, target: &PgTarget| Member {
        id,
        shared: shared.clone(),
        target: target.clone(),
        app: ctx.app(&format!("w/client-{id}")),
        options: options.clone(),
        conn: None,
        prepared: false,
        belief: None,
        round: 0,
    };
    let first_target = match cfg.pitfall == Pitfall::ListenNotify && cfg.listen_direct {
        true => &env.direct,
        false => &pooled,
    };
    let first = Arc::new(tokio::sync::Mutex::new(member(0, first_target)));
    let deadline = Instant::now() + cfg.deadline;
    let (done, ticker) = ctx.progress_counter(" tenant transactions".into());

    let phase = |closing| -> Vec<Box<dyn workload::Client>> {
        vec![Box::new(Phase {
            member: first.clone(),
            closing,
        })]
    };
    let opened = workload::drive(
        phase(false),
        Plan::Once,
        clock,
        deadline,
        &ctx.cancel,
        done.clone(),
    )
    .await;
    let mut history = opened.history;
    let mut cut_off = opened.cut_off;
    let tenants: Vec<Box<dyn workload::Client>> = (1..=cfg.tenants)
        .map(|id| Box::new(member(id, &pooled)) as Box<dyn workload::Client>)
        .collect();
    let rounds = Plan::Times(cfg.rounds);
    let driven = workload::drive(tenants, rounds, clock, deadline, &ctx.cancel, done.clone()).await;
    cut_off |= driven.cut_off;
    absorb(&mut history, driven.history, 1);
    // Only a session lock has a closing move: the unlock the application sends at the end.
    if cfg.pitfall == Pitfall::AdvisoryLocks && cfg.lock_session {
        let closed =
            workload::drive(phase(true), Plan::Once, clock, deadline, &ctx.cancel, done).await;
        cut_off |= closed.cut_off;
        absorb(&mut history, closed.history, 0);
    }
    if cfg.pitfall == Pitfall::ListenNotify {
        // Notifications already sent arrive within milliseconds; give them a step.
        let until = Instant::now() + cfg.step;
        while Instant::now() < until {
            let got = shared.received.lock().map(|r| r.len()).unwrap_or(0);
            if got >= shared.sent.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(ticker);

    let (k1, k2) = shared.names.key;
    let locks_left = count_locks(&admin, k1, k2).await?;
    clean_up(&shared, cfg).await;

    let observations = observations(cfg, &shared, defaults, locks_left, cut_off);
    Ok(VariantRun::checked(
        &clock,
        history,
        crate::check::Input::Pooler(observations),
    ))
}

async fn count_locks(admin: &Client, k1: i64, k2: i64) -> anyhow::Result<i64> {
    Ok(admin
        .one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
               AND classid = ($1::bigint)::oid AND objid = ($2::bigint)::oid AND objsubid = 2",
            &[&k1, &k2],
        )
        .await
        .context("could not count the advisory locks left")?
        .get(0))
}

/// Takes back what this run left on the pooler's server connections, and only that: its
/// statement, its lock, its channel, the settings client 0 set. As in the rounds, every
/// connection holds a transaction open at once, so every server connection is visited.
async fn clean_up(shared: &Arc<Shared>, cfg: &PoolerPitfalls) {
    let conns = shared
        .conns
        .lock()
        .map(|mut c| std::mem::take(&mut *c))
        .unwrap_or_default();
    let gates = Arc::new(Gates::new(1, conns.len(), cfg.step));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| {
            let (gates, shared) = (gates.clone(), shared.clone());
            tokio::spawn(async move {
                let n = &shared.names;
                let body = async {
                    c.batch_execute("BEGIN").await?;
                    for _ in 0..1000 {
                        let released: bool = c
                            .one(
                                "SELECT pg_advisory_unlock($1::int, $2::int)",
                                &[&n.key.0, &n.key.1],
                            )
                            .await?
                            .get(0);
                        if !released {
                            break;
                        }
                    }
                    let row = c
                        .one(
                            "SELECT current_setting('statement_timeout'), \
                                    current_setting('TimeZone'), \
                                    EXISTS (SELECT 1 FROM pg_prepared_statements WHERE name = $1)",
                            &[&n.statement],
                        )
                        .await?;
                    let (timeout, tz, prepared): (String, String, bool) =
                        (row.get(0), row.get(1), row.get(2));
                    if timeout == shared.set_timeout {
                        c.batch_execute("RESET statement_timeout").await?;
                    }
                    if tz == FOREIGN_TIMEZONE {
                        c.batch_execute("RESET TimeZone").await?;
                    }
                    if prepared {
                        c.batch_execute(&format!("DEALLOCATE {}", n.statement))
                            .await?;
                    }
                    c.batch_execute(&format!("UNLISTEN \"{}\"", n.channel))
                        .await?;
                    Ok::<(), tokio_postgres::Error>(())
                };
                let r = body.await;
                gates.pass(0).await;
                let end = if r.is_ok() { "COMMIT" } else { "ROLLBACK" };
                let _ = c.batch_execute(end).await;
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    // The pooler's server connections are left running: ending them here could hand the
    // next variant's first clients a connection being torn down.
}
