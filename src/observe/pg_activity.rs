//! PostgreSQL's own view of the workload: pg_stat_activity states and wait events, and pg_locks
//! (through pg_blocking_pids), sampled every few milliseconds.

use serde::{Deserialize, Serialize};

use super::sampler::Sampler;
use crate::env::postgres::{PgTarget, like_prefix};
use crate::history::Clock;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: f64,
    /// Workload sessions `idle in transaction`.
    pub idle_in_transaction: i64,
    /// Workload sessions waiting on a heavyweight lock (wait_event_type = 'Lock').
    pub waiting_on_lock: i64,
    /// Workload sessions that pg_blocking_pids says another session blocks.
    pub blocked: i64,
    /// How long the watched holder session has been idle in transaction, if it is.
    pub holder_idle_ms: Option<f64>,
    /// Server sessions serving the workload, in any state: its share of max_connections
    /// (through a pooler, the pooler's server connections).
    pub sessions: i64,
}

impl super::sampler::Gauged for Sample {
    fn gauges(&self) -> Vec<(&'static str, f64)> {
        use crate::live::*;
        vec![
            (WAITING_ON_LOCK, self.waiting_on_lock as f64),
            (IDLE_IN_TRANSACTION, self.idle_in_transaction as f64),
            (CONNECTIONS, self.sessions as f64),
            (HOLDER_IDLE_S, self.holder_idle_ms.unwrap_or(0.0) / 1000.0),
        ]
    }
}

/// Samples pg_stat_activity for the workload (see [`Sample`]).
pub type Observer = Sampler<Sample>;

impl Observer {
    /// Samples the sessions whose application_name starts with `workload_prefix`;
    /// `holder_app` names the one session whose idle-in-transaction age is tracked.
    pub async fn start(
        target: &PgTarget,
        app: &str,
        clock: Clock,
        workload_prefix: String,
        holder_app: String,
    ) -> anyhow::Result<Observer> {
        // The function behind pg_stat_activity, without the view's joins (database and role
        // names): a third of the view's cost, a hundred times a second. pg_blocking_pids, which
        // takes every lock-manager partition's lock, runs only for sessions waiting on a lock:
        // only they can be blocked.
        let stmt = "SELECT count(*) FILTER (WHERE state = 'idle in transaction'), \
                        count(*) FILTER (WHERE wait_event_type = 'Lock'), \
                        count(*) FILTER (WHERE wait_event_type = 'Lock' \
                                           AND cardinality(pg_blocking_pids(pid)) > 0), \
                        max(extract(epoch FROM clock_timestamp() - state_change)::float8 * 1000) \
                          FILTER (WHERE state = 'idle in transaction' AND application_name = $2), \
                        count(*) \
                 FROM pg_stat_get_activity(NULL) WHERE application_name LIKE $1";
        let params = vec![like_prefix(&workload_prefix), holder_app];
        Sampler::query(target, app, clock, (stmt, params), |row, at_ms| Sample {
            at_ms,
            idle_in_transaction: row.get(0),
            waiting_on_lock: row.get(1),
            blocked: row.get(2),
            holder_idle_ms: row.get(3),
            sessions: row.get(4),
        })
        .await
    }
}
