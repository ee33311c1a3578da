//! The lock client every buyer runs, the first holder included: take the Redis lock, read the
//! stock, pay, write, release. Which lock it takes is the variant's point.

use crate::env::postgres::Sql as _;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::recorder::Flag;
use crate::history::{class, epoch_ms};
use crate::workload::OpError;

pub const PRODUCT: i32 = 1;

/// How the buyers lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockMode {
    /// Check-then-act with no lock at all.
    None,
    /// `SETNX key buyer`, no expiry; released with a plain DEL.
    Setnx,
    /// `SET key buyer NX PX ttl`; released with a plain DEL.
    SetNxPx,
    /// `SET key token NX PX ttl`, compare-and-delete release, and a fencing token from INCR
    /// that PostgreSQL checks on every access to the row.
    TokenFenced,
    /// lock-watchdog: a token, compare-and-delete release, and a lease renewed every third of
    /// it while the holder's process lives.
    Watchdog,
    /// The watchdog's lock with token-fenced's fencing token.
    WatchdogFenced,
}

impl LockMode {
    /// Its value is a random token, and only that token's owner deletes it.
    fn tokened(self) -> bool {
        matches!(
            self,
            LockMode::TokenFenced | LockMode::Watchdog | LockMode::WatchdogFenced
        )
    }

    /// Every lock comes with a fencing token PostgreSQL checks.
    fn fenced(self) -> bool {
        matches!(self, LockMode::TokenFenced | LockMode::WatchdogFenced)
    }

    /// A background task renews the lease while the holder lives.
    pub fn watched(self) -> bool {
        matches!(self, LockMode::Watchdog | LockMode::WatchdogFenced)
    }
}

crate::scenario::spec::words!(pub LOCK_MODES, LOCK_MODE_OF: LockMode = {
    "none" => LockMode::None,
    "setnx" => LockMode::Setnx,
    "set-nx-px" => LockMode::SetNxPx,
    "token-fenced" => LockMode::TokenFenced,
});

crate::scenario::spec::words!(pub WATCHDOG_LOCKS, WATCHDOG_LOCK_OF: LockMode = {
    "watchdog" => LockMode::Watchdog,
    "watchdog-fenced" => LockMode::WatchdogFenced,
});

/// Everything a buyer needs to know; sent to the holder process as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shop {
    pub lock: LockMode,
    pub ttl_ms: u64,
    pub payment_ms: u64,
    /// A watchdog stops renewing once the lock has been held this long (none: for as long as
    /// its holder's process lives).
    #[serde(default)]
    pub max_lease_ms: Option<u64>,
    pub lock_key: String,
    pub fence_key: String,
    #[serde(flatten)]
    pub stock: Stock,
}

/// The shop's PostgreSQL side: the product's stock row (with the newest fence it has seen)
/// and the orders. redis-failover sells from it too, behind locks of its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stock {
    pub products: String,
    pub orders: String,
}

/// What a buyer reports while it buys (the holder process prints these as JSON lines).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Granted {
        value: String,
        at_ms: f64,
        waited_ms: f64,
    },
    /// Stock read and found available: the slow part starts now.
    Paying,
    Released {
        at_ms: f64,
        deleted: Option<String>,
    },
    Done {
        error: Option<String>,
    },
}

/// Only deletes the key while it still holds my token.
pub const COMPARE_AND_DELETE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// Extends the lease only while the key still holds my token.
const COMPARE_AND_PEXPIRE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

/// The renewing task, stopped when its holder lets go (or dropped with it).
struct Watchdog(tokio::task::JoinHandle<()>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct Held {
    pub value: String,
    pub fence: Option<i64>,
}

impl Stock {
    /// The run's `products` and `orders` tables.
    pub fn of(env: &crate::env::Env) -> Stock {
        Stock {
            products: env.pg.table("products"),
            orders: env.pg.table("orders"),
        }
    }

    /// The tables afresh, with `stock` items of the one product.
    pub async fn create(&self, admin: &Client, stock: i64) -> anyhow::Result<()> {
        use anyhow::Context as _;
        admin
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {products}, {orders}; \
                 CREATE TABLE {products} (id int PRIMARY KEY, stock int NOT NULL, \
                                          fence bigint NOT NULL DEFAULT 0); \
                 CREATE TABLE {orders} (id bigserial PRIMARY KEY, product_id int, buyer text, \
                                        fence bigint, at timestamptz DEFAULT clock_timestamp()); \
                 INSERT INTO {products} (id, stock) VALUES ({PRODUCT}, {stock});",
                products = self.products,
                orders = self.orders,
            ))
            .await
            .context("could not create the scenario's tables")
    }

    /// What is left in stock, and how many orders PostgreSQL counts.
    pub async fn tally(&self, admin: &Client) -> anyhow::Result<(i64, i64)> {
        use anyhow::Context as _;
        let row = admin
            .one(
                &format!(
                    "SELECT (SELECT stock FROM {} WHERE id = $1)::int8, (SELECT count(*) FROM {})",
                    self.products, self.orders
                ),
                &[&PRODUCT],
            )
            .await
            .context("could not count the orders")?;
        Ok((row.get(0), row.get(1)))
    }

    /// Reads the stock. With a fence, the read also claims the row for this token, so a holder
    /// whose lock has since passed to a newer token can no longer write.
    pub async fn read(&self, pg: &Client, fence: Option<i64>) -> Result<i32, OpError> {
        let row = match fence {
            Some(f) => pg
                .opt(
                    &format!(
                        "UPDATE {} SET fence = $2 WHERE id = $1 AND fence < $2 RETURNING stock",
                        self.products
                    ),
                    &[&PRODUCT, &f],
                )
                .await?
                .ok_or_else(|| OpError::new(class::FENCED))?,
            None => {
                pg.one(
                    &format!("SELECT stock FROM {} WHERE id = $1", self.products),
                    &[&PRODUCT],
                )
                .await?
            }
        };
        Ok(row.get(0))
    }

    pub async fn write(&self, pg: &Client, me: &str, fence: Option<i64>) -> Result<(), OpError> {
        match fence {
            None => {
                // What the unfenced code does: it already checked the stock, so it just takes one.
                pg.exec(
                    &format!(
                        "WITH p AS (UPDATE {} SET stock = stock - 1 WHERE id = $1 RETURNING id) \
                         INSERT INTO {} (product_id, buyer) SELECT id, $2 FROM p",
                        self.products, self.orders
                    ),
                    &[&PRODUCT, &me],
                )
                .await?;
                Ok(())
            }
            Some(f) => {
                let n = pg
                    .exec(
                        &format!(
                            "WITH p AS (UPDATE {} SET stock = stock - 1 \
                               WHERE id = $1 AND fence = $3 AND stock > 0 RETURNING id) \
                             INSERT INTO {} (product_id, buyer, fence) SELECT id, $2, $3 FROM p",
                            self.products, self.orders
                        ),
                        &[&PRODUCT, &me, &f],
                    )
                    .await?;
                if n == 1 {
                    return Ok(());
                }
                let now: i64 = pg
                    .one(
                        &format!("SELECT fence FROM {} WHERE id = $1", self.products),
                        &[&PRODUCT],
                    )
                    .await?
                    .get(0);
                Err(OpError::new(if now != f {
                    class::FENCED
                } else {
                    class::SOLD_OUT
                }))
            }
        }
    }
}

impl Shop {
    async fn acquire(
        &self,
        redis: &mut MultiplexedConnection,
        me: &str,
    ) -> Result<Option<Held>, OpError> {
        let granted = match self.lock {
            LockMode::None => return Ok(None),
            LockMode::Setnx => {
                redis::cmd("SETNX")
                    .arg(&self.lock_key)
                    .arg(me)
                    .query_async::<i64>(redis)
                    .await?
                    == 1
            }
            LockMode::SetNxPx
            | LockMode::TokenFenced
            | LockMode::Watchdog
            | LockMode::WatchdogFenced => {
                let value = match self.lock.tokened() {
                    true => format!("{me}:{:016x}", rand::random::<u64>()),
                    false => me.to_string(),
                };
                let ok: Option<String> = redis::cmd("SET")
                    .arg(&self.lock_key)
                    .arg(&value)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.ttl_ms)
                    .query_async(redis)
                    .await?;
                if ok.is_none() {
                    return Err(OpError::new(class::DENIED));
                }
                let fence = match self.lock.fenced() {
                    true => Some(
                        redis::cmd("INCR")
                            .arg(&self.fence_key)
                            .query_async::<i64>(redis)
                            .await?,
                    ),
                    false => None,
                };
                return Ok(Some(Held { value, fence }));
            }
        };
        match granted {
            true => Ok(Some(Held {
                value: me.to_string(),
                fence: None,
            })),
            false => Err(OpError::new(class::DENIED)),
        }
    }

    /// Returns the value the release removed from Redis, if any.
    async fn release(
        &self,
        redis: &mut MultiplexedConnection,
        held: &Held,
    ) -> Result<Option<String>, OpError> {
        if self.lock.tokened() {
            let n: i64 = redis::Script::new(COMPARE_AND_DELETE)
                .key(&self.lock_key)
                .arg(&held.value)
                .invoke_async(redis)
                .await?;
            return Ok((n == 1).then(|| held.value.clone()));
        }
        // A plain DEL, as the unsafe code does; the GET in the same MULTI only lets the lab see
        // whose lock it removed.
        let (was, n): (Option<String>, i64) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(&self.lock_key)
            .cmd("DEL")
            .arg(&self.lock_key)
            .query_async(redis)
            .await?;
        Ok(if n == 1 { was } else { None })
    }

    /// A watchdog's lease renewal, every third of the lease while the holder's process runs:
    /// it stops when the key no longer holds `value` (the lease ran out, someone else has it)
    /// or, with `max_lease_ms`, before a renewal would come after that bound. A stopped process
    /// stops its renewals with it; a hung task in a live one does not.
    fn watchdog(&self, redis: &MultiplexedConnection, value: &str) -> Option<Watchdog> {
        if !self.lock.watched() {
            return None;
        }
        let (mut redis, key, value) = (redis.clone(), self.lock_key.clone(), value.to_string());
        let (lease, bound) = (self.ttl_ms, self.max_lease_ms.map(Duration::from_millis));
        let every = Duration::from_millis((lease / 3).max(1));
        let granted = tokio::time::Instant::now();
        Some(Watchdog(tokio::spawn(async move {
            let renew = redis::Script::new(COMPARE_AND_PEXPIRE);
            loop {
                tokio::time::sleep(every).await;
                // The last renewal comes at least one period before the bound: the lock then
                // runs out between a third and two thirds of a lease after it.
                if bound.is_some_and(|b| granted.elapsed() + every > b) {
                    return;
                }
                let renewed = renew
                    .key(&key)
                    .arg(&value)
                    .arg(lease)
                    .invoke_async::<i64>(&mut redis)
                    .await;
                // A reply of 0: the key is gone or someone else's, there is nothing to renew.
                // An error is tried again at the next turn, as the libraries do.
                if let Ok(0) = renewed {
                    return;
                }
            }
        })))
    }

    /// One purchase attempt, start to finish.
    pub async fn buy(
        &self,
        pg: &Client,
        redis: &mut MultiplexedConnection,
        me: &str,
        waited_ms: f64,
        finish_after: Option<&Flag>,
        report: &mut (dyn FnMut(Event) + Send),
    ) -> Result<(), OpError> {
        let held = self.acquire(redis, me).await?;
        if let Some(h) = &held {
            report(Event::Granted {
                value: h.value.clone(),
                at_ms: epoch_ms(),
                waited_ms,
            });
        }
        let fence = held.as_ref().and_then(|h| h.fence);
        let watchdog = held.as_ref().and_then(|h| self.watchdog(redis, &h.value));
        let result = async {
            if self.stock.read(pg, fence).await? <= 0 {
                return Err(OpError::new(class::SOLD_OUT));
            }
            report(Event::Paying);
            tokio::time::sleep(Duration::from_millis(self.payment_ms)).await;
            if let Some(f) = finish_after {
                f.wait().await;
            }
            self.stock.write(pg, me, fence).await
        }
        .await;
        drop(watchdog);
        if let Some(h) = &held {
            // The holder stops counting on the lock when it sends the release (the grant is
            // counted from the reply): so a clean hand-over never reads as an overlap.
            let at_ms = epoch_ms();
            let released = self.release(redis, h).await;
            report(Event::Released {
                at_ms,
                deleted: released.as_ref().ok().cloned().flatten(),
            });
            result?;
            released?;
            return Ok(());
        }
        result
    }
}
