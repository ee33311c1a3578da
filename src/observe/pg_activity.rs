//! PostgreSQL's own view of the workload: pg_stat_activity states and wait events, and pg_locks
//! (through pg_blocking_pids), sampled every few milliseconds.

pub use crate::check::samples::Sample;

use super::sampler::Sampler;
use crate::env::postgres::{PgTarget, like_prefix};
use crate::history::Clock;

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
