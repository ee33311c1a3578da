//! The fleet: serverless invocations arriving at a steady rate, each on a fresh connection with
//! the platform's retries, recorded as they go; and the CPU the storm costs.

use crate::check::storm::{THROTTLED, kind};
use crate::env::postgres::Sql as _;
use crate::history::{Clock, History, Op, Outcome, class};
use crate::observe::cpu;
use crate::scenario::booking::Booking;
use crate::workload::OpError;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_postgres::{Client, Config, NoTls};
use tokio_util::sync::CancellationToken;

/// Every attempt of every invocation, as it happens.
#[derive(Clone, Default)]
pub(super) struct Recorder(Arc<std::sync::Mutex<Vec<Op>>>);

impl Recorder {
    pub(super) fn start(&self, client: usize, kind: &'static str, clock: Clock) -> Option<usize> {
        let mut ops = self.0.lock().ok()?;
        ops.push(Op {
            client,
            kind: kind.into(),
            start_ms: clock.now_ms(),
            end_ms: None,
            outcome: Outcome::Unknown,
        });
        Some(ops.len() - 1)
    }

    pub(super) fn end(&self, at: Option<usize>, clock: Clock, result: Result<(), OpError>) {
        let (Some(i), Ok(mut ops)) = (at, self.0.lock()) else {
            return;
        };
        if let Some(op) = ops.get_mut(i) {
            op.end_ms = Some(clock.now_ms());
            op.outcome = match result {
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::Error { class: e.class },
            };
        }
    }

    pub(super) fn history(&self) -> History {
        let mut ops = self.0.lock().map(|o| o.clone()).unwrap_or_default();
        ops.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        History {
            ops,
            lost_clients: Vec::new(),
        }
    }
}

/// A count that remembers its peak.
#[derive(Default)]
pub(super) struct Gauge {
    pub(super) now: AtomicU64,
    pub(super) max: AtomicU64,
}

impl Gauge {
    pub(super) fn up(&self) -> GaugeGuard<'_> {
        let n = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.max.fetch_max(n, Ordering::Relaxed);
        GaugeGuard(self)
    }
    pub(super) fn peak(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

pub(super) struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every invocation shares.
pub(super) struct Fleet {
    /// Bookings through so far, for the progress bar.
    pub(super) booked: Arc<std::sync::atomic::AtomicUsize>,
    /// The workload's connection settings; each attempt names itself.
    pub(super) config: Config,
    /// The other endpoints' (a pool of their own, through a pooler with separate pools).
    pub(super) others_config: Config,
    pub(super) app_prefix: String,
    pub(super) booking: Booking,
    pub(super) flights: String,
    pub(super) check_ins: String,
    pub(super) booker_payment: Duration,
    pub(super) retries: usize,
    pub(super) immediate: bool,
    pub(super) retry_base: Duration,
    pub(super) cap: Option<Semaphore>,
    pub(super) clock: Clock,
    /// No attempt starts after this.
    pub(super) deadline: Instant,
    /// Attempts still in flight now are cut off (their outcome unknown).
    pub(super) hard_end: Instant,
    pub(super) cancel: CancellationToken,
    pub(super) record: Recorder,
    pub(super) executing: Gauge,
    pub(super) in_flight: Gauge,
    pub(super) invocations: AtomicU64,
    /// Every connect passes this door; the relapse closes it for the moment its ghost takes a
    /// slot, so that the ghost's start never depends on winning a race with the fleet.
    pub(super) door: tokio::sync::RwLock<()>,
}

impl Fleet {
    /// A fresh connection, as a serverless invocation opens (`max: 1`).
    pub(super) async fn connect(&self, role: &str) -> Result<Client, OpError> {
        let _door = self.door.read().await;
        let mut config = match role {
            kind::BOOK => self.config.clone(),
            _ => self.others_config.clone(),
        };
        config.application_name(format!("{}{role}", self.app_prefix));
        let (client, conn) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// The seed's booking: BEGIN, take a seat (the row lock), the payment call, INSERT, COMMIT.
    pub(super) async fn book_once(&self, passenger: &str) -> Result<(), OpError> {
        let c = self.connect("book").await?;
        self.booking.begin(&c).await?;
        if self.booking.take_seat(&c).await?.is_none() {
            return Err(OpError::new(class::SOLD_OUT));
        }
        tokio::time::sleep(self.booker_payment).await;
        self.booking.record(&c, passenger).await?;
        c.batch_execute("COMMIT").await?;
        Ok(())
    }

    pub(super) async fn other_once(&self, kind: &'static str, n: usize) -> Result<(), OpError> {
        let c = self.connect(kind).await?;
        if kind == kind::SEARCH {
            c.rows(
                &format!(
                    "SELECT id, destination FROM {} WHERE origin = $1 ORDER BY id LIMIT 20",
                    self.flights
                ),
                &[&format!("O{}", n % 10)],
            )
            .await?;
        } else {
            c.rows(
                &format!(
                    "SELECT flight_id, seat FROM {} WHERE passenger = $1",
                    self.check_ins
                ),
                &[&format!("p{}", n % 500 + 1)],
            )
            .await?;
        }
        Ok(())
    }

    /// Runs `attempt` unless the run is over; records it. `None`: cut off mid-flight.
    pub(super) async fn attempt<F: Future<Output = Result<(), OpError>>>(
        &self,
        client: usize,
        kind: &'static str,
        attempt: F,
    ) -> Option<Result<(), OpError>> {
        let at = self.record.start(client, kind, self.clock);
        let result = tokio::select! {
            r = attempt => Some(r),
            _ = tokio::time::sleep_until(self.hard_end) => None,
            _ = self.cancel.cancelled() => None,
        };
        if let Some(r) = &result {
            self.record.end(at, self.clock, r.clone());
        }
        result
    }

    /// One booking invocation: attempts until one books, the platform's retries are used up,
    /// or the run ends.
    pub(super) async fn booking_invocation(self: Arc<Self>, id: usize) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let _alive = self.in_flight.up();
        for attempt in 0..=self.retries {
            if Instant::now() >= self.deadline || self.cancel.is_cancelled() {
                return;
            }
            let permit = match &self.cap {
                Some(cap) => match cap.try_acquire() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        let at = self.record.start(id, kind::BOOK, self.clock);
                        self.record
                            .end(at, self.clock, Err(OpError::new(THROTTLED)));
                        self.backoff(attempt).await;
                        continue;
                    }
                },
                None => None,
            };
            let executing = self.executing.up();
            let passenger = format!("p{id}-{attempt}");
            let result = self
                .attempt(id, kind::BOOK, self.book_once(&passenger))
                .await;
            drop((executing, permit));
            match result {
                Some(Ok(())) => {
                    self.booked.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                None => return,
                Some(Err(_)) => self.backoff(attempt).await,
            }
        }
    }

    pub(super) async fn backoff(&self, attempt: usize) {
        if self.immediate || attempt >= self.retries {
            return;
        }
        let base = self.retry_base.mul_f64(2f64.powi(attempt as i32));
        let wait = base.mul_f64(0.5 + rand::random::<f64>());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.cancel.cancelled() => {}
        }
    }

    pub(super) async fn other_invocation(self: Arc<Self>, id: usize) {
        let kind = if id.is_multiple_of(2) {
            kind::SEARCH
        } else {
            kind::CHECK_IN
        };
        self.attempt(id, kind, self.other_once(kind, id)).await;
    }
}

/// Starts `invocation` every `every` until the deadline; returns the tasks started.
pub(super) async fn arrivals(
    fleet: &Arc<Fleet>,
    every: Duration,
    invocation: fn(Arc<Fleet>, usize) -> futures::future::BoxFuture<'static, ()>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut next = Instant::now();
    while next < fleet.deadline && !fleet.cancel.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = fleet.cancel.cancelled() => break,
        }
        tasks.push(tokio::spawn(invocation(fleet.clone(), tasks.len())));
        next += every;
    }
    tasks
}

/// The outage's CPU shares, taken once: when the row is free again, just before a restart, or
/// at the cut-off, whichever comes first.
pub(super) struct CpuWindow {
    pub(super) server: Option<(u32, cpu::Window)>,
    pub(super) harness: Option<cpu::Window>,
    pub(super) taken: std::sync::Mutex<Option<(Option<f64>, Option<f64>)>>,
}

impl CpuWindow {
    pub(super) fn start(server_pid: Option<u32>) -> CpuWindow {
        CpuWindow {
            server: server_pid
                .and_then(|pid| Some((pid, cpu::Window::start(cpu::tree_ticks(pid))?))),
            harness: cpu::Window::start(cpu::self_ticks()),
            taken: std::sync::Mutex::new(None),
        }
    }

    pub(super) fn close(&self) {
        let Ok(mut taken) = self.taken.lock() else {
            return;
        };
        if taken.is_none() {
            let server = self
                .server
                .and_then(|(pid, w)| w.share_pct(cpu::tree_ticks(pid)));
            let harness = self.harness.and_then(|w| w.share_pct(cpu::self_ticks()));
            *taken = Some((server, harness));
        }
    }

    pub(super) fn shares(&self) -> (Option<f64>, Option<f64>) {
        self.close();
        self.taken
            .lock()
            .ok()
            .and_then(|t| *t)
            .unwrap_or((None, None))
    }
}
