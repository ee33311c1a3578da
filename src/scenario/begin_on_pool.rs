//! begin-on-pool: a booking transaction whose BEGIN, SELECT, UPDATE, INSERT and COMMIT each go
//! through the pool as a checkout of their own, so they land on whichever connection is free.
//! The checker compares what customers were told with the rows PostgreSQL shows afterwards and
//! with the pool's connections left `idle in transaction`.

use crate::env::postgres::Sql as _;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use std::future::Future;

use futures::future::BoxFuture;

use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun};
use crate::check::pool::{BOOKING_METRICS, BookingObservations};
use crate::error::UsageError;
use crate::history::class;
use crate::workload::gate::Gates;
use crate::workload::{self, OpError, Plan};

/// begin-on-pool's configuration: its parameters, parsed once.
pub struct BeginOnPool {
    bookers: usize,
    pool_size: usize,
    /// One client per booking (`dedicated`), or every statement its own checkout (`pool`).
    dedicated: bool,
    for_update: bool,
    /// UPDATE ... WHERE NOT booked, with its row count checked.
    conditional: bool,
    unique_index: bool,
    think: Duration,
    step: Duration,
    deadline: Duration,
}

impl Code for BeginOnPool {
    const NAME: &'static str = "begin-on-pool";
    const FILE: &'static str = include_str!("../../scenarios/begin-on-pool.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::count("bookers", 1, 1000),
        ParamSpec::count("pool_size", 2, 1000),
        ParamSpec::words("client", &["pool", "dedicated"]),
        ParamSpec::words("select", &["plain", "for-update"]),
        ParamSpec::words("update", &["plain", "conditional"]),
        ParamSpec::flag("unique_index"),
        ParamSpec::duration("think", 0, HOUR_MS),
        ParamSpec::duration("step", 1, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = BOOKING_METRICS;
    const SIZED_BY: &'static str = "pool_size";

    fn config(p: &Params) -> Result<BeginOnPool, UsageError> {
        let (think, step) = (p.duration("think")?, p.duration("step")?);
        // A booking takes the think time plus up to one step per gate, even when nothing blocks.
        let booking = think + step * GATES as u32;
        let what = format!("think + {} steps", GATES);
        p.deadline_outlasts(2, &what, booking, "no booking could finish before it")?;
        Ok(BeginOnPool {
            bookers: p.count("bookers")?,
            pool_size: p.count("pool_size")?,
            dedicated: p.switch("client", "dedicated", "pool")?,
            for_update: p.switch("select", "for-update", "plain")?,
            conditional: p.switch("update", "conditional", "plain")?,
            unique_index: p.flag("unique_index")?,
            think,
            step,
            deadline: p.duration("deadline")?,
        })
    }

    fn sessions(&self) -> usize {
        // The warm pool and the setup session, which also reads the bookings afterwards.
        self.pool_size + 1
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        run(self, ctx)
    }
}

const SEAT: i32 = 1;

/// Paces the bookers statement by statement: after each statement a booker waits until every
/// booker has finished that statement, or `step` has passed. Where nothing blocks (every
/// statement through the pool) all arrive at once, so the pool hands out connections the same
/// way on every run. Where bookers wait on a row lock (the dedicated-client variants) the gate
/// falls back to the timeout instead of deadlocking, as a plain barrier would.
const GATES: usize = 4;

struct Sql {
    select: String,
    update: String,
    conditional: bool,
    insert: String,
}

/// Where a booker's statements go: every one through the pool, or one checked-out client.
enum Conn {
    Pool,
    Dedicated(Box<deadpool_postgres::Object>),
}

/// A connection for one statement.
enum Checkout<'a> {
    Dedicated(&'a deadpool_postgres::Object),
    Pooled(Box<deadpool_postgres::Object>),
}

impl std::ops::Deref for Checkout<'_> {
    type Target = deadpool_postgres::Object;
    fn deref(&self) -> &deadpool_postgres::Object {
        match self {
            Checkout::Dedicated(c) => c,
            Checkout::Pooled(c) => c,
        }
    }
}

struct Booker {
    pool: deadpool_postgres::Pool,
    dedicated: bool,
    sql: Arc<Sql>,
    customer: String,
    think: Duration,
    pace: Arc<Gates>,
    start_line: Arc<tokio::sync::Barrier>,
    told_booked: Arc<Mutex<BTreeSet<String>>>,
}

impl Booker {
    /// Where the next statement runs: the dedicated client, or whatever connection the pool
    /// hands out (back to the pool as soon as the statement is done, as `pool.query` does).
    async fn client<'a>(&self, conn: &'a Conn) -> Result<Checkout<'a>, OpError> {
        Ok(match conn {
            Conn::Dedicated(c) => Checkout::Dedicated(c),
            Conn::Pool => Checkout::Pooled(Box::new(self.pool.get().await?)),
        })
    }

    async fn exec(
        &self,
        conn: &Conn,
        sql: &str,
        params: &[&dyn crate::env::postgres::Param],
    ) -> Result<u64, OpError> {
        Ok(self.client(conn).await?.exec(sql, params).await?)
    }

    async fn booked(&self, conn: &Conn) -> Result<bool, OpError> {
        let c = self.client(conn).await?;
        Ok(c.one(&self.sql.select, &[&SEAT]).await?.get(0))
    }

    async fn book(&mut self) -> Result<(), OpError> {
        // Everyone starts together (nothing is locked yet, so waiting here cannot deadlock).
        let _ = tokio::time::timeout(Duration::from_secs(10), self.start_line.wait()).await;
        let conn = match self.dedicated {
            true => Conn::Dedicated(Box::new(self.pool.get().await?)),
            false => Conn::Pool,
        };
        let mut passed = 0;
        let result = self.transaction(&conn, &mut passed).await;
        self.pace.skip(passed, GATES);
        if result.is_err() {
            let _ = self.exec(&conn, "ROLLBACK", &[]).await;
        }
        if result.is_ok()
            && let Ok(mut told) = self.told_booked.lock()
        {
            told.insert(self.customer.clone());
        }
        result
    }

    async fn transaction(&self, conn: &Conn, passed: &mut usize) -> Result<(), OpError> {
        let pace = |gate: usize, passed: &mut usize| {
            *passed = gate + 1;
            self.pace.pass(gate)
        };
        self.exec(conn, "BEGIN", &[]).await?;
        pace(0, passed).await;
        if self.booked(conn).await? {
            return Err(OpError::new(class::TAKEN));
        }
        pace(1, passed).await;
        // The window between check and act, widened on purpose so every run shows the race.
        tokio::time::sleep(self.think).await;
        let updated = self
            .exec(conn, &self.sql.update, &[&SEAT, &self.customer])
            .await?;
        if self.sql.conditional && updated == 0 {
            return Err(OpError::new(class::TAKEN));
        }
        pace(2, passed).await;
        self.exec(conn, &self.sql.insert, &[&SEAT, &self.customer])
            .await?;
        pace(3, passed).await;
        self.exec(conn, "COMMIT", &[]).await?;
        Ok(())
    }
}

impl workload::Client for Booker {
    fn kind(&self) -> &'static str {
        "book"
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.book())
    }
    fn canceller(&self) -> Option<crate::env::postgres::Canceller> {
        // Statements land on many connections; the cut-off ends the pool's sessions instead.
        None
    }
}

/// The booking's statements: a locking read for `for-update`, a conditional UPDATE for
/// `conditional-update`.
fn statements(cfg: &BeginOnPool, seats: &str, bookings: &str) -> Sql {
    let (for_update, conditional) = (cfg.for_update, cfg.conditional);
    Sql {
        select: format!(
            "SELECT booked FROM {seats} WHERE id = $1{}",
            if for_update { " FOR UPDATE" } else { "" }
        ),
        update: format!(
            "UPDATE {seats} SET booked = true, booked_by = $2 WHERE id = $1{}",
            if conditional { " AND NOT booked" } else { "" }
        ),
        conditional,
        insert: format!("INSERT INTO {bookings} (seat_id, customer) VALUES ($1, $2)"),
    }
}

async fn run(cfg: &BeginOnPool, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let env = ctx.env;
    let bookers = cfg.bookers;
    let (seats, bookings) = (env.pg.table("seats"), env.pg.table("bookings"));
    let index = match cfg.unique_index {
        true => format!("CREATE UNIQUE INDEX ON {bookings} (seat_id) WHERE status = 'confirmed';"),
        false => String::new(),
    };
    let admin = ctx
        .admin(&format!(
            "DROP TABLE IF EXISTS {seats}, {bookings}; \
             CREATE TABLE {seats} (id int PRIMARY KEY, booked boolean NOT NULL DEFAULT false, \
                                   booked_by text); \
             CREATE TABLE {bookings} (id bigserial PRIMARY KEY, seat_id int NOT NULL, \
                                      customer text NOT NULL, status text NOT NULL DEFAULT 'confirmed'); \
             {index} \
             INSERT INTO {seats} (id) VALUES ({SEAT});"
        ))
        .await?;

    let sql = Arc::new(statements(cfg, &seats, &bookings));
    let pool_app = ctx.app("w/pool");
    // deadpool's defaults: first in, first out, and a checkout that waits for ever.
    let pool = env.pg.pool(
        &pool_app,
        cfg.pool_size,
        None,
        deadpool_postgres::QueueMode::Fifo,
    )?;
    // A service's pool is warm: every connection is open and idle before the bookers come.
    crate::env::postgres::PgTarget::warm(&pool).await?;
    let told_booked = Arc::new(Mutex::new(BTreeSet::new()));
    let dedicated = cfg.dedicated;
    let start_line = Arc::new(tokio::sync::Barrier::new(bookers));
    let think = cfg.think;
    let pace = Arc::new(Gates::new(GATES, bookers, cfg.step));
    let clients: Vec<Box<dyn workload::Client>> = (0..bookers)
        .map(|i| {
            Box::new(Booker {
                pool: pool.clone(),
                dedicated,
                sql: sql.clone(),
                customer: format!("customer-{i}"),
                think,
                pace: pace.clone(),
                start_line: start_line.clone(),
                told_booked: told_booked.clone(),
            }) as Box<dyn workload::Client>
        })
        .collect();

    let window = ctx.window(cfg.deadline);
    let driven = ctx
        .drive(clients, Plan::Once, &window, " customers told booked")
        .await;

    // Every booker is done: whatever the pool's connections still have open is leaked.
    let leaked: i64 = admin
        .one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
            &[&pool_app],
        )
        .await
        .context("could not look at the pool's sessions")?
        .get(0);
    pool.close();
    ctx.terminate_sessions("w/").await?;
    let visible: Vec<String> = admin
        .rows(&format!("SELECT customer FROM {bookings}"), &[])
        .await
        .context("could not count the bookings")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let told = told_booked.lock().map(|t| t.clone()).unwrap_or_default();
    Ok(VariantRun::checked(
        &window.clock,
        driven.history,
        crate::check::Input::PoolBooking(BookingObservations {
            seats: 1,
            told_booked: told,
            visible,
            leaked_open_transactions: leaked,
            cut_off: driven.cut_off,
        }),
    ))
}
