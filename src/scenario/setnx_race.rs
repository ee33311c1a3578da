//! setnx-race: a Redis lock in front of PostgreSQL for the last item in stock. Each buyer takes
//! the lock, reads the stock, pays (slowly), decrements the stock and records an order, and
//! releases the lock. The first holder is a process of its own, so it can really crash (SIGKILL)
//! or pause (SIGSTOP) while it holds the lock. Every critical section is recorded, and an
//! observer samples the lock key, so overlaps and stuck locks are measured, not assumed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;
use tokio_postgres::Client;

use super::{Kind, VariantCtx, VariantRun};
use crate::check::setnx_race::{Crash, METRICS, Observations, Section, evaluate};
use crate::env::postgres::PgTarget;
use crate::env::process::spawn_tied;
use crate::env::redis::RedisTarget;
use crate::error::UsageError;
use crate::fault::{self, Fault, Victim};
use crate::history::{Clock, Op, Outcome, class, epoch_ms};
use crate::observe;
use crate::scenario::spec::Params;
use crate::workload::{self, OpError, Plan};

pub const KIND: Kind = Kind {
    name: "setnx-race",
    file: include_str!("../../scenarios/setnx-race.toml"),
    params: &[
        "buyers",
        "stock",
        "lock",
        "fault",
        "ttl",
        "payment",
        "pause",
        "retry_after",
        "deadline",
    ],
    metrics: METRICS,
    needs_redis: true,
    validate,
    run: run_boxed,
};

const PRODUCT: i32 = 1;

/// How the buyers lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum LockMode {
    /// Check-then-act with no lock at all.
    None,
    /// `SETNX key buyer`, no expiry; released with a plain DEL.
    Setnx,
    /// `SET key buyer NX PX ttl`; released with a plain DEL.
    SetNxPx,
    /// `SET key token NX PX ttl`, compare-and-delete release, and a fencing token from INCR
    /// that PostgreSQL checks on every access to the row.
    TokenFenced,
}

impl std::str::FromStr for LockMode {
    type Err = UsageError;
    fn from_str(s: &str) -> Result<LockMode, UsageError> {
        match s {
            "none" => Ok(LockMode::None),
            "setnx" => Ok(LockMode::Setnx),
            "set-nx-px" => Ok(LockMode::SetNxPx),
            "token-fenced" => Ok(LockMode::TokenFenced),
            _ => Err(UsageError(format!(
                "lock must be none, setnx, set-nx-px or token-fenced, not `{s}`"
            ))),
        }
    }
}

/// What happens to the first holder while it holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HolderFault {
    None,
    /// SIGKILL: a crashed function.
    Crash,
    /// SIGSTOP for `pause`, then SIGCONT: a GC pause, a frozen function.
    Pause,
}

impl std::str::FromStr for HolderFault {
    type Err = UsageError;
    fn from_str(s: &str) -> Result<HolderFault, UsageError> {
        match s {
            "none" => Ok(HolderFault::None),
            "crash" => Ok(HolderFault::Crash),
            "pause" => Ok(HolderFault::Pause),
            _ => Err(UsageError(format!(
                "fault must be none, crash or pause, not `{s}`"
            ))),
        }
    }
}

fn validate(p: &Params) -> anyhow::Result<()> {
    p.text("lock")?.parse::<LockMode>()?;
    p.text("fault")?.parse::<HolderFault>()?;
    if p.count("buyers")? < 2 {
        return Err(UsageError("setnx-race needs at least 2 buyers".into()).into());
    }
    p.count("stock")?;
    for d in ["ttl", "payment", "pause", "retry_after", "deadline"] {
        p.duration(d)?;
    }
    if p.duration("ttl")?.as_millis() < 1 {
        return Err(UsageError("ttl must be at least 1ms after --time-scale".into()).into());
    }
    Ok(())
}

fn run_boxed<'a>(ctx: &'a VariantCtx<'a>) -> BoxFuture<'a, anyhow::Result<VariantRun>> {
    Box::pin(run(ctx))
}

/// Everything a buyer needs to know; sent to the holder process as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Shop {
    lock: LockMode,
    ttl_ms: u64,
    payment_ms: u64,
    lock_key: String,
    fence_key: String,
    products: String,
    orders: String,
}

/// What a buyer reports while it buys (the holder process prints these as JSON lines).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
enum Event {
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
const COMPARE_AND_DELETE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

struct Held {
    value: String,
    fence: Option<i64>,
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
            LockMode::SetNxPx | LockMode::TokenFenced => {
                let value = match self.lock {
                    LockMode::TokenFenced => format!("{me}:{:016x}", rand::random::<u64>()),
                    _ => me.to_string(),
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
                let fence = match self.lock {
                    LockMode::TokenFenced => Some(
                        redis::cmd("INCR")
                            .arg(&self.fence_key)
                            .query_async::<i64>(redis)
                            .await?,
                    ),
                    _ => None,
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

    /// Reads the stock. With a fence, the read also claims the row for this token, so a holder
    /// whose lock has since passed to a newer token can no longer write.
    async fn read_stock(&self, pg: &Client, fence: Option<i64>) -> Result<i32, OpError> {
        let row = match fence {
            Some(f) => pg
                .query_opt(
                    &format!(
                        "UPDATE {} SET fence = $2 WHERE id = $1 AND fence < $2 RETURNING stock",
                        self.products
                    ),
                    &[&PRODUCT, &f],
                )
                .await?
                .ok_or_else(|| OpError::new(class::FENCED))?,
            None => {
                pg.query_one(
                    &format!("SELECT stock FROM {} WHERE id = $1", self.products),
                    &[&PRODUCT],
                )
                .await?
            }
        };
        Ok(row.get(0))
    }

    async fn write(&self, pg: &Client, me: &str, fence: Option<i64>) -> Result<(), OpError> {
        match fence {
            None => {
                // What the unfenced code does: it already checked the stock, so it just takes one.
                pg.execute(
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
                    .execute(
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
                    .query_one(
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

    /// Returns the value the release removed from Redis, if any.
    async fn release(
        &self,
        redis: &mut MultiplexedConnection,
        held: &Held,
    ) -> Result<Option<String>, OpError> {
        if self.lock == LockMode::TokenFenced {
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

    /// One purchase attempt, start to finish.
    async fn buy(
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
        let result = async {
            if self.read_stock(pg, fence).await? <= 0 {
                return Err(OpError::new(class::SOLD_OUT));
            }
            report(Event::Paying);
            tokio::time::sleep(Duration::from_millis(self.payment_ms)).await;
            if let Some(f) = finish_after {
                f.wait().await;
            }
            self.write(pg, me, fence).await
        }
        .await;
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

/// A one-way flag tasks can wait for: "another buyer is paying", "the first holder is done
/// with the lock".
#[derive(Default)]
struct Flag {
    flag: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Flag {
    fn set(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.flag.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// Turns a buyer's events into critical sections.
#[derive(Clone)]
struct Recorder {
    buyer: String,
    sections: Arc<Mutex<Vec<Section>>>,
    open: Option<usize>,
    /// Told when this buyer starts paying (the in-process buyers; not the first holder).
    paying: Option<Arc<Flag>>,
}

impl Recorder {
    fn on(&mut self, e: &Event) {
        let Ok(mut sections) = self.sections.lock() else {
            return;
        };
        match e {
            Event::Granted {
                value,
                at_ms,
                waited_ms,
            } => {
                sections.push(Section {
                    buyer: self.buyer.clone(),
                    value: value.clone(),
                    granted_ms: *at_ms,
                    waited_ms: *waited_ms,
                    released_ms: None,
                    deleted: None,
                });
                self.open = Some(sections.len() - 1);
            }
            Event::Released { at_ms, deleted } => {
                if let Some(s) = self.open.take().and_then(|i| sections.get_mut(i)) {
                    s.released_ms = Some(*at_ms);
                    s.deleted = deleted.clone();
                }
            }
            Event::Paying => {
                if let Some(p) = &self.paying {
                    p.set();
                }
            }
            Event::Done { .. } => {}
        }
    }

    /// The value of the section still open, if any.
    fn open_value(&self) -> Option<String> {
        let i = self.open?;
        self.sections.lock().ok()?.get(i).map(|s| s.value.clone())
    }
}

struct Buyer {
    shop: Arc<Shop>,
    pg: Client,
    redis: MultiplexedConnection,
    name: String,
    first_attempt_ms: Option<f64>,
    recorder: Recorder,
    /// The paused first holder has released (or there is none): only then does a buyer's
    /// payment end, so the paused holder always resumes inside someone else's lock.
    holder_released: Arc<Flag>,
}

impl Buyer {
    async fn attempt_once(&mut self) -> Result<(), OpError> {
        let now = epoch_ms();
        let first = *self.first_attempt_ms.get_or_insert(now);
        let mut rec = self.recorder.clone();
        let result = self
            .shop
            .buy(
                &self.pg,
                &mut self.redis,
                &self.name,
                now - first,
                Some(&self.holder_released),
                &mut |e| rec.on(&e),
            )
            .await;
        self.recorder = rec;
        result
    }
}

impl workload::Client for Buyer {
    fn kind(&self) -> &'static str {
        "buy"
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.attempt_once())
    }
    fn cancel_token(&self) -> Option<tokio_postgres::CancelToken> {
        Some(self.pg.cancel_token())
    }
}

/// `locklab __buy`: the first holder as a process of its own, so it can crash or pause for
/// real. Its connection details come in the environment; it prints its events as JSON lines.
pub async fn holder_main() -> anyhow::Result<()> {
    let var = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
    let target = PgTarget::for_worker(var("LOCKLAB_WORKER_CONN")?, var("LOCKLAB_WORKER_SCHEMA")?);
    let shop: Shop = serde_json::from_str(&var("LOCKLAB_WORKER_SHOP")?)
        .context("LOCKLAB_WORKER_SHOP is not a shop")?;
    let redis = RedisTarget::new(&var("LOCKLAB_WORKER_REDIS")?, "");
    let app = var("LOCKLAB_WORKER_APP")?;
    let pg = target.connect(&app, &[]).await?;
    let mut con = redis.connect().await?;
    let print = |e: &Event| {
        use std::io::Write;
        if let Ok(line) = serde_json::to_string(e) {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
    };
    let result = shop
        .buy(&pg, &mut con, "holder", 0.0, None, &mut |e| print(&e))
        .await;
    print(&Event::Done {
        error: result.err().map(|e| e.class),
    });
    Ok(())
}

struct Holder {
    victim: Victim,
    events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    recorder: Recorder,
}

impl Holder {
    async fn start(
        ctx: &VariantCtx<'_>,
        shop: &Shop,
        recorder: Recorder,
    ) -> anyhow::Result<Holder> {
        let env = ctx.env;
        let mut cmd = tokio::process::Command::new(&env.exe);
        cmd.arg("__buy")
            .env("LOCKLAB_WORKER_CONN", env.pg.conn_string())
            .env("LOCKLAB_WORKER_SCHEMA", &env.pg.schema)
            .env("LOCKLAB_WORKER_APP", ctx.app("w/holder"))
            .env("LOCKLAB_WORKER_REDIS", env.redis()?.url())
            .env("LOCKLAB_WORKER_SHOP", serde_json::to_string(shop)?)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        let mut child = spawn_tied(cmd, libc::SIGKILL)
            .await
            .context("could not start the holder process")?;
        let stdout = child.stdout.take().context("holder has no stdout")?;
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(e) = serde_json::from_str::<Event>(&line) {
                    let _ = tx.send(e);
                }
            }
        });
        Ok(Holder {
            victim: Victim::Process(child),
            events,
            recorder,
        })
    }

    /// The next event, recorded; `None` when the holder exited or `until` passed.
    async fn next(&mut self, until: Instant) -> Option<Event> {
        let e = tokio::time::timeout_at(until, self.events.recv())
            .await
            .ok()??;
        self.recorder.on(&e);
        Some(e)
    }
}

async fn run(ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let p = &ctx.variant.params;
    let env = ctx.env;
    let redis = env.redis()?;
    let buyers = p.count("buyers")?;
    let stock = p.count("stock")? as i64;
    let fault: HolderFault = p.text("fault")?.parse()?;
    let shop = Arc::new(Shop {
        lock: p.text("lock")?.parse()?,
        ttl_ms: p.duration("ttl")?.as_millis() as u64,
        payment_ms: p.duration("payment")?.as_millis() as u64,
        lock_key: ctx.redis_key("lock:product:1")?,
        fence_key: ctx.redis_key("fence:product:1")?,
        products: env.pg.table("products"),
        orders: env.pg.table("orders"),
    });

    let admin = env.pg.connect(&ctx.app("admin"), &[]).await?;
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {products}, {orders}; \
             CREATE TABLE {products} (id int PRIMARY KEY, stock int NOT NULL, \
                                      fence bigint NOT NULL DEFAULT 0); \
             CREATE TABLE {orders} (id bigserial PRIMARY KEY, product_id int, buyer text, \
                                    fence bigint, at timestamptz DEFAULT clock_timestamp()); \
             INSERT INTO {products} (id, stock) VALUES ({PRODUCT}, {stock});",
            products = shop.products,
            orders = shop.orders,
        ))
        .await
        .context("could not create the scenario's tables")?;
    let mut rcon = redis.connect().await?;
    redis::cmd("DEL")
        .arg(&shop.lock_key)
        .arg(&shop.fence_key)
        .query_async::<i64>(&mut rcon)
        .await
        .context("could not reset the lock keys")?;

    // Every buyer is connected before the first one takes the lock.
    let sections = Arc::new(Mutex::new(Vec::new()));
    let someone_paying = Arc::new(Flag::default());
    let holder_released = Arc::new(Flag::default());
    let connects = (1..buyers).map(|i| {
        let app = ctx.app(&format!("w/buyer-{i}"));
        async move {
            let pg = env.pg.connect(&app, &[]).await?;
            let con = redis.connect().await?;
            anyhow::Ok((pg, con))
        }
    });
    let mut clients: Vec<Box<dyn workload::Client>> = Vec::with_capacity(buyers);
    for (i, c) in futures::future::join_all(connects)
        .await
        .into_iter()
        .enumerate()
    {
        let (pg, con) = c.context("could not connect a buyer")?;
        let name = format!("buyer-{}", i + 1);
        clients.push(Box::new(Buyer {
            shop: shop.clone(),
            pg,
            redis: con,
            recorder: Recorder {
                buyer: name.clone(),
                sections: sections.clone(),
                open: None,
                paying: Some(someone_paying.clone()),
            },
            name,
            first_attempt_ms: None,
            holder_released: holder_released.clone(),
        }));
    }

    let clock = Clock::start();
    let stop_watch = tokio_util::sync::CancellationToken::new();
    let watcher = observe::redis_key::watch(
        redis.connect().await?,
        shop.lock_key.clone(),
        stop_watch.clone(),
    );
    let recorder = Recorder {
        buyer: "holder".into(),
        sections: sections.clone(),
        open: None,
        paying: None,
    };

    let outcome = async {
        let started_ms = clock.now_ms();
        let mut holder = Holder::start(ctx, &shop, recorder).await?;
        let result = async {
            // The holder is inside its critical section, paying, before anyone else starts.
            let ready_by = Instant::now() + Duration::from_secs(10);
            loop {
                match holder.next(ready_by).await {
                    Some(Event::Paying) => break,
                    Some(Event::Done { error }) => {
                        bail!("the holder finished before paying: {error:?}")
                    }
                    Some(_) => continue,
                    None => bail!("the holder process did not start paying within 10 s"),
                }
            }
            let mut crash = None;
            let mut resume = None;
            match fault {
                HolderFault::None => {}
                HolderFault::Crash => {
                    holder.victim.inject(Fault::Kill)?;
                    let at_ms = epoch_ms();
                    crash = Some(Crash {
                        at_ms,
                        value: holder.recorder.open_value(),
                    });
                    // A dead holder holds nothing any more; only its key lingers.
                    holder.recorder.on(&Event::Released {
                        at_ms,
                        deleted: None,
                    });
                    holder_released.set();
                }
                HolderFault::Pause => {
                    holder.victim.inject(Fault::Freeze)?;
                    let pid = holder.victim.pid();
                    let pause = p.duration("pause")?;
                    let (someone_paying, deadline) = (
                        someone_paying.clone(),
                        Instant::now() + p.duration("deadline")?,
                    );
                    // Paused for at least `pause`, and until the next holder is at work: the
                    // overlap then happens on every run, not only when the timing is kind.
                    resume = Some(tokio::spawn(async move {
                        tokio::time::sleep(pause).await;
                        let _ = tokio::time::timeout_at(deadline, someone_paying.wait()).await;
                        if let Some(pid) = pid {
                            fault::resume(pid);
                        }
                    }));
                }
            }
            let deadline = Instant::now() + p.duration("deadline")?;
            let (sold, ticker) = ctx.progress_counter(" bought".into());
            let plan = Plan::UntilOk {
                retry_after: p.duration("retry_after")?,
                stop_on: &[class::SOLD_OUT, class::FENCED],
            };
            let (driven, holder_done) = tokio::join!(
                workload::drive(clients, plan, clock, deadline, &ctx.cancel, sold),
                async {
                    if crash.is_some() {
                        return Some((Err(class::CRASHED.to_string()), clock.now_ms()));
                    }
                    let done = loop {
                        tokio::select! {
                            e = holder.next(deadline) => match e {
                                Some(Event::Done { error }) => {
                                    break Some((error.map_or(Ok(()), Err), clock.now_ms()));
                                }
                                Some(Event::Released { .. }) => holder_released.set(),
                                Some(_) => continue,
                                None => break None,
                            },
                            _ = ctx.cancel.cancelled() => break None,
                        }
                    };
                    holder_released.set();
                    done
                }
            );
            drop(ticker);
            if let Some(r) = resume {
                r.abort();
            }
            anyhow::Ok((driven, holder_done, crash))
        }
        .await;
        let end_ms = epoch_ms();
        holder.victim.end().await;
        result.map(|r| (r, started_ms, end_ms))
    }
    .await;

    stop_watch.cancel();
    let key_samples = watcher.await.unwrap_or_default();
    ctx.terminate_sessions("w/").await?;
    let ((driven, holder_done, crash), started_ms, end_ms) = outcome?;
    let mut history = driven.history;
    // The holder's purchase, as its process reported it (unknown if it never finished).
    history.ops.push(Op {
        client: buyers - 1,
        kind: "buy",
        start_ms: started_ms,
        end_ms: holder_done.as_ref().map(|(_, at)| *at),
        outcome: match &holder_done {
            None => Outcome::Unknown,
            Some((Ok(()), _)) => Outcome::Ok,
            Some((Err(class), _)) => Outcome::Error {
                class: class.clone(),
            },
        },
    });
    let row = admin
        .query_one(
            &format!(
                "SELECT (SELECT stock FROM {} WHERE id = $1)::int8, (SELECT count(*) FROM {})",
                shop.products, shop.orders
            ),
            &[&PRODUCT],
        )
        .await
        .context("could not count the orders")?;
    let sections = sections.lock().map(|s| s.clone()).unwrap_or_default();
    let evaluation = evaluate(
        &history,
        &Observations {
            sections,
            key_samples,
            crash,
            end_ms,
            cut_off: driven.cut_off || holder_done.is_none(),
            stock_initial: stock,
            stock_left: row.get(0),
            orders: row.get(1),
        },
    );
    Ok(VariantRun {
        history,
        evaluation,
    })
}
