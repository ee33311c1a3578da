//! The server's connection slots over time: every client backend on it (anyone's: the slots
//! are the server's), and how many of the workload's wait on a lock or sit idle in a
//! transaction, through a server restart.

use serde::{Deserialize, Serialize};

use super::sampler::Sampler;
use crate::env::postgres::{PgTarget, like_prefix};
use crate::history::Clock;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Deserialize)]
pub struct SlotSample {
    pub at_ms: f64,
    /// Client backends on the server, anyone's.
    pub connections: i64,
    /// The workload's sessions waiting on a heavyweight lock.
    pub waiting_on_lock: i64,
    /// The workload's sessions idle in a transaction.
    pub idle_in_transaction: i64,
}

impl super::sampler::Gauged for SlotSample {
    fn gauges(&self) -> Vec<(&'static str, f64)> {
        use crate::live::*;
        vec![
            (WAITING_ON_LOCK, self.waiting_on_lock as f64),
            (IDLE_IN_TRANSACTION, self.idle_in_transaction as f64),
            (CONNECTIONS, self.connections as f64),
        ]
    }
}

/// Samples the server's slots (see [`SlotSample`]), across restarts.
pub type SlotWatcher = Sampler<SlotSample>;

impl SlotWatcher {
    /// Samples every 10 ms; `workload_prefix` names the workload's application_names.
    pub async fn start(
        target: &PgTarget,
        app: &str,
        clock: Clock,
        workload_prefix: &str,
    ) -> anyhow::Result<SlotWatcher> {
        // The function behind pg_stat_activity, without the view's joins: see
        // [`super::pg_activity`].
        let stmt = "SELECT count(*) FILTER (WHERE backend_type = 'client backend'), \
                        count(*) FILTER (WHERE application_name LIKE $1 AND wait_event_type = 'Lock'), \
                        count(*) FILTER (WHERE application_name LIKE $1 \
                                           AND state = 'idle in transaction') \
                 FROM pg_stat_get_activity(NULL)";
        let params = vec![like_prefix(workload_prefix)];
        Sampler::query(target, app, clock, (stmt, params), |row, at_ms| {
            SlotSample {
                at_ms,
                connections: row.get(0),
                waiting_on_lock: row.get(1),
                idle_in_transaction: row.get(2),
            }
        })
        .await
    }
}
