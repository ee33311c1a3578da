//! The probe: a session of its own that tries to lock the row, to learn from the server whether,
//! and until when, someone else held it.

use crate::env::postgres::Sql as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::env::postgres::{Canceller, PgTarget};

use crate::history::Clock;
use crate::workload;

use super::{Booking, FARE, FLIGHT, begin_unlimited, server_epoch};

/// The probe: a session of its own that tries to lock the row, to learn from the server
/// whether, and until when, someone else held it.
pub(crate) struct Prober {
    client: Client,
    canceller: Canceller,
    lock: String,
    /// Its application_name, by which the server's view of it is found.
    app: String,
}

impl Prober {
    pub(crate) async fn connect(
        target: &PgTarget,
        app: &str,
        booking: &Booking,
    ) -> anyhow::Result<Prober> {
        let client = target.connect(app).await?;
        Ok(Prober {
            canceller: Canceller::new(&client, target),
            client,
            app: app.to_string(),
            lock: format!(
                "SELECT 1 FROM {} WHERE flight_id = $1 AND fare_class = $2 FOR UPDATE",
                booking.inventory
            ),
        })
    }

    /// The lock as one statement that returns the server's clock once it holds the row: the
    /// outer projection runs only after the locking subquery returned its row, so the time is
    /// the server's, not the probe's next round trip (which a loaded harness may delay).
    fn locked_at(&self, nowait: bool) -> String {
        let nowait = if nowait { " NOWAIT" } else { "" };
        format!(
            "SELECT extract(epoch FROM clock_timestamp())::float8 FROM ({}{nowait}) AS locked",
            self.lock
        )
    }

    /// Locks the row without waiting; on success returns the server clock then.
    pub(crate) async fn try_now(&self) -> anyhow::Result<Option<f64>> {
        let c = &self.client;
        c.batch_execute(&begin_unlimited()).await?;
        match c.rows(&self.locked_at(true), &[&FLIGHT, &FARE]).await {
            Ok(rows) => {
                let at = match rows.first() {
                    Some(r) => r.try_get(0)?,
                    None => server_epoch(c).await?,
                };
                c.batch_execute("ROLLBACK").await?;
                Ok(Some(at))
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                c.batch_execute("ROLLBACK").await?;
                Ok(None)
            }
            Err(e) => Err(e).context("the probe could not look at the row"),
        }
    }

    /// Waits for the row to be free; returns the server clock when the probe got it, or `None`
    /// at the deadline or on cancel (the wait is then cancelled on the server too).
    pub(crate) async fn wait_free(
        self,
        deadline: Instant,
        cancel: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Option<f64>> {
        if let Some(at) = self.try_now().await? {
            return Ok(Some(at));
        }
        let c = &self.client;
        c.batch_execute(&begin_unlimited()).await?;
        let lock = self.locked_at(false);
        let waited = tokio::select! {
            r = c.rows(&lock, &[&FLIGHT, &FARE]) => Some(r),
            _ = tokio::time::sleep_until(deadline) => None,
            _ = cancel.cancelled() => None,
        };
        match waited {
            Some(r) => {
                let rows = r.context("the probe's wait for the row failed")?;
                let at = match rows.first() {
                    Some(r) => r.try_get(0)?,
                    None => server_epoch(c).await?,
                };
                c.batch_execute("ROLLBACK").await?;
                Ok(Some(at))
            }
            None => {
                self.canceller.cancel().await;
                Ok(None)
            }
        }
    }
}

impl Prober {
    /// After the fault: the probe waits on the row in a task of its own, until the row is free,
    /// `deadline` or Ctrl-C. Returns once the server shows it waiting (at most 2 s), so it is
    /// first in line, ahead of every booker started after this.
    pub(crate) async fn queue_first(
        self,
        admin: &Client,
        deadline: Instant,
        cancel: tokio_util::sync::CancellationToken,
        clock: Clock,
    ) -> Queued {
        let released_ms = Arc::new(std::sync::Mutex::new(None));
        let app = self.app.clone();
        let task = {
            let released_ms = released_ms.clone();
            tokio::spawn(async move {
                let freed = self.wait_free(deadline, cancel).await;
                if let Ok(Some(_)) = freed
                    && let Ok(mut r) = released_ms.lock()
                {
                    r.get_or_insert(clock.now_ms());
                }
                freed
            })
        };
        wait_until_queued(admin, &app, &task).await;
        Queued { task, released_ms }
    }
}

/// The probe in line for the row.
pub(crate) struct Queued {
    task: tokio::task::JoinHandle<anyhow::Result<Option<f64>>>,
    /// The variant clock (ms) when the row came free, as the probe saw it (a scenario that
    /// frees the row another way may set it first).
    pub released_ms: Arc<std::sync::Mutex<Option<f64>>>,
}

impl Queued {
    /// The server clock (epoch seconds) when the probe got the row; `None` if it never did.
    pub(crate) async fn free_at_epoch(self) -> anyhow::Result<Option<f64>> {
        self.task.await.context("the probe task failed")?
    }
}

async fn wait_until_queued(
    admin: &Client,
    probe_app: &str,
    probe: &tokio::task::JoinHandle<anyhow::Result<Option<f64>>>,
) {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && !probe.is_finished() {
        let queued = admin
            .one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                &[&probe_app],
            )
            .await
            .map(|r| r.get::<_, i64>(0) > 0)
            .unwrap_or(false);
        if queued {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// After the fault: the probe queues first on the row, then `bookers` book until the window's
/// cut-off, each retrying after `retry_after`. Returns their history and what the probe found
/// (`locked_before_fault` as looked just before the fault).
pub(crate) async fn book_behind_the_probe(
    ctx: &crate::scenario::VariantCtx<'_>,
    (prober, admin): (Prober, &Client),
    bookers: Vec<Box<dyn workload::Client>>,
    window: &crate::scenario::Window,
    retry_after: Duration,
    locked_before_fault: bool,
) -> anyhow::Result<(workload::Driven, crate::check::orphan_lock::Probe)> {
    let queued = prober
        .queue_first(admin, window.deadline, ctx.cancel.clone(), window.clock)
        .await;
    let plan = workload::Plan::UntilOk {
        retry_after,
        stop_on: &[],
    };
    let label = format!(" of {} booked", bookers.len());
    let driven = ctx.drive(bookers, plan, window, label).await;
    let probe = crate::check::orphan_lock::Probe {
        locked_before_fault,
        free_at_epoch: queued.free_at_epoch().await?,
    };
    Ok((driven, probe))
}
