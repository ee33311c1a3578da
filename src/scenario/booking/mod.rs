//! The booking that orphan-lock, connection-storm, lost-client and shutdown share: a flight's
//! inventory row, the booking transaction that locks it and calls a payment provider, the
//! bookers that queue on it, the holder process a fault hits ([`holder`]), and the probe that
//! learns from the server when the row came free ([`prober`]).

pub mod holder;
pub mod prober;

use crate::env::postgres::Sql as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use tokio_postgres::Client;

use crate::check::orphan_lock::Payments;
use crate::env::postgres::{Canceller, PgTarget, begin};
use crate::history::class;
use crate::workload::{self, OpError};

pub(crate) use holder::{HolderConfig, HolderEvent, spawn_holder};
pub(crate) use prober::{Prober, book_behind_the_probe};

pub(crate) const FLIGHT: &str = "LL-101";
pub(crate) const FARE: &str = "Y";

/// Sessions that watch rather than book: no timeouts of the user's server may cut them short.
pub(crate) const UNLIMITED: &[(&str, &str)] = &[
    ("lock_timeout", "0"),
    ("statement_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
];

pub(crate) fn unlimited() -> Vec<(String, String)> {
    UNLIMITED
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `BEGIN` for a watching session (see [`UNLIMITED`]).
pub(crate) fn begin_unlimited() -> String {
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

/// Where the payment provider keeps its records: another system, so never behind the
/// booking service's pooler. (Sharing its pool, a booking that holds a server connection
/// while it waits for its charge deadlocks the pool once every connection is such a booking.)
pub(crate) fn provider_target(env: &crate::env::Env) -> &PgTarget {
    &env.direct
}

/// The payment provider's session of the holder's process (`provider-holder`): another
/// system's, so outside the workload's `w/` sessions the observer counts.
pub(crate) fn provider_app(holder_app: &str) -> String {
    holder_app.replace("/w/holder", "/provider-holder")
}

/// The reconciler of a pay-first service: once the payment call's own time has passed,
/// refunds each charge that never became a booking. Each charge is locked first, so a late
/// booking of the same passenger either committed before (and is seen) or finds it refunded.
pub(crate) async fn reconcile(
    admin: &Client,
    booking: &Booking,
    grace: Duration,
) -> anyhow::Result<u64> {
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

pub(crate) struct Booker {
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
