//! The server's connection slots over time: every client backend on it (anyone's: the slots
//! are the server's), and how many of the workload's wait on a lock or sit idle in a
//! transaction, through a server restart.

pub use crate::check::samples::SlotSample;

use super::sampler::Sampler;
use crate::env::postgres::{PgTarget, like_prefix};
use crate::history::Clock;

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
