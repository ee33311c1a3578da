//! The server's connection slots over time: every client backend on it (anyone's: the slots
//! are the server's), and how many of the workload's wait on a lock or sit idle in a
//! transaction. Reconnects when its session is lost (a server restart), so a gauge never stops.

use crate::env::postgres::Sql as _;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::env::postgres::PgTarget;
use crate::history::Clock;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SlotSample {
    pub at_ms: f64,
    /// Client backends on the server, anyone's.
    pub connections: i64,
    /// The workload's sessions waiting on a heavyweight lock.
    pub waiting_on_lock: i64,
    /// The workload's sessions idle in a transaction.
    pub idle_in_transaction: i64,
}

pub struct SlotWatcher {
    stop: CancellationToken,
    task: JoinHandle<Vec<SlotSample>>,
}

impl SlotWatcher {
    /// Samples every 10 ms; `workload_prefix` names the workload's application_names.
    pub async fn start(
        target: &PgTarget,
        app: &str,
        clock: Clock,
        workload_prefix: &str,
    ) -> anyhow::Result<SlotWatcher> {
        let first = target.connect(app).await?;
        let stmt = "SELECT count(*) FILTER (WHERE backend_type = 'client backend'), \
                        count(*) FILTER (WHERE application_name LIKE $1 AND wait_event_type = 'Lock'), \
                        count(*) FILTER (WHERE application_name LIKE $1 \
                                           AND state = 'idle in transaction') \
                 FROM pg_stat_activity";
        let pattern = format!("{}%", workload_prefix.replace('_', "\\_"));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let (target, app) = (target.clone(), app.to_string());
        let task = tokio::spawn(async move {
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
                    _ => match target.connect(&app).await {
                        Ok(c) => c,
                        Err(_) => continue,
                    },
                };
                if let Ok(row) = c.one(stmt, &[&pattern]).await {
                    samples.push(SlotSample {
                        at_ms: clock.now_ms(),
                        connections: row.get(0),
                        waiting_on_lock: row.get(1),
                        idle_in_transaction: row.get(2),
                    });
                }
                client = Some(c);
            }
            samples
        });
        Ok(SlotWatcher { stop, task })
    }

    pub async fn finish(self) -> Vec<SlotSample> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}
