//! A pooler's own view (PgBouncer's admin console, `SHOW POOLS`): how many clients wait in its
//! queue for a server connection, how long the longest has waited, and how many server
//! connections the workload's pool holds. Sampled every 10 ms like the server's observers.

use std::time::Duration;

use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow};

pub use crate::check::samples::PoolerSample;

use super::Watch;
use crate::env::postgres::PgTarget;
use crate::history::Clock;

/// The pools a variant uses, as the pooler lists them: (database, user), the workload's first.
/// PgBouncer keeps a pool per database and user.
#[derive(Debug, Clone)]
pub struct Pools {
    pub workload: (String, String),
    pub others: Option<(String, String)>,
}

/// Samples `SHOW POOLS` on `admin` every 10 ms until finished. Fails only if the first
/// connect does.
pub async fn watch(
    admin: &PgTarget,
    app: &str,
    clock: Clock,
    pools: Pools,
) -> anyhow::Result<Watch<Vec<PoolerSample>>> {
    let first = admin.connect(app).await?;
    let (admin, app) = (admin.clone(), app.to_string());
    let board = crate::gauge::current();
    Ok(Watch::spawn(move |stopped| async move {
        let mut samples = Vec::new();
        let mut client = Some(first);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped.cancelled() => break,
                _ = tick.tick() => {}
            }
            let c = match client.take() {
                Some(c) if !c.is_closed() => c,
                _ => match admin.connect(&app).await {
                    Ok(c) => c,
                    Err(_) => continue,
                },
            };
            // A console that stops answering must not hold the variant: give up on this
            // sample after a second, or at once when told to finish.
            let asked = tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(1), c.simple_query("SHOW POOLS")) => r.ok(),
                _ = stopped.cancelled() => break,
            };
            if let Some(Ok(msgs)) = asked {
                let rows = msgs.iter().filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(r),
                    _ => None,
                });
                let sample = read(rows, &pools, clock.now_ms());
                if let Some(board) = &board {
                    use crate::gauge::Gauged as _;
                    for (name, v) in sample.gauges() {
                        board.set(name, v);
                    }
                }
                samples.push(sample);
            }
            client = Some(c);
        }
        samples
    }))
}

/// One sample from SHOW POOLS' rows (read by column name: the columns differ by release).
fn read<'a>(
    rows: impl Iterator<Item = &'a SimpleQueryRow>,
    pools: &Pools,
    at_ms: f64,
) -> PoolerSample {
    let num = |r: &SimpleQueryRow, col: &str| -> i64 {
        r.try_get(col)
            .ok()
            .flatten()
            .and_then(|v: &str| v.parse().ok())
            .unwrap_or(0)
    };
    let mut s = PoolerSample {
        at_ms,
        ..PoolerSample::default()
    };
    for r in rows {
        let col = |name: &str| r.try_get(name).ok().flatten().unwrap_or("").to_string();
        let pool = (col("database"), col("user"));
        let workload = pool == pools.workload;
        if !workload && pools.others.as_ref() != Some(&pool) {
            continue;
        }
        s.waiting += num(r, "cl_waiting");
        let wait_ms = num(r, "maxwait") as f64 * 1000.0 + num(r, "maxwait_us") as f64 / 1000.0;
        s.maxwait_ms = s.maxwait_ms.max(wait_ms);
        if workload {
            s.server_conns += ["sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"]
                .iter()
                .map(|c| num(r, c))
                .sum::<i64>();
        }
    }
    s
}
