//! What the server shows while a step file runs: who waits on a lock or sits idle in a
//! transaction (every 10 ms), when a faulted session's locks are free (its probe), and the
//! `[metrics]` queries.

use super::StepVariant;
use crate::env::postgres::{PgTarget, Sql as _, like_prefix};
use crate::history::Clock;
use crate::scenario::{VariantCtx, Window};
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::Client;

use super::run::*;

/// A faulted session's probe: from a session of its own, tries the probe's SQL every 10 ms in
/// a transaction it rolls back, until it succeeds (what the faulted session held is free) or
/// the cut-off.
pub(super) async fn probe(
    (target, app, schema): (PgTarget, String, String),
    sql: String,
    window: Window,
    shared: Arc<Shared>,
    session: usize,
) {
    let Ok(c) = target.connect(&app).await else {
        return;
    };
    // A probe that waits (no NOWAIT) gives up on each try within 20 ms: it never hangs. Its
    // settings are local to each try, so they hold through a pooler and leak to nobody.
    let attempt = format!(
        "BEGIN; SET LOCAL search_path TO \"{schema}\"; SET LOCAL lock_timeout = '20ms'; \
         SET LOCAL statement_timeout = '2s'; {sql}"
    );
    while Instant::now() < window.deadline && !shared.cancel.is_cancelled() {
        let got = tokio::select! {
            r = c.batch_execute(&attempt) => r.is_ok(),
            _ = tokio::time::sleep_until(window.deadline) => false,
            _ = shared.cancel.cancelled() => false,
        };
        let _ = c.batch_execute("ROLLBACK").await;
        if got {
            if let Ok(mut seen) = shared.seen.lock()
                && let Some(s) = seen.get_mut(session)
            {
                s.freed_ms = Some(window.clock.now_ms());
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The server's view every 10 ms: which clients wait on a lock or sit idle in a transaction.
/// It feeds `:waiting` conditions, each step's `waited_ms` and each session's peaks.
pub(super) async fn sample(
    v: &StepVariant,
    ctx: &VariantCtx<'_>,
    clock: Clock,
    shared: &Arc<Shared>,
) -> anyhow::Result<crate::observe::Watch<()>> {
    let c = ctx.env.direct.connect(&ctx.app("observer")).await?;
    let prefix = ctx.app("w/");
    let names: Vec<(String, usize)> = v
        .spec
        .sessions
        .iter()
        .enumerate()
        .map(|(i, _)| (format!("{prefix}{i}-"), i))
        .collect();
    let kinds: Vec<Vec<&'static str>> = v
        .spec
        .sessions
        .iter()
        .map(|s| s.steps.iter().map(|t| t.kind).collect())
        .collect();
    let shared = shared.clone();
    let like = like_prefix(&prefix);
    // Only the backends that wait on a lock or sit idle in a transaction: nothing else is
    // counted, and a busy loop's look stays small. Prepared once where the connection is the
    // server's own (a transaction pooler would lose a prepared statement): a look every 10 ms
    // planned afresh cost a tight one-row loop 6% of its throughput.
    let stmt = "SELECT application_name, coalesce(wait_event_type = 'Lock', false), \
                       state = 'idle in transaction', \
                       extract(epoch FROM clock_timestamp() - state_change)::float8 * 1000 \
                FROM pg_stat_get_activity(NULL) \
                WHERE application_name LIKE $1 \
                  AND (wait_event_type = 'Lock' OR state = 'idle in transaction')";
    #[allow(clippy::disallowed_methods)] // a named statement, only straight to the server
    let prepared = match ctx.env.direct_is_pooled() {
        true => None,
        false => c
            .prepare_typed(stmt, &[tokio_postgres::types::Type::TEXT])
            .await
            .ok(),
    };
    Ok(crate::observe::Watch::spawn(move |stop| async move {
        let mut last = clock.now_ms();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Which step (and round) each client was in as the query went out: a wait the
            // server shows counts for a step only if the client is still in it when the
            // answer is back.
            let before: Vec<Vec<(usize, usize)>> = (0..shared.current.len())
                .map(|s| {
                    (0..shared.current[s].len())
                        .map(|c| at(&shared, s, c))
                        .collect()
                })
                .collect();
            #[allow(clippy::disallowed_methods)] // the statement prepared above
            let look = async {
                match &prepared {
                    Some(p) => c.query(p, &[&like]).await,
                    None => c.rows(stmt, &[&like]).await,
                }
            };
            // A server that stops answering must not hold the variant past its end.
            let rows = tokio::select! {
                _ = stop.cancelled() => return,
                rows = look => rows,
            };
            let Ok(rows) = rows else {
                continue;
            };
            let now = clock.now_ms();
            let dt = (now - last).min(50.0);
            last = now;
            let (waiters, bumped) = tally(&shared, (&names, &kinds), rows, &before, dt);
            if let Ok(mut seen) = shared.seen.lock() {
                for (s, n) in seen.iter_mut().zip(&waiters) {
                    s.lock_waiters_max = s.lock_waiters_max.max(*n);
                }
            }
            if bumped {
                shared.bump();
            }
        }
    }))
}

/// One look's rows: who waits (per session, and the step each waits in, which meets
/// `:waiting` conditions and adds to `waited_ms`) and who sits idle in a transaction.
/// Returns the waiters per session, and whether a condition may have come true.
fn tally(
    shared: &Shared,
    (names, kinds): (&[(String, usize)], &[Vec<&'static str>]),
    rows: Vec<tokio_postgres::Row>,
    before: &[Vec<(usize, usize)>],
    dt: f64,
) -> (Vec<i64>, bool) {
    let mut waiters = vec![0i64; names.len()];
    let mut bumped = false;
    for row in rows {
        let app: String = row.get(0);
        // A client's own connection, or a pool session's connection inside a client's step
        // (`…/w/SESSION-CLIENT`, set for that step's transaction); or a pool's connection
        // between steps (`…/w/SESSION-pool`): counted for the session, never for a step.
        let Some((session, client)) = names.iter().find_map(|(p, i)| {
            app.strip_prefix(p.as_str()).and_then(|n| match n {
                "pool" => Some((*i, None)),
                n => n.parse::<usize>().ok().map(|c| (*i, Some(c))),
            })
        }) else {
            continue;
        };
        let (waiting, idle_tx): (bool, Option<bool>) = (row.get(1), row.get(2));
        let idle_ms: Option<f64> = row.get(3);
        if idle_tx == Some(true)
            && let (Some(ms), Ok(mut seen)) = (idle_ms, shared.seen.lock())
            && let Some(s) = seen.get_mut(session)
        {
            s.idle_in_tx_max_ms = s.idle_in_tx_max_ms.max(ms);
        }
        let Some(client) = client else {
            waiters[session] += i64::from(waiting);
            continue;
        };
        let now_in = match client < shared.current.get(session).map_or(0, Vec::len) {
            true => at(shared, session, client),
            false => (IDLE, 0),
        };
        let was_in = before
            .get(session)
            .and_then(|cs| cs.get(client))
            .copied()
            .unwrap_or((IDLE, 0));
        let (step, round) = match now_in == was_in {
            true => now_in,
            false => (IDLE, 0),
        };
        if waiting {
            waiters[session] += 1;
            if step != IDLE {
                if shared.waiting_seen[session][step].fetch_max(round + 1, Ordering::Relaxed)
                    <= round
                {
                    bumped = true;
                }
                if let Ok(mut w) = shared.waited_ms.lock() {
                    *w.entry(kinds[session][step].to_string()).or_insert(0.0) += dt;
                }
            }
        }
    }
    (waiters, bumped)
}

/// The step a client is in (IDLE between steps) and its round.
fn at(shared: &Shared, session: usize, client: usize) -> (usize, usize) {
    (
        shared.current[session][client].load(Ordering::Relaxed),
        shared.round[session][client].load(Ordering::Relaxed),
    )
}

/// A query's first column of its first row as a number (true/false as 1/0; NULL as none).
pub(super) async fn query_number(c: &Client, sql: &str) -> anyhow::Result<Option<f64>> {
    let messages = c.simple_query(sql).await?;
    for m in messages {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            if row.is_empty() {
                anyhow::bail!("it returned no column");
            }
            return Ok(match row.get(0) {
                None => None,
                Some("t") => Some(1.0),
                Some("f") => Some(0.0),
                Some(text) => Some(
                    text.trim()
                        .parse::<f64>()
                        .with_context(|| format!("`{text}` is not a number"))?,
                ),
            });
        }
    }
    anyhow::bail!("it returned no row")
}
