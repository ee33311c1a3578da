//! Running one variant of a step file: a schema of the variant's own, the `[setup]` SQL, every
//! session's clients driven through their steps in the order their conditions allow, the
//! server's view sampled (who waits on a lock, who sits idle in a transaction), faults and
//! their probes, then the `[metrics]` queries, and the schema dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio_postgres::Client;

use super::{Connect, StepVariant};
use crate::check::steps::{Observations, Rounds, Section, SessionSeen};
use crate::env::postgres::{Canceller, PgTarget};
use crate::scenario::{VariantCtx, VariantRun, Window};
use crate::workload::{self, Plan};

use super::client::{StepClient, token};
use super::observe::{query_number, sample};
use super::sql::statements;

/// No current step.
pub(super) const IDLE: usize = usize::MAX;

/// A counter one client writes with every step and others only read now and then, on a cache
/// line of its own: side by side, clients' counters shared lines that their cores passed back
/// and forth with every step.
#[repr(align(64))]
pub(super) struct Slot(pub(super) AtomicUsize);

impl Slot {
    pub(super) fn new(n: usize) -> Slot {
        Slot(AtomicUsize::new(n))
    }
}

impl std::ops::Deref for Slot {
    type Target = AtomicUsize;
    fn deref(&self) -> &AtomicUsize {
        &self.0
    }
}

/// What the clients, the sampler and the probes share during a run.
pub(super) struct Shared {
    /// Per session and step that a condition names: per round, the clients that completed
    /// it (None for a step nothing waits for, which then costs its clients nothing).
    pub(super) completed: Vec<Vec<Option<Mutex<PerRound>>>>,
    /// Per session and step: one past the latest round in which a client of the session was
    /// seen waiting on a lock in it (0: never).
    pub(super) waiting_seen: Vec<Vec<AtomicUsize>>,
    /// Per session and client: the step it is in (IDLE between steps).
    pub(super) current: Vec<Vec<Slot>>,
    /// Per session and client: the round it is in.
    pub(super) round: Vec<Vec<Slot>>,
    /// Per session and client: it runs no more rounds (all run, or its fault struck).
    pub(super) ended: Vec<Vec<AtomicBool>>,
    /// Per session: the rounds it runs (usize::MAX: until the cut-off).
    pub(super) planned: Vec<usize>,
    /// Per session: the round in which each of its faulted clients struck its fault.
    pub(super) faulted_in: Vec<Mutex<Vec<usize>>>,
    /// Per `session.step`: (client, round) pairs settled, summed as clients end.
    pub(super) settled: Mutex<BTreeMap<String, usize>>,
    /// Bumped whenever a condition may have come true.
    pub(super) changed: tokio::sync::watch::Sender<u64>,
    /// Connections of frozen sessions, kept open until the run ends.
    pub(super) frozen: Mutex<Vec<crate::env::postgres::Wire>>,
    /// Pool sessions' pools, kept until the run ends: a connection leaked back into one stays
    /// open (and in its transaction) after every client of the pool has ended.
    pub(super) pools: Mutex<Vec<deadpool_postgres::Pool>>,
    pub(super) seen: Mutex<Vec<SessionSeen>>,
    pub(super) waited_ms: Mutex<BTreeMap<String, f64>>,
    pub(super) probes: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The run's clock and cut-off, once they start (after every client has connected).
    pub(super) window: std::sync::OnceLock<Window>,
    pub(super) sections: Mutex<Vec<Section>>,
    /// Ctrl-C or SIGTERM.
    pub(super) cancel: tokio_util::sync::CancellationToken,
    /// Per `session.step`: clients that skipped it, after an earlier step of theirs failed.
    pub(super) skipped: Mutex<BTreeMap<String, usize>>,
    /// Per `session.step`: failed attempts whose round was run again.
    pub(super) retried: Mutex<BTreeMap<String, usize>>,
    /// Per session: rounds completed, failed for good, and run again.
    pub(super) rounds: Mutex<Vec<Rounds>>,
}

/// Per round, the clients that completed a step some condition names.
pub(super) struct PerRound {
    counts: std::collections::VecDeque<usize>,
    /// The round `counts[0]` counts.
    base: usize,
    /// The sessions that wait on the step, for a step of a session looping until the cut-off:
    /// rounds each of their clients has passed are dropped (else one more a round, for as
    /// long as the loop runs). None: every round is kept.
    waiters: Option<Vec<usize>>,
    added: usize,
}

impl PerRound {
    fn new(waiters: Option<Vec<usize>>) -> PerRound {
        PerRound {
            counts: std::collections::VecDeque::new(),
            base: 0,
            waiters,
            added: 0,
        }
    }

    /// Clients that completed the step in `round`.
    pub(super) fn get(&self, round: usize) -> usize {
        match round.checked_sub(self.base) {
            Some(i) => self.counts.get(i).copied().unwrap_or(0),
            // Dropped: every waiting client had passed it.
            None => usize::MAX,
        }
    }

    /// One more client completed the step in `round`; now and then, the rounds every waiting
    /// client still running has passed (as `rounds` shows them) are dropped.
    pub(super) fn add(
        &mut self,
        round: usize,
        (rounds, ended): (&[Vec<Slot>], &[Vec<AtomicBool>]),
    ) {
        let Some(i) = round.checked_sub(self.base) else {
            return;
        };
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.added += 1;
        if !self.added.is_multiple_of(256) {
            return;
        }
        let Some(waiters) = &self.waiters else {
            return;
        };
        use std::sync::atomic::Ordering::Relaxed;
        // A client that runs no more rounds asks about none: every round is passed for it.
        let passed = waiters
            .iter()
            .flat_map(|w| rounds.get(*w).into_iter().flatten().zip(&ended[*w]))
            .filter(|(_, gone)| !gone.load(Relaxed))
            .map(|(r, _)| r.load(Relaxed))
            .min()
            .unwrap_or(usize::MAX);
        while self.base < passed && !self.counts.is_empty() {
            self.counts.pop_front();
            self.base += 1;
        }
    }
}

impl Shared {
    pub(super) fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

pub(super) async fn run(v: &StepVariant, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let schema = format!(
        "{}_s{:06x}",
        ctx.env.pg.schema,
        rand::random::<u32>() & 0xff_ffff
    );
    let admin = ctx.env.direct.connect(&ctx.app("admin")).await?;
    // Straight to the server, the admin session keeps its search_path; through a pooler each
    // statement carries it, for its own transaction only.
    let scope = match ctx.env.direct_is_pooled() {
        false => Scope::Session,
        true => Scope::Each(format!("SET LOCAL search_path TO \"{schema}\"; ")),
    };
    let keep = match scope {
        Scope::Session => format!("SET search_path TO \"{schema}\""),
        Scope::Each(_) => String::new(),
    };
    admin
        .batch_execute(&format!("CREATE SCHEMA \"{schema}\"; {keep}"))
        .await
        .context("could not create the variant's schema")?;
    // A key a killed holder left in an earlier repeat must not block this one.
    let redis = v
        .spec
        .sessions
        .iter()
        .flat_map(|s| &s.steps)
        .any(|t| matches!(t.action, super::Action::Redis(_)));
    if redis {
        ctx.remove_redis_keys().await?;
    }
    let result = run_in(v, ctx, (&admin, &scope), &schema).await;
    if redis {
        let _ = ctx.remove_redis_keys().await;
    }
    let _ = ctx.terminate_sessions("w/").await;
    let _ = ctx.terminate_sessions("probe").await;
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .context("could not drop the variant's schema")?;
    result
}

pub(super) async fn run_in(
    v: &StepVariant,
    ctx: &VariantCtx<'_>,
    (admin, scope): (&Client, &Scope),
    schema: &str,
) -> anyhow::Result<VariantRun> {
    for (i, stmt) in statements(&v.setup).iter().enumerate() {
        admin
            .batch_execute(&scope.wrap(stmt))
            .await
            .with_context(|| {
                format!(
                    "[setup] statement {} (`{}`) failed",
                    i + 1,
                    stmt.trim().chars().take(60).collect::<String>()
                )
            })?;
    }
    let shared = Arc::new(Shared {
        cancel: ctx.cancel.clone(),
        ..shared(v)
    });
    let clients = connect(v, ctx, schema, &shared).await?;
    let window = ctx.window(v.deadline);
    let _ = shared.window.set(window);
    let sampler = sample(v, ctx, window.clock, &shared).await?;
    let driven = ctx
        .drive(clients, Plan::Times(usize::MAX), &window, " steps done")
        .await;
    let probes: Vec<_> = shared
        .probes
        .lock()
        .map(|mut p| p.drain(..).collect())
        .unwrap_or_default();
    for p in probes {
        let _ = p.await;
    }
    // The run's end as the checker sees it: the cut-off at the latest. Clients still in flight
    // then are waited for a moment more, and that moment is the harness's, not theirs.
    let end_ms = window.clock.now_ms().min(v.deadline.as_secs_f64() * 1000.0);
    sampler.finish().await;
    // Frozen sessions end with the run: what they held is freed for the next variant.
    ctx.terminate_sessions("w/").await?;
    if let Ok(mut f) = shared.frozen.lock() {
        f.clear();
    }
    if let Ok(mut p) = shared.pools.lock() {
        p.clear();
    }
    let mut queries = BTreeMap::new();
    for (name, sql) in &v.queries {
        queries.insert(
            name.clone(),
            query_number(admin, &scope.wrap(sql))
                .await
                .with_context(|| format!("[metrics] `{name}` failed"))?,
        );
    }
    let obs = Observations {
        layout: v.layout.clone(),
        seen: shared.seen.lock().map(|s| s.clone()).unwrap_or_default(),
        waited_ms: shared
            .waited_ms
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default(),
        queries,
        cut_off: driven.cut_off,
        end_ms,
        sections: shared
            .sections
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default(),
        skipped: shared.skipped.lock().map(|s| s.clone()).unwrap_or_default(),
        retried: shared.retried.lock().map(|s| s.clone()).unwrap_or_default(),
        rounds: shared.rounds.lock().map(|s| s.clone()).unwrap_or_default(),
        settled: shared
            .settled
            .lock()
            .map(|s| Some(s.clone()))
            .unwrap_or_default(),
    };
    Ok(VariantRun::checked(
        &window.clock,
        driven.history,
        crate::check::Input::Steps(Box::new(obs)),
    ))
}

pub(super) fn shared(v: &StepVariant) -> Shared {
    // The steps some condition names, and the sessions that wait on each: only their
    // completions are counted per round.
    let waiters = |si: usize, ti: usize| -> Vec<usize> {
        (0..v.sessions.len())
            .filter(|w| {
                v.sessions[*w]
                    .after
                    .iter()
                    .flatten()
                    .any(|a| (a.session, a.step) == (si, ti) && !a.waiting)
            })
            .collect()
    };
    Shared {
        completed: v
            .sessions
            .iter()
            .enumerate()
            .map(|(si, s)| {
                (0..s.steps.len())
                    .map(|ti| {
                        let w = waiters(si, ti);
                        (!w.is_empty()).then(|| {
                            // A counted session's rounds are kept: a longer session's later
                            // rounds wait on its last one.
                            Mutex::new(PerRound::new((s.rounds == usize::MAX).then_some(w)))
                        })
                    })
                    .collect()
            })
            .collect(),
        waiting_seen: v
            .sessions
            .iter()
            .map(|s| s.steps.iter().map(|_| AtomicUsize::new(0)).collect())
            .collect(),
        current: v
            .sessions
            .iter()
            .map(|s| (0..s.clients).map(|_| Slot::new(IDLE)).collect())
            .collect(),
        round: v
            .sessions
            .iter()
            .map(|s| (0..s.clients).map(|_| Slot::new(0)).collect())
            .collect(),
        ended: v
            .sessions
            .iter()
            .map(|s| (0..s.clients).map(|_| AtomicBool::new(false)).collect())
            .collect(),
        planned: v.sessions.iter().map(|s| s.rounds).collect(),
        faulted_in: v.sessions.iter().map(|_| Mutex::new(Vec::new())).collect(),
        settled: Mutex::new(BTreeMap::new()),
        changed: tokio::sync::watch::Sender::new(0),
        frozen: Mutex::new(Vec::new()),
        pools: Mutex::new(Vec::new()),
        seen: Mutex::new(vec![SessionSeen::default(); v.sessions.len()]),
        waited_ms: Mutex::new(BTreeMap::new()),
        probes: Mutex::new(Vec::new()),
        window: std::sync::OnceLock::new(),
        sections: Mutex::new(Vec::new()),
        cancel: tokio_util::sync::CancellationToken::new(),
        skipped: Mutex::new(BTreeMap::new()),
        retried: Mutex::new(BTreeMap::new()),
        rounds: Mutex::new(vec![Rounds::default(); v.sessions.len()]),
    }
}

/// Every client of every session, connected and set up before the clock starts.
pub(super) async fn connect(
    v: &StepVariant,
    ctx: &VariantCtx<'_>,
    schema: &str,
    shared: &Arc<Shared>,
) -> anyhow::Result<Vec<Box<dyn workload::Client>>> {
    let mut clients: Vec<Box<dyn workload::Client>> = Vec::new();
    for (si, (s, def)) in v.sessions.iter().zip(&v.spec.sessions).enumerate() {
        let target = match s.connect {
            Connect::Direct => &ctx.env.direct,
            Connect::Pooler | Connect::Pool => ctx.pg(),
        };
        // The variant's settings, then the session's own (which win).
        let mut settings = ctx.variant.settings.clone();
        settings.extend(s.settings.iter().cloned());
        // Straight to the server, a session's settings are set once; through a pooler, with
        // every step as SET LOCAL, on whichever server connection runs it, and for that
        // transaction only (a session-level SET would stay with the server connection and
        // reach the pooler's next client). `connect = "pooler"` on a run without one is
        // straight to the server too.
        let pooled = match s.connect {
            Connect::Direct => ctx.env.direct_is_pooled(),
            Connect::Pooler => ctx.env.pooler.is_some() || ctx.env.direct_is_pooled(),
            // A pool's connections serve every client of the session in turn.
            Connect::Pool => true,
        };
        let set_for = |k: &str, val: &str| match pooled {
            false => set(k, val),
            true => set(k, val).replacen("SET ", "SET LOCAL ", 1),
        };
        let mut prefix = match pooled {
            false => format!("SET search_path TO \"{schema}\"; "),
            true => format!("SET LOCAL search_path TO \"{schema}\"; "),
        };
        for (k, val) in &settings {
            let val = super::substitute(val, &ctx.variant.params).map_err(anyhow::Error::msg)?;
            prefix.push_str(&set_for(k, &val));
        }
        // Settings the role may not set (a superuser one, say) leave the server's value.
        if !s.try_settings.is_empty() {
            let probe = ctx.env.direct.connect(&ctx.app("try-settings")).await?;
            for (k, val) in &s.try_settings {
                let sql = format!(
                    "BEGIN; {}ROLLBACK",
                    set(k, val).replacen("SET ", "SET LOCAL ", 1)
                );
                match probe.batch_execute(&sql).await {
                    Ok(()) => prefix.push_str(&set_for(k, val)),
                    Err(_) => {
                        let _ = probe.batch_execute("ROLLBACK").await;
                    }
                }
            }
        }
        let redis = match ctx.env.redis.as_ref() {
            Some(r)
                if v.spec.sessions[si]
                    .steps
                    .iter()
                    .any(|t| matches!(t.action, super::Action::Redis(_))) =>
            {
                Some(r)
            }
            _ => None,
        };
        // A pool session's clients share a pool, open and idle before the clock starts as a
        // running service's is; the others have a connection each.
        let pool = match s.pool {
            Some((size, timeout)) => {
                let app = ctx.app(&format!("w/{si}-pool"));
                let pool = target.pool(&app, size, timeout, deadpool_postgres::QueueMode::Fifo)?;
                PgTarget::warm(&pool)
                    .await
                    .with_context(|| format!("could not open session {}'s pool", def.name))?;
                if let Ok(mut pools) = shared.pools.lock() {
                    pools.push(pool.clone());
                }
                Some(pool)
            }
            None => None,
        };
        let conns: Vec<Option<crate::env::postgres::Wire>> = match pool {
            Some(_) => (0..s.clients).map(|_| None).collect(),
            None => {
                let connects = (0..s.clients).map(|i| target.connect_named(ctx, si, i));
                futures::future::join_all(connects)
                    .await
                    .into_iter()
                    .map(|c| {
                        c.map(Some)
                            .with_context(|| format!("could not connect session {}", def.name))
                    })
                    .collect::<anyhow::Result<_>>()?
            }
        };
        for (i, mut conn) in conns.into_iter().enumerate() {
            let per_step = match (pooled, conn.as_mut()) {
                (false, Some(conn)) => {
                    conn.query(&prefix, false)
                        .await
                        .with_context(|| format!("session {}'s settings were refused", def.name))?;
                    String::new()
                }
                // A pool's connection carries the client's name for the step's transaction,
                // so the server's view tells which client waits (`:waiting`, `waited_ms`).
                (_, None) => prefix.clone() + &set_for("application_name", &ctx.app(&role(si, i))),
                _ => prefix.clone(),
            };
            let redis = match redis {
                Some(r) => Some(r.connect().await?),
                None => None,
            };
            clients.push(Box::new(StepClient {
                redis,
                key_prefix: ctx.redis_key("").unwrap_or_default(),
                token: token(&def.name, i, 0),
                // As resolved: a choice's text may bring a ${token} the file's step lacks.
                uses_token: s.steps.iter().any(|t| match t {
                    super::Resolved::Sql(sql) => sql.contains("${token}"),
                    super::Resolved::Redis { words, .. } => {
                        words.iter().any(|w| w.contains("${token}"))
                    }
                    _ => false,
                }),
                tally: Default::default(),
                canceller: conn.as_ref().map(|c| Canceller::of_wire(c, target)),
                conn,
                pool: pool.clone(),
                session: si,
                client: i,
                steps: for_client(&s.steps, i, &per_step),
                kinds: def.steps.iter().map(|t| t.kind).collect(),
                after: s.after.clone(),
                patience: s.patience.clone(),
                counted: vec![false; def.steps.len()],
                settled: vec![0; def.steps.len()],
                into: def.steps.iter().map(|t| t.into.clone()).collect(),
                vars: Vec::new(),
                retry: s.retry.clone(),
                retries_left: s.retry.as_ref().map_or(0, |r| r.1),
                retrying: false,
                failed_round: false,
                rounds: s.rounds,
                pos: 0,
                round: 0,
                done: false,
                shared: shared.clone(),
                probe: s
                    .probe
                    .clone()
                    .map(|p| (p, ctx.env.direct.clone(), schema.to_string())),
                probe_app: ctx.app(&format!("probe-{}", def.name)),
            }));
        }
    }
    Ok(clients)
}

/// A session's steps as client `i` runs them: `${client}` filled in, and each SQL step led by
/// what must go with every step (the settings, through a pooler).
fn for_client(steps: &[super::Resolved], i: usize, per_step: &str) -> Vec<super::Resolved> {
    steps
        .iter()
        .map(|t| match t {
            super::Resolved::Sql(sql) => super::Resolved::Sql(
                format!("{per_step}{}", sql.replace("${client}", &i.to_string())).into(),
            ),
            other => other.clone(),
        })
        .collect()
}

/// How the admin session's search_path reaches its statements.
pub(super) enum Scope {
    /// Set once for the session (a connection straight to the server).
    Session,
    /// This prefix on every statement (through a transaction-mode pooler).
    Each(String),
}

impl Scope {
    fn wrap(&self, sql: &str) -> String {
        match self {
            Scope::Session => sql.to_string(),
            Scope::Each(prefix) => format!("{prefix}{sql}"),
        }
    }
}

/// `SET name = 'value'; `, the value quoted.
fn set(name: &str, value: &str) -> String {
    format!("SET {name} = '{}'; ", value.replace('\'', "''"))
}

impl PgTarget {
    /// Client `i` of the session numbered `session`, named `…/w/SESSION-i` (numbers: a
    /// session's name could overrun application_name's 63 bytes) so the sampler can tell
    /// whose it is.
    async fn connect_named(
        &self,
        ctx: &VariantCtx<'_>,
        session: usize,
        i: usize,
    ) -> anyhow::Result<crate::env::postgres::Wire> {
        crate::env::postgres::Wire::connect(&self.config(&ctx.app(&role(session, i)))?)
            .await
            .with_context(|| format!("could not connect to PostgreSQL at {}", self.display))
    }
}

/// Client `i` of the session numbered `session`, as its connection names it (`w/SESSION-i`):
/// what the sampler reads back from the server.
fn role(session: usize, i: usize) -> String {
    format!("w/{session}-{i}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_every_waiter_passed_are_dropped_and_the_rest_kept() {
        // Session 1 waits on the step; its two clients are in rounds 300 and 600.
        let rounds = vec![vec![Slot::new(0)], vec![Slot::new(300), Slot::new(600)]];
        let ended = vec![
            vec![AtomicBool::new(false)],
            vec![AtomicBool::new(false), AtomicBool::new(false)],
        ];
        let mut looping = PerRound::new(Some(vec![1]));
        let mut counted = PerRound::new(None);
        for r in 0..1000 {
            looping.add(r, (&rounds, &ended));
            counted.add(r, (&rounds, &ended));
        }
        assert!(
            looping.counts.len() <= 1000 - 256,
            "{}",
            looping.counts.len()
        );
        assert_eq!(looping.get(300), 1, "the slowest waiter's round is kept");
        assert_eq!(looping.get(999), 1);
        assert_eq!(looping.get(1000), 0);
        assert_eq!(looping.get(0), usize::MAX, "dropped: everyone passed it");
        assert_eq!(counted.counts.len(), 1000);
        assert_eq!(counted.get(0), 1);
        // A waiter that ended (stuck at round 300 for ever) no longer holds rounds back.
        ended[1][0].store(true, std::sync::atomic::Ordering::Relaxed);
        for r in 1000..1256 {
            looping.add(r, (&rounds, &ended));
        }
        assert_eq!(looping.get(599), usize::MAX);
        assert_eq!(looping.get(600), 1);
    }
}
