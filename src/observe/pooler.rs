//! A pooler's own view (PgBouncer's admin console, `SHOW POOLS`): how many clients wait in its
//! queue for a server connection, how long the longest has waited, and how many server
//! connections the workload's pool holds. Sampled every 10 ms like the server's observers.

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

/// Samples `SHOW POOLS` on `admin` every 10 ms until finished (see [`super::sampler`]).
/// Fails only if the first connect does.
pub async fn watch(
    admin: &PgTarget,
    app: &str,
    clock: Clock,
    pools: Pools,
) -> anyhow::Result<Watch<Vec<PoolerSample>>> {
    Watch::poll(admin, app, move |c| {
        let pools = pools.clone();
        Box::pin(async move {
            let msgs = c.simple_query("SHOW POOLS").await.ok()?;
            let rows = msgs.iter().filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            });
            Some(read(rows, &pools, clock.now_ms()))
        })
    })
    .await
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
