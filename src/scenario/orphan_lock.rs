//! orphan-lock: a booking holder locks the flight's inventory row, goes off to "call the
//! payment provider", and never comes back (frozen, killed, or its task aborted). Meanwhile
//! booking clients queue on the row. The checker decides from a probe session and from
//! pg_stat_activity how long the row stayed locked and what the clients got.

use crate::env::postgres::Sql as _;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use anyhow::{Context, bail};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_postgres::Client;

use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun};
use crate::check::orphan_lock::{METRICS, Observations, Payments, Probe};
use crate::env::postgres::{Canceller, PgTarget, begin};
use crate::env::worker::WorkerIo;
use crate::error::UsageError;
use crate::fault::{Fault, Victim};
use crate::history::{Clock, class};
use crate::observe::Observer;
use crate::workload::{self, OpError, Plan};

/// orphan-lock's configuration: its parameters, parsed once.
pub struct OrphanLock {
    clients: usize,
    fault: Fault,
    /// Where the booking code calls the payment provider: inside the transaction or before it.
    payment_inside: bool,
    /// A reconciler refunds charges that never became a booking (pay-first only).
    reconcile: bool,
    seats: usize,
    payment_call: Duration,
    booker_payment: Duration,
    retry_after: Duration,
    deadline: Duration,
}

impl Code for OrphanLock {
    const NAME: &'static str = "orphan-lock";
    const FILE: &'static str = include_str!("../../scenarios/orphan-lock.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::count("clients", 1, 1000),
        ParamSpec::words("fault", &["freeze", "kill", "leak"]),
        ParamSpec::words("payment", &["inside", "outside"]),
        ParamSpec::flag("reconcile"),
        ParamSpec::count("seats", 1, 1_000_000),
        ParamSpec::duration("payment_call", 1, HOUR_MS),
        ParamSpec::duration("booker_payment", 0, HOUR_MS),
        ParamSpec::duration("retry_after", 1, HOUR_MS),
        ParamSpec::duration("idle_timeout", 1, HOUR_MS),
        ParamSpec::duration("lock_timeout", 1, HOUR_MS),
        ParamSpec::duration("statement_timeout", 1, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = METRICS;
    const SIZED_BY: &'static str = "clients";

    fn config(p: &Params) -> Result<OrphanLock, UsageError> {
        // A variant that sets the idle timeout is judged on a release within 1.5 of them.
        if p.in_settings("idle_timeout") {
            let idle_timeout = p.duration("idle_timeout")?;
            let why = "the idle timeout could not free the row before the cut-off";
            p.deadline_outlasts(2, "idle_timeout", idle_timeout, why)?;
        }
        // Once the row is free, the queued clients take turns at it, each holding it for its
        // own payment call: the cut-off must leave them room, or a mitigation is judged
        // "stuck" for a queue it did cause. Three times the bare queue covers the lock
        // timeouts and retries between turns on a busy machine.
        let payment_inside = p.switch("payment", "inside", "outside")?;
        if payment_inside {
            let clients = p.count("clients")?;
            let turn = p.duration("booker_payment")?;
            let freed = match p.in_settings("idle_timeout") {
                true => p.duration("idle_timeout")?,
                false => Duration::ZERO,
            };
            let need = freed + turn * (3 * clients as u32);
            let deadline = p.duration("deadline")?;
            if deadline < need {
                return Err(UsageError(format!(
                    "deadline ({}) is too short for {clients} clients: once the row is free they \
                     take turns holding it for booker_payment ({}) each, so the cut-off needs {} \
                     or more. Raise it (--param deadline={}) or lower clients",
                    p.as_written(deadline),
                    p.as_written(turn),
                    p.as_written(need),
                    p.as_written(need)
                )));
            }
        }
        Ok(OrphanLock {
            clients: p.count("clients")?,
            fault: p.parse("fault")?,
            payment_inside,
            reconcile: p.flag("reconcile")?,
            seats: p.count("seats")?,
            payment_call: p.duration("payment_call")?,
            booker_payment: p.duration("booker_payment")?,
            retry_after: p.duration("retry_after")?,
            deadline: p.duration("deadline")?,
        })
    }

    fn sessions(&self) -> usize {
        // Each client, the holder, the setup session, the prober, the observer, and the
        // payment provider's two (the holder's own, everyone else's).
        self.clients + 6
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        run(self, ctx)
    }

    async fn worker(io: WorkerIo) -> anyhow::Result<()> {
        holder_main(io).await
    }
}

const FLIGHT: &str = "LL-101";
const FARE: &str = "Y";

/// Sessions that watch rather than book: no timeouts of the user's server may cut them short.
const UNLIMITED: &[(&str, &str)] = &[
    ("lock_timeout", "0"),
    ("statement_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
];

fn unlimited() -> Vec<(String, String)> {
    UNLIMITED
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `BEGIN` for a watching session (see [`UNLIMITED`]).
fn begin_unlimited() -> String {
    begin(&unlimited())
}

/// The booking code every client runs, the holder included (connection-storm books the same way).
pub(crate) struct Booking {
    pub(crate) inventory: String,
    pub(crate) bookings: String,
    /// The payment provider's record of charges, one per passenger (its idempotency key).
    pub(crate) payments: String,
    /// The variant's session settings, set at the start of each booking transaction.
    settings: Vec<(String, String)>,
}

impl Booking {
    pub(crate) fn new(target: &PgTarget, settings: &[(String, String)]) -> Booking {
        Booking {
            inventory: target.table("flight_inventory"),
            bookings: target.table("bookings"),
            payments: target.table("payments"),
            settings: settings.to_vec(),
        }
    }

    /// Drops and creates the booking tables, with `seats` seats on the flight.
    pub(crate) fn ddl(&self, seats: usize) -> String {
        format!(
            "DROP TABLE IF EXISTS {inv}, {book}, {pay}; \
             CREATE TABLE {inv} (flight_id text, fare_class text, seats_available int NOT NULL, \
                                 PRIMARY KEY (flight_id, fare_class)); \
             CREATE TABLE {book} (id bigserial PRIMARY KEY, flight_id text, fare_class text, \
                                  passenger text, booked_at timestamptz DEFAULT clock_timestamp()); \
             CREATE TABLE {pay} (passenger text PRIMARY KEY, \
                                 charged_at timestamptz NOT NULL DEFAULT clock_timestamp(), \
                                 refunded bool NOT NULL DEFAULT false); \
             INSERT INTO {inv} VALUES ('{FLIGHT}', '{FARE}', {seats});",
            inv = self.inventory,
            book = self.bookings,
            pay = self.payments,
        )
    }

    /// Opens a booking transaction under the variant's settings.
    pub(crate) async fn begin(&self, c: &Client) -> Result<(), tokio_postgres::Error> {
        c.batch_execute(&begin(&self.settings)).await
    }

    /// The payment provider charges the passenger, on its own connection: the charge stands
    /// whatever becomes of the booking's transaction. It is recorded as soon as it is asked
    /// for; the call then takes its time to answer, and that is when faults hit. A retry with
    /// the same passenger is the same charge (idempotency key).
    pub(crate) async fn charge(
        &self,
        provider: &Client,
        passenger: &str,
    ) -> Result<(), tokio_postgres::Error> {
        provider
            .exec(
                &format!(
                    "INSERT INTO {} (passenger) VALUES ($1) ON CONFLICT DO NOTHING",
                    self.payments
                ),
                &[&passenger],
            )
            .await
            .map(|_| ())
    }

    /// Takes a seat inside the caller's transaction, locking the row. Returns the server's
    /// clock at that moment, or `None` when sold out.
    pub(crate) async fn take_seat(&self, c: &Client) -> Result<Option<f64>, tokio_postgres::Error> {
        let rows = c
            .rows(
                &format!(
                    "UPDATE {} SET seats_available = seats_available - 1 \
                     WHERE flight_id = $1 AND fare_class = $2 AND seats_available > 0 \
                     RETURNING extract(epoch FROM clock_timestamp())::float8",
                    self.inventory
                ),
                &[&FLIGHT, &FARE],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    pub(crate) async fn record(
        &self,
        c: &Client,
        passenger: &str,
    ) -> Result<(), tokio_postgres::Error> {
        c.exec(
            &format!(
                "INSERT INTO {} (flight_id, fare_class, passenger) VALUES ($1, $2, $3)",
                self.bookings
            ),
            &[&FLIGHT, &FARE, &passenger],
        )
        .await
        .map(|_| ())
    }

    /// What the server holds after a run, for the passengers whose name is `LIKE who` (`%`
    /// for everyone): the bookings committed, and the payment provider's charges.
    pub(crate) async fn tally(&self, c: &Client, who: &str) -> anyhow::Result<(i64, Payments)> {
        let row = c
            .one(
                &format!(
                    "SELECT (SELECT count(*) FROM {book} WHERE passenger LIKE $1), \
                            count(*), count(*) FILTER (WHERE refunded), \
                            count(*) FILTER (WHERE NOT refunded AND NOT EXISTS \
                              (SELECT 1 FROM {book} b WHERE b.passenger = p.passenger)) \
                     FROM {pay} p WHERE passenger LIKE $1",
                    book = self.bookings,
                    pay = self.payments
                ),
                &[&who],
            )
            .await
            .context("could not count the bookings and charges")?;
        let payments = Payments {
            charged: row.get(1),
            refunded: row.get(2),
            charged_without_booking: row.get(3),
        };
        Ok((row.get(0), payments))
    }

    /// One booking the write-up's way, on `c`: BEGIN, take a seat (locking the row), charge
    /// `passenger` through `provider`, wait out the payment call, record, COMMIT; rolled back
    /// on any error while the connection lives.
    pub(crate) async fn book_inside(
        &self,
        c: &Client,
        provider: &Client,
        (passenger, payment): (&str, Duration),
    ) -> Result<(), OpError> {
        self.begin(c).await?;
        let result = async {
            if self.take_seat(c).await?.is_none() {
                return Err(OpError::new(class::SOLD_OUT));
            }
            self.charge(provider, passenger).await?;
            tokio::time::sleep(payment).await;
            self.record(c, passenger).await?;
            c.batch_execute("COMMIT").await?;
            Ok(())
        }
        .await;
        if result.is_err() && !c.is_closed() {
            let _ = c.batch_execute("ROLLBACK").await;
        }
        result
    }

    /// The code fix: payment already done, the booking is one short statement, so no session
    /// ever sits idle holding the row. It books only against a charge that was not refunded,
    /// locking the charge so a reconciler's refund and this booking exclude each other.
    async fn book_at_once(
        &self,
        c: &Client,
        passenger: &str,
    ) -> Result<bool, tokio_postgres::Error> {
        if self.settings.is_empty() {
            return self.book_statement(c, passenger).await;
        }
        // Settings hold per transaction: the one statement gets a transaction of its own.
        self.begin(c).await?;
        let booked = self.book_statement(c, passenger).await;
        let end = match booked {
            Ok(_) => c.batch_execute("COMMIT").await,
            Err(_) => c.batch_execute("ROLLBACK").await,
        };
        let booked = booked?;
        end?;
        Ok(booked)
    }

    async fn book_statement(
        &self,
        c: &Client,
        passenger: &str,
    ) -> Result<bool, tokio_postgres::Error> {
        let n = c
            .exec(
                &format!(
                    "WITH paid AS (SELECT 1 FROM {} WHERE passenger = $3 AND NOT refunded FOR UPDATE), \
                     seat AS (UPDATE {} SET seats_available = seats_available - 1 \
                       WHERE flight_id = $1 AND fare_class = $2 AND seats_available > 0 \
                         AND EXISTS (SELECT 1 FROM paid) RETURNING 1) \
                     INSERT INTO {} (flight_id, fare_class, passenger) SELECT $1, $2, $3 FROM seat",
                    self.payments, self.inventory, self.bookings
                ),
                &[&FLIGHT, &FARE, &passenger],
            )
            .await?;
        Ok(n == 1)
    }
}

pub(crate) async fn server_epoch(c: &Client) -> Result<f64, tokio_postgres::Error> {
    Ok(
        c.one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
            .await?
            .get(0),
    )
}

/// The holder's booking: lock, charge, report, wait for the payment call's answer (this is
/// where the fault hits), record, commit. `inside` puts the payment call inside the
/// transaction, as the write-up's code does; outside, the fault falls between the charge and
/// the booking.
async fn hold(
    c: &Client,
    provider: &Client,
    booking: &Booking,
    (passenger, inside, payment_call): (&str, bool, Duration),
    report: impl FnOnce(f64),
) -> anyhow::Result<()> {
    if inside {
        booking.begin(c).await?;
        let at = booking.take_seat(c).await?.context("sold out")?;
        booking.charge(provider, passenger).await?;
        report(at);
        tokio::time::sleep(payment_call).await;
        booking.record(c, passenger).await?;
        c.batch_execute("COMMIT").await?;
    } else {
        booking.charge(provider, passenger).await?;
        report(server_epoch(c).await?);
        tokio::time::sleep(payment_call).await;
        booking.book_at_once(c, passenger).await?;
    }
    Ok(())
}

/// The holder's passenger name.
const HOLDER: &str = "holder";

/// Where the payment provider keeps its records: another system, so never behind the
/// booking service's pooler. (Sharing its pool, a booking that holds a server connection
/// while it waits for its charge deadlocks the pool once every connection is such a booking.)
fn provider_target(env: &crate::env::Env) -> &PgTarget {
    &env.direct
}

/// The payment provider's session of the holder's process (`provider-holder`): another
/// system's, so outside the workload's `w/` sessions the observer counts.
fn provider_app(holder_app: &str) -> String {
    holder_app.replace("/w/holder", "/provider-holder")
}

/// The reconciler of a pay-first service: once the payment call's own time has passed,
/// refunds each charge that never became a booking. Each charge is locked first, so a late
/// booking of the same passenger either committed before (and is seen) or finds it refunded.
async fn reconcile(admin: &Client, booking: &Booking, grace: Duration) -> anyhow::Result<u64> {
    let mut refunded = 0;
    let stale: Vec<String> = admin
        .rows(
            &format!(
                "SELECT passenger FROM {} WHERE NOT refunded \
                 AND charged_at < clock_timestamp() - make_interval(secs => $1)",
                booking.payments
            ),
            &[&grace.as_secs_f64()],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for passenger in stale {
        admin.batch_execute(&begin_unlimited()).await?;
        let refund = async {
            admin
                .one(
                    &format!(
                        "SELECT 1 FROM {} WHERE passenger = $1 FOR UPDATE",
                        booking.payments
                    ),
                    &[&passenger],
                )
                .await?;
            admin
                .exec(
                    &format!(
                        "UPDATE {} p SET refunded = true WHERE passenger = $1 AND NOT EXISTS \
                         (SELECT 1 FROM {} b WHERE b.passenger = p.passenger)",
                        booking.payments, booking.bookings
                    ),
                    &[&passenger],
                )
                .await
        }
        .await;
        admin.batch_execute("COMMIT").await?;
        refunded += refund?;
    }
    Ok(refunded)
}

/// What the holder process is told: where to book, as whom, and how.
#[derive(Serialize, Deserialize)]
pub(crate) struct HolderConfig {
    pub(crate) target: PgTarget,
    /// The payment provider's own path to its records (see [`provider_target`]).
    pub(crate) provider: PgTarget,
    /// Its application_name; its payment provider's session is named after it.
    pub(crate) app: String,
    pub(crate) settings: Vec<(String, String)>,
    pub(crate) payment_inside: bool,
    pub(crate) payment_call: Duration,
    /// Serves bookings one after another, as a service's request loop, instead of one.
    #[serde(default)]
    pub(crate) serve: bool,
    /// On SIGTERM, drains as a well-behaved service does: takes no new booking, lets the one
    /// in flight finish (commit or roll back), closes its connections and exits 0. Without it
    /// SIGTERM does what it does by default: the process dies at once.
    #[serde(default)]
    pub(crate) drain: bool,
}

impl HolderConfig {
    /// The holder of one booking, inside the transaction, with the variant's session settings.
    pub(crate) fn new(
        target: PgTarget,
        provider: PgTarget,
        app: String,
        settings: Vec<(String, String)>,
        payment_call: Duration,
    ) -> HolderConfig {
        HolderConfig {
            target,
            provider,
            app,
            settings,
            payment_inside: true,
            payment_call,
            serve: false,
            drain: false,
        }
    }
}

/// What the holder process reports: first that it is in its payment call (server clock);
/// then, a draining holder, that it got SIGTERM and what its drain came to.
#[derive(Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub(crate) enum HolderEvent {
    Paying { at_epoch: f64 },
    Draining,
    Drained { committed: usize, failed: usize },
}

/// A server whose slots, listen queue or role limit are full refuses for a moment
/// (connection-storm's next ghost arrives amid the storm): try again, as the next invocation
/// would, for up to 5 s. Both of the holder's sessions need this: against a role at its
/// connection limit, the provider's session is refused as readily as the booking's.
async fn connect_patiently(target: &PgTarget, app: &str) -> anyhow::Result<Client> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match target.connect(app).await {
            Ok(c) => return Ok(c),
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The holder as its own process (`locklab __worker orphan-lock`), so it can be frozen or
/// killed for real.
async fn holder_main(io: WorkerIo) -> anyhow::Result<()> {
    let cfg: HolderConfig = io.config()?;
    let c = connect_patiently(&cfg.target, &cfg.app).await?;
    let provider = connect_patiently(&cfg.provider, &provider_app(&cfg.app)).await?;
    let booking = Booking::new(&cfg.target, &cfg.settings);
    // A draining service listens for SIGTERM from the start; the default is to die of it.
    let terminated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if cfg.drain {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("could not listen for SIGTERM")?;
        let terminated = terminated.clone();
        tokio::spawn(async move {
            term.recv().await;
            terminated.store(true, std::sync::atomic::Ordering::SeqCst);
            // Written from this task at once, while the booking in flight goes on.
            let line = serde_json::to_string(&HolderEvent::Draining).unwrap_or_default();
            println!("{line}");
        });
    }
    let (mut committed, mut failed) = (0, 0);
    let mut reported = false;
    for n in 1.. {
        let passenger = match cfg.serve {
            true => format!("{HOLDER}-{n}"),
            false => HOLDER.to_string(),
        };
        let how = (passenger.as_str(), cfg.payment_inside, cfg.payment_call);
        let result = hold(&c, &provider, &booking, how, |at_epoch| {
            if !reported {
                io.emit(&HolderEvent::Paying { at_epoch });
            }
        })
        .await;
        reported = true;
        match result {
            Ok(()) => committed += 1,
            Err(e) if !cfg.drain => return Err(e),
            Err(_) => {
                failed += 1;
                let _ = c.batch_execute("ROLLBACK").await;
            }
        }
        if !cfg.serve || terminated.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
    }
    if terminated.load(std::sync::atomic::Ordering::SeqCst) {
        // The drain's last step: close the connections, then report and exit 0.
        drop(c);
        drop(provider);
        io.emit(&HolderEvent::Drained { committed, failed });
    }
    Ok(())
}

struct Booker {
    client: Client,
    canceller: Canceller,
    /// Where and as whom it reconnects when its connection is closed under it.
    target: PgTarget,
    app: String,
    provider: Arc<Client>,
    booking: Arc<Booking>,
    inside: bool,
    payment: Duration,
    passenger: String,
}

impl Booker {
    /// One booking attempt. A client whose connection was closed under it (a pooler's or the
    /// server's timeout) opens a new one for its next attempt, as a pool of one (`max: 1`)
    /// replaces a dead connection.
    async fn book(&mut self) -> Result<(), OpError> {
        let result = self.book_once().await;
        if self.client.is_closed()
            && let Ok(client) = self.target.connect(&self.app).await
        {
            self.canceller = Canceller::new(&client, &self.target);
            self.client = client;
        }
        result
    }

    async fn book_once(&mut self) -> Result<(), OpError> {
        if !self.inside {
            self.booking.charge(&self.provider, &self.passenger).await?;
            tokio::time::sleep(self.payment).await;
            return match self
                .booking
                .book_at_once(&self.client, &self.passenger)
                .await?
            {
                true => Ok(()),
                false => Err(OpError::new(class::SOLD_OUT)),
            };
        }
        let how = (self.passenger.as_str(), self.payment);
        self.booking
            .book_inside(&self.client, &self.provider, how)
            .await
    }
}

/// Booking clients on `target`, one per application name, each on its own connection, all
/// connected before they are needed. `how`: whether the payment call is inside the
/// transaction, and how long it takes.
pub(crate) async fn connect_bookers(
    target: &PgTarget,
    provider: &Arc<Client>,
    booking: &Arc<Booking>,
    apps: &[String],
    (inside, payment): (bool, Duration),
) -> anyhow::Result<Vec<Box<dyn workload::Client>>> {
    let mut bookers: Vec<Box<dyn workload::Client>> = Vec::with_capacity(apps.len());
    let connects = apps.iter().map(|app| target.connect(app));
    for (i, (c, app)) in futures::future::join_all(connects)
        .await
        .into_iter()
        .zip(apps)
        .enumerate()
    {
        let client = c.context("could not connect a booking client")?;
        bookers.push(Box::new(Booker {
            canceller: Canceller::new(&client, target),
            client,
            target: target.clone(),
            app: app.clone(),
            provider: provider.clone(),
            booking: booking.clone(),
            inside,
            payment,
            passenger: format!("passenger-{i}"),
        }));
    }
    Ok(bookers)
}

impl workload::Client for Booker {
    fn kind(&self) -> &'static str {
        "book"
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.book())
    }
    fn canceller(&self) -> Option<crate::env::postgres::Canceller> {
        Some(self.canceller.clone())
    }
}

/// Starts the holder and waits until it is inside its payment call. Returns the victim for the
/// fault and the server clock when the call began.
async fn start_holder(
    ctx: &VariantCtx<'_>,
    cfg: &OrphanLock,
) -> anyhow::Result<(Victim, f64, Option<deadpool_postgres::Pool>)> {
    let env = ctx.env;
    let app = ctx.app("w/holder");
    let settings = &ctx.variant.settings;
    let (inside, payment_call) = (cfg.payment_inside, cfg.payment_call);
    if cfg.fault == Fault::Leak {
        // One application pool of one connection, as in a service with a small pool.
        let pool = ctx
            .pg()
            .pool(&app, 1, None, deadpool_postgres::QueueMode::Fifo)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (task_pool, target) = (pool.clone(), ctx.pg().clone());
        let provider_target = provider_target(env).clone();
        let settings = settings.clone();
        let provider = provider_app(&app);
        let task = tokio::spawn(async move {
            let Ok(conn) = task_pool.get().await else {
                return;
            };
            let booking = Booking::new(&target, &settings);
            let Ok(provider) = provider_target.connect(&provider).await else {
                return;
            };
            let how = (HOLDER, inside, payment_call);
            let _ = hold(&conn, &provider, &booking, how, |at| {
                let _ = tx.send(at);
            })
            .await;
        });
        let at = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .context("the holder task did not start its payment call within 10 s")?
            .context("the holder task failed before its payment call")?;
        return Ok((Victim::Task(task), at, Some(pool)));
    }

    let config = HolderConfig {
        payment_inside: inside,
        ..HolderConfig::new(
            ctx.pg().clone(),
            provider_target(env).clone(),
            app,
            settings.clone(),
            payment_call,
        )
    };
    let (victim, at) = spawn_holder(env, None, config).await?;
    Ok((victim, at, None))
}

/// Starts the holder as its own process and waits until it is inside its payment call, holding
/// the row. Returns the victim for the fault and the server clock when the call began.
/// `netns`: inside a network namespace of the run's own, so its connection can be cut off.
pub(crate) async fn spawn_holder(
    env: &crate::env::Env,
    netns: Option<&crate::env::netns::Netns>,
    config: HolderConfig,
) -> anyhow::Result<(Victim, f64)> {
    let mut worker = match netns {
        Some(ns) => env.spawn_worker_in(ns, OrphanLock::NAME, &config).await?,
        None => env.spawn_worker(OrphanLock::NAME, &config).await?,
    };
    let paying = worker
        .next::<HolderEvent>(Instant::now() + Duration::from_secs(10))
        .await;
    match paying {
        Ok(Some(HolderEvent::Paying { at_epoch })) => {
            Ok((Victim::Process(Box::new(worker)), at_epoch))
        }
        Ok(Some(_)) => {
            worker.end().await;
            bail!("the holder process reported something before its payment call")
        }
        Ok(None) => {
            worker.end().await;
            bail!("the holder process did not reach its payment call within 10 s")
        }
        Err(e) => {
            worker.end().await;
            Err(e.context("the holder process did not reach its payment call"))
        }
    }
}

/// The probe: a session of its own that tries to lock the row, to learn from the server
/// whether, and until when, someone else held it.
pub(crate) struct Prober {
    client: Client,
    canceller: Canceller,
    lock: String,
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
            lock: format!(
                "SELECT 1 FROM {} WHERE flight_id = $1 AND fare_class = $2 FOR UPDATE",
                booking.inventory
            ),
        })
    }

    /// Locks the row without waiting; on success returns the server clock then.
    pub(crate) async fn try_now(&self) -> anyhow::Result<Option<f64>> {
        let c = &self.client;
        c.batch_execute(&begin_unlimited()).await?;
        match c
            .rows(&format!("{} NOWAIT", self.lock), &[&FLIGHT, &FARE])
            .await
        {
            Ok(_) => {
                let at = server_epoch(c).await?;
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
        let waited = tokio::select! {
            r = c.rows(&self.lock, &[&FLIGHT, &FARE]) => Some(r),
            _ = tokio::time::sleep_until(deadline) => None,
            _ = cancel.cancelled() => None,
        };
        match waited {
            Some(r) => {
                r.context("the probe's wait for the row failed")?;
                let at = server_epoch(c).await?;
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

async fn run(cfg: &OrphanLock, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let env = ctx.env;
    let (clients, fault, inside) = (cfg.clients, cfg.fault, cfg.payment_inside);
    // The workload's path: through the pooler for a variant that runs through one.
    let pg = ctx.pg();
    let booking = Arc::new(Booking::new(pg, &ctx.variant.settings));

    let admin = ctx.admin(&booking.ddl(cfg.seats)).await?;

    let clock = Clock::start();
    let observer = Observer::start(
        &env.direct,
        &ctx.app("observer"),
        clock,
        ctx.app("w/"),
        ctx.app("w/holder"),
    )
    .await?;

    let provider = Arc::new(provider_target(env).connect(&ctx.app("provider")).await?);

    // The booking clients are already running when the holder freezes: connect them first, so
    // connection set-up (slow with SCRAM over TCP) never eats into the window being measured.
    let apps: Vec<String> = (0..clients)
        .map(|i| ctx.app(&format!("w/booker-{i}")))
        .collect();
    let bookers =
        connect_bookers(pg, &provider, &booking, &apps, (inside, cfg.booker_payment)).await?;

    // Everything after this point must reach the teardown below, whatever fails.
    let outcome = async {
        let (mut victim, paying_at, pool) = start_holder(ctx, cfg).await?;
        let result = async {
            let reported = Instant::now();
            let probe_app = ctx.app("probe");
            let prober = Prober::connect(&env.direct, &probe_app, &booking).await?;
            // Looked at just before the fault: a row the holder never locked reads free here.
            let locked_before_fault = prober.try_now().await?.is_none();
            victim.inject(fault)?;
            let deadline = Instant::now() + cfg.deadline;

            let next_user_in_leaked_tx = match &pool {
                Some(pool) => Some(next_user_in_leaked_tx(pool).await?),
                None => None,
            };

            let probe_task = tokio::spawn(prober.wait_free(deadline, ctx.cancel.clone()));
            // The probe queues on the row before any booker does, so it is first in line.
            wait_until_probe_queued(&admin, &probe_app, &probe_task).await;

            let (booked, ticker) = ctx.progress_counter(format!(" of {clients} booked"));
            let plan = Plan::UntilOk {
                retry_after: cfg.retry_after,
                stop_on: &[],
            };
            let driven = workload::drive(bookers, plan, clock, deadline, &ctx.cancel, booked).await;
            drop(ticker);
            let probe = Probe {
                locked_before_fault,
                free_at_epoch: probe_task.await.context("the probe task failed")??,
            };
            let waited_ms = reported.elapsed().as_secs_f64() * 1000.0;
            if cfg.reconcile {
                // The reconciler runs once the payment call's own time is up, while the
                // holder is still frozen, dead or leaked: its charge has no booking.
                let grace = cfg.payment_call;
                tokio::time::sleep_until(reported + grace + grace / 10).await;
                reconcile(&admin, &booking, grace)
                    .await
                    .context("the reconciler failed")?;
            }
            anyhow::Ok((driven, probe, waited_ms, next_user_in_leaked_tx, paying_at))
        }
        .await;
        victim.end().await;
        drop(pool);
        result
    }
    .await;

    // Whatever the fault left behind (a frozen holder's session, a cancelled waiter) ends here,
    // so the next variant starts clean.
    for role in ["w/", "probe", "provider"] {
        ctx.terminate_sessions(role).await?;
    }
    let samples = observer.finish().await;
    let (driven, probe, waited_ms, next_user_in_leaked_tx, paying_at) = outcome?;
    let (committed, payments) = booking.tally(&admin, "%").await?;
    Ok(VariantRun::checked(
        &clock,
        driven.history,
        crate::check::Input::OrphanLock(Observations {
            cut_off: driven.cut_off || probe.free_at_epoch.is_none(),
            holder_paying_epoch: paying_at,
            probe,
            waited_ms,
            samples,
            bookings_committed: committed,
            payments,
            next_user_in_leaked_tx,
        }),
    ))
}

/// Leak fault: the next user of the holder's pool checks whether it was handed a connection
/// still inside the aborted task's transaction (transaction start earlier than statement start).
async fn next_user_in_leaked_tx(pool: &deadpool_postgres::Pool) -> anyhow::Result<bool> {
    let conn = tokio::time::timeout(Duration::from_secs(5), pool.get())
        .await
        .context("the holder's pool gave no connection within 5 s")?
        .context("the holder's pool gave no connection")?;
    let row = conn
        .one(
            "SELECT transaction_timestamp() < statement_timestamp()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

pub(crate) async fn wait_until_probe_queued(
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
