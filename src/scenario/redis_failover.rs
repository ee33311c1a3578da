//! redis-failover: setnx-race's shop when Redis itself fails under the lock. Each variant gets
//! Redis servers of its own (one node; a primary, its replica and three Sentinels; or five
//! independent masters for Redlock) that locklab crashes, restarts or fails over while the
//! first buyer is inside its critical section. An observer
//! reads the lock key on every node every 2 ms, so a lock Redis forgot is seen, not assumed.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;
use tokio_postgres::Client;

use super::setnx_race::recorder::{Flag, Recorder};
use super::setnx_race::shop::{COMPARE_AND_DELETE, Event, Stock};
use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun};
use crate::check::redis_failover::{METRICS, NodeSample, Observations};
use crate::check::setnx_race::Section;
use crate::env::Env;
use crate::env::postgres::{Canceller, Sql as _};
use crate::env::redis::{Persistence, RedisServer, RedisTarget, SentinelServer};
use crate::error::UsageError;
use crate::history::{Clock, Op, Outcome, class, epoch_ms};
use crate::workload::{self, OpError, Plan};

/// Redlock's independent masters, and the majority a lock needs on them.
const REDLOCK_NODES: usize = 5;
const REDLOCK_QUORUM: usize = 3;

/// How long one node may take to answer a lock command before the client counts it as not
/// granted (Redlock's per-node timeout, kept well under the lease).
const NODE_TIMEOUT: Duration = Duration::from_millis(250);

/// Denied attempts each buyer makes after the fault before the first holder may write when
/// nobody got the lock: the buyers have then tried the failed nodes, whatever the machine's
/// load, not only for a stretch of time.
const TRIES_BEFORE_RESUME: usize = 5;

pub struct RedisFailover {
    buyers: usize,
    stock: i64,
    lock: Lock,
    persistence: Persistence,
    /// A holder goes on only once `WAIT` says the primary's replicas have its lock.
    wait_replica: bool,
    /// How long the replica stops reading its primary around the first holder's SET.
    lag: Duration,
    fault: NodeFault,
    fenced: bool,
    ttl: Duration,
    payment: Duration,
    pause: Duration,
    retry_after: Duration,
    deadline: Duration,
}

/// What happens to the nodes while the first holder is inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeFault {
    /// The node (the only one) crashes and comes back with what its persistence kept.
    Restart,
    /// One of Redlock's nodes dies and stays down.
    KillOne,
    /// Redlock's critique: two nodes are down when the first holder locks (it gets the other
    /// three, a majority); one of those three restarts empty and the two come back.
    RestartGranted,
    /// The replica lags (stops reading for `lag`); the primary dies once the first holder is
    /// paying; Sentinel promotes the replica.
    Failover,
}

/// Which Redis the lock lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    Single,
    /// Five independent masters, a majority of three.
    Redlock,
    /// A primary and its replica behind three Sentinels; the client asks Sentinel which node
    /// is the primary.
    Sentinel,
}

crate::scenario::spec::words!(NODE_FAULTS, NODE_FAULT_OF: NodeFault = {
    "restart" => NodeFault::Restart,
    "kill-one" => NodeFault::KillOne,
    "restart-granted" => NodeFault::RestartGranted,
    "failover" => NodeFault::Failover,
});

crate::scenario::spec::words!(LOCKS, LOCK_OF: Lock = {
    "single" => Lock::Single,
    "redlock" => Lock::Redlock,
    "sentinel" => Lock::Sentinel,
});

/// How long Sentinel waits for an answer before it calls a node down.
const DOWN_AFTER: Duration = Duration::from_millis(200);

/// What a failover behind Sentinel is given, from the primary's death to the replica named
/// primary: 0.6-1.5 s side by side (`run all --repeat 10`, 20 failovers), and the first
/// holder's lock was granted before the death. At `--time-scale 0.05` the defaults' lease
/// (3 s) left 1.7 s, under the 1.5 s cut-off's margin after a 1.2 s failover.
const FAILOVER_ALLOWANCE: Duration = Duration::from_secs(2);

/// What the primary is given to send its stopped replica before the lock's SET: more than
/// the loopback socket's buffers hold, so the SET waits in the primary's own memory, and dies
/// with it.
const BACKLOG_BYTES: usize = 40 << 20;

crate::scenario::spec::words!(PERSISTENCES, PERSISTENCE_OF: Persistence = {
    "none" => Persistence::None,
    "aof-always" => Persistence::AofAlways,
});

impl Code for RedisFailover {
    const NAME: &'static str = "redis-failover";
    const FILE: &'static str = include_str!("../../scenarios/redis-failover.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::count("buyers", 2, 1000),
        ParamSpec::count("stock", 1, 1000),
        ParamSpec::words("lock", LOCKS),
        ParamSpec::words("persistence", PERSISTENCES),
        ParamSpec::words("fault", NODE_FAULTS),
        ParamSpec::flag("fenced"),
        ParamSpec::flag("wait_replica"),
        ParamSpec::duration("lag", 0, HOUR_MS),
        ParamSpec::duration("ttl", 1, DAY_MS),
        ParamSpec::duration("payment", 0, HOUR_MS),
        ParamSpec::duration("pause", 0, HOUR_MS),
        ParamSpec::duration("retry_after", 1, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = METRICS;
    const SIZED_BY: &'static str = "buyers";
    const NEEDS_REDIS: bool = true;

    fn config(p: &Params) -> Result<RedisFailover, UsageError> {
        let lock = p.one_of("lock", LOCK_OF)?;
        let fault = p.one_of("fault", NODE_FAULT_OF)?;
        match (lock, fault) {
            (Lock::Single, NodeFault::Restart)
            | (Lock::Redlock, NodeFault::KillOne | NodeFault::RestartGranted)
            | (Lock::Sentinel, NodeFault::Failover) => {}
            _ => {
                return Err(UsageError(
                    "each lock has its faults: lock = \"single\" takes fault = \"restart\", \
                     \"redlock\" takes kill-one or restart-granted, \"sentinel\" takes failover"
                        .into(),
                ));
            }
        }
        if fault == NodeFault::RestartGranted
            && p.one_of("persistence", PERSISTENCE_OF)? != Persistence::None
        {
            return Err(UsageError(
                "fault = \"restart-granted\" restarts a node empty: with persistence = \
                 \"aof-always\" it keeps the lock and the variant can show nothing (--param \
                 persistence=none)"
                    .into(),
            ));
        }
        let wait_replica = p.flag("wait_replica")?;
        if wait_replica && lock != Lock::Sentinel {
            return Err(UsageError(
                "wait_replica needs lock = \"sentinel\": only it has a replica to wait for".into(),
            ));
        }
        let lag = p.duration("lag")?;
        if lock == Lock::Sentinel && lag < Duration::from_millis(100) {
            return Err(UsageError(format!(
                "lag is {} after --time-scale: under 100 ms the replica may catch up before the \
                 primary dies (--param lag={} or more, or a larger --time-scale)",
                humantime::format_duration(lag),
                p.as_written(Duration::from_millis(100))
            )));
        }
        let (stock, payment) = (p.count("stock")?, p.duration("payment")?);
        let retry_after = p.duration("retry_after")?;
        // The first holder waits up to `pause` after the fault for a second holder: a denied
        // buyer must have had a few tries by then.
        let pause = p.scaled_at_least(
            "pause",
            Duration::from_millis(100),
            "a second buyer may not have tried the restarted nodes before the first resumes",
        )?;
        if pause < retry_after * 5 {
            return Err(UsageError(format!(
                "pause ({}) must be at least 5 times retry_after ({}): the buyers must try the \
                 failed nodes a few times before the first holder resumes (--param pause={} or \
                 more, or a shorter --param retry_after)",
                p.as_written(pause),
                p.as_written(retry_after),
                p.as_written(retry_after * 5)
            )));
        }
        let sales = (payment + retry_after) * stock as u32;
        p.deadline_outlasts(
            1,
            "1.5 × (pause + payment + stock × (payment + retry_after))",
            (pause + payment + sales).mul_f64(1.5),
            "the first holder and the buyers after it could not all finish before it",
        )?;
        // Only the fault may take a lock away: one that expired mid-run would overlap the
        // next for a reason the variant does not show.
        let ttl = p.duration("ttl")?;
        let deadline = p.duration("deadline")?;
        if ttl < deadline * 2 {
            return Err(UsageError(format!(
                "ttl ({}) must be at least twice the deadline ({}): a lock that expires during \
                 the run passes on for a reason other than the fault (--param ttl={} or more)",
                p.as_written(ttl),
                p.as_written(deadline),
                p.as_written(deadline * 2)
            )));
        }
        // Behind Sentinel the failover takes its own time, not the scale's: the first holder's
        // lease must outlast it and the buyers' cut-off after it (the run checks again with
        // the failover's real time, and refuses a verdict that would not be the failover's).
        let needs = FAILOVER_ALLOWANCE + deadline.mul_f64(1.5);
        if fault == NodeFault::Failover && ttl < needs {
            return Err(UsageError(format!(
                "ttl ({}) must cover Sentinel's failover (allow {} whatever the time scale) and \
                 1.5 times the deadline ({}) after it: the first holder's lock would expire \
                 before the fault could take it (--param ttl={} or more, or a larger \
                 --time-scale)",
                p.as_written(ttl),
                humantime::format_duration(FAILOVER_ALLOWANCE),
                p.as_written(deadline),
                p.as_written(needs)
            )));
        }
        Ok(RedisFailover {
            buyers: p.count("buyers")?,
            stock: stock as i64,
            lock,
            wait_replica,
            lag,
            persistence: p.one_of("persistence", PERSISTENCE_OF)?,
            fault,
            fenced: p.flag("fenced")?,
            ttl,
            payment,
            pause,
            retry_after,
            deadline,
        })
    }

    fn sessions(&self) -> usize {
        // Every buyer, the first included, and the setup session.
        self.buyers + 1
    }

    fn estimate(&self) -> Option<Duration> {
        // Three Sentinels agreeing the primary is down and promoting the replica take their
        // own time, not the scale's: 6.9-7.0 s a run at the default scale, against a 2 s
        // cut-off (measured side by side, `run all`).
        (self.fault == NodeFault::Failover).then(|| self.deadline + Duration::from_secs(5))
    }

    fn unavailable(&self, env: &Env) -> Option<String> {
        env.own_redis_missing("crashes and restarts Redis nodes under the lock")
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        run(self, ctx)
    }
}

/// One node as a lock client sees it: reconnected after a crash, and given up on for this
/// command after [`NODE_TIMEOUT`].
struct Node {
    target: RedisTarget,
    con: Option<MultiplexedConnection>,
}

impl Node {
    fn new(target: RedisTarget) -> Node {
        Node { target, con: None }
    }

    /// The command's reply, or `None` if the node did not answer in time. A connection a
    /// crash broke is replaced and the command sent once more, as client libraries do.
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Option<T> {
        for _ in 0..2 {
            let had = self.con.is_some();
            if !had {
                self.con = tokio::time::timeout(NODE_TIMEOUT, self.target.connect())
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
            let con = self.con.as_mut()?;
            match tokio::time::timeout(NODE_TIMEOUT, cmd.query_async::<T>(con)).await {
                Ok(Ok(v)) => return Some(v),
                // A reply that is an error (a script's, a wrong type) is the node's answer.
                Ok(Err(e)) if e.kind() != redis::ErrorKind::Io && !e.is_connection_dropped() => {
                    return None;
                }
                _ => self.con = None,
            }
            if !had {
                return None;
            }
        }
        None
    }
}

/// A lock on one node, or Redlock's on several: granted when a quorum said yes. Behind
/// Sentinel, the one node is whichever Sentinel names the primary at each attempt.
struct Locker {
    nodes: Vec<Node>,
    quorum: usize,
    key: String,
    ttl_ms: u64,
    /// Sentinel, and the nodes' ports to find its answer among them.
    sentinel: Option<(Node, Vec<u16>)>,
    /// After its SET, wait (at most this long) for a replica to acknowledge it.
    wait_replica: Option<Duration>,
}

impl Locker {
    /// The nodes a lock goes to now: all of them, or the one Sentinel names the primary.
    async fn current(&mut self) -> std::ops::Range<usize> {
        let Some((sentinel, ports)) = &mut self.sentinel else {
            return 0..self.nodes.len();
        };
        let mut ask = redis::cmd("SENTINEL");
        ask.arg("get-master-addr-by-name")
            .arg(crate::env::redis::SENTINEL_MASTER);
        let port = sentinel
            .query::<Option<(String, u16)>>(&ask)
            .await
            .flatten()
            .map(|(_, port)| port);
        match port.and_then(|p| ports.iter().position(|x| *x == p)) {
            Some(i) => i..i + 1,
            None => 0..0,
        }
    }

    /// SET NX PX on every node at once; granted on a quorum within the lease, else undone.
    async fn acquire(&mut self, value: &str) -> bool {
        let range = self.current().await;
        if range.is_empty() {
            return false;
        }
        let started = Instant::now();
        let mut set = redis::cmd("SET");
        set.arg(&self.key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms);
        let set = &set;
        let got = futures::future::join_all(
            self.nodes[range.clone()]
                .iter_mut()
                .map(|n| async move { n.query::<Option<String>>(set).await.flatten() }),
        )
        .await;
        let granted = got.iter().filter(|r| r.is_some()).count();
        let valid = started.elapsed() < Duration::from_millis(self.ttl_ms);
        if granted >= self.quorum && valid {
            match self.wait_replica {
                None => return true,
                Some(within) => {
                    // WAIT blocks until the replicas have processed everything so far, or the
                    // timeout; fewer acknowledgements than asked for means the lock exists on
                    // the primary alone. It waits for every replica the primary has connected,
                    // as Redisson's syncSlaves does: a primary left without one (after a
                    // failover) has nothing to wait for.
                    let node = &mut self.nodes[range.start];
                    let info = node
                        .query::<String>(redis::cmd("INFO").arg("replication"))
                        .await
                        .unwrap_or_default();
                    let replicas: i64 = info
                        .lines()
                        .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    if replicas == 0 {
                        return true;
                    }
                    let mut wait = redis::cmd("WAIT");
                    wait.arg(replicas).arg(within.as_millis() as u64);
                    if let Some(con) = node.con.as_mut() {
                        let acked = tokio::time::timeout(
                            within + Duration::from_secs(1),
                            wait.query_async::<i64>(con),
                        )
                        .await;
                        if let Ok(Ok(n)) = acked
                            && n >= replicas
                        {
                            return true;
                        }
                    }
                }
            }
        }
        // Redlock: a failed attempt unlocks every node, the ones it did get included.
        self.release(value).await;
        false
    }

    /// Compare-and-delete on every node (the primary, behind Sentinel); whether any held my
    /// token.
    async fn release(&mut self, value: &str) -> bool {
        let range = self.current().await;
        let mut del = redis::cmd("EVAL");
        del.arg(COMPARE_AND_DELETE).arg(1).arg(&self.key).arg(value);
        let del = &del;
        let n = futures::future::join_all(
            self.nodes[range]
                .iter_mut()
                .map(|n| async move { n.query::<i64>(del).await.unwrap_or(0) }),
        )
        .await;
        n.contains(&1)
    }
}

/// One buyer: lock, read (claiming the row with a fence if fenced), pay, write, release.
struct Buyer {
    name: String,
    locker: Locker,
    pg: Client,
    canceller: Canceller,
    stock: Arc<Stock>,
    fenced: bool,
    sequence: String,
    payment: Duration,
    recorder: Recorder,
    /// Before writing, a buyer waits until this is set (the first holder's own write, or the
    /// moment it may write).
    write_after: Arc<Flag>,
    first_attempt_ms: Option<f64>,
    /// Denied attempts of the buyers, counted from the fault.
    denied: Arc<std::sync::atomic::AtomicUsize>,
}

impl Buyer {
    async fn buy(&mut self) -> Result<(), OpError> {
        let now = epoch_ms();
        let first = *self.first_attempt_ms.get_or_insert(now);
        let value = format!("{}:{:016x}", self.name, rand::random::<u64>());
        if !self.locker.acquire(&value).await {
            self.denied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(OpError::new(class::DENIED));
        }
        self.recorder.on(&Event::Granted {
            value: value.clone(),
            at_ms: epoch_ms(),
            waited_ms: now - first,
        });
        let result = async {
            let fence = match self.fenced {
                true => Some(
                    self.pg
                        .one(&format!("SELECT nextval('{}')", self.sequence), &[])
                        .await?
                        .get::<_, i64>(0),
                ),
                false => None,
            };
            if self.stock.read(&self.pg, fence).await? <= 0 {
                return Err(OpError::new(class::SOLD_OUT));
            }
            self.recorder.on(&Event::Paying);
            tokio::time::sleep(self.payment).await;
            self.write_after.wait().await;
            self.stock.write(&self.pg, &self.name, fence).await
        }
        .await;
        let at_ms = epoch_ms();
        let deleted = self.locker.release(&value).await;
        self.recorder.on(&Event::Released {
            at_ms,
            deleted: deleted.then_some(value),
        });
        result
    }
}

impl workload::Client for Buyer {
    fn kind(&self) -> &'static str {
        "buy"
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.buy())
    }
    fn canceller(&self) -> Option<Canceller> {
        Some(self.canceller.clone())
    }
}

/// Samples the key on every node every 2 ms, and whether the node answered at all.
/// `latest` is each node's last answer as the observer saw it (None: it did not answer; the
/// fault and the first holder's resumption wait on it).
fn observe(
    targets: Vec<RedisTarget>,
    key: String,
    latest: Arc<Mutex<Vec<Option<Option<String>>>>>,
) -> crate::observe::Watch<Vec<Vec<NodeSample>>> {
    crate::observe::Watch::spawn(move |stop| async move {
        let mut nodes: Vec<Node> = targets.into_iter().map(Node::new).collect();
        let mut seen: Vec<Vec<NodeSample>> = vec![Vec::new(); nodes.len()];
        let mut get = redis::cmd("GET");
        get.arg(&key);
        loop {
            let got = futures::future::join_all(
                nodes
                    .iter_mut()
                    .map(|n| async { n.query::<Option<String>>(&get).await }),
            )
            .await;
            let at_ms = epoch_ms();
            if let Ok(mut l) = latest.lock() {
                *l = got.clone();
            }
            for (samples, got) in seen.iter_mut().zip(got) {
                let (up, value) = match got {
                    Some(v) => (true, v),
                    None => (false, None),
                };
                if samples
                    .last()
                    .is_none_or(|s| s.value != value || s.up != up)
                {
                    samples.push(NodeSample { at_ms, up, value });
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                _ = stop.cancelled() => return seen,
            }
        }
    })
}

async fn run(cfg: &RedisFailover, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let (mut servers, mut sentinels) = match cfg.lock {
        Lock::Single => (
            ctx.env.start_own_redis(1, cfg.persistence).await?,
            Vec::new(),
        ),
        Lock::Redlock => (
            ctx.env
                .start_own_redis(REDLOCK_NODES, cfg.persistence)
                .await?,
            Vec::new(),
        ),
        Lock::Sentinel => ctx.env.start_own_sentinel_pair(DOWN_AFTER).await?,
    };
    // An interrupt drops the race where it is (its observer stops with it): the nodes, a
    // stopped replica included, are killed below at once, not after the variant's waits.
    let result = tokio::select! {
        r = async {
            if cfg.lock == Lock::Sentinel {
                sentinel_ready(&servers, &sentinels).await?;
            }
            race(cfg, ctx, &mut servers, &sentinels).await
        } => r,
        () = ctx.cancel.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    for s in &mut sentinels {
        s.stop().await;
    }
    for s in &mut servers {
        s.stop().await;
    }
    result
}

/// When (epoch ms) the replica on `port` became the primary as Sentinel tells it: the first
/// of them to name it (Sentinel switches once the replica itself reports the role). Returns
/// once every Sentinel names it, so that no client is sent to the dead primary after.
async fn promoted(port: u16, sentinels: &[RedisTarget]) -> anyhow::Result<f64> {
    let until = Instant::now() + Duration::from_secs(30);
    let mut watchers: Vec<Node> = sentinels.iter().cloned().map(Node::new).collect();
    let mut named_at: Vec<Option<f64>> = vec![None; watchers.len()];
    let mut ask = redis::cmd("SENTINEL");
    ask.arg("get-master-addr-by-name")
        .arg(crate::env::redis::SENTINEL_MASTER);
    loop {
        for (w, at) in watchers.iter_mut().zip(named_at.iter_mut()) {
            if at.is_none() {
                let named = w.query::<Option<(String, u16)>>(&ask).await.flatten();
                if named.is_some_and(|(_, p)| p == port) {
                    *at = Some(epoch_ms());
                }
            }
        }
        if named_at.iter().all(Option::is_some) {
            return Ok(named_at
                .iter()
                .flatten()
                .copied()
                .fold(f64::INFINITY, f64::min));
        }
        if Instant::now() > until {
            bail!(
                "Sentinel did not promote the replica within 30 s of the primary's death \
                 ({} of {} named it)",
                named_at.iter().flatten().count(),
                named_at.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the replica is in sync and every Sentinel knows the replica and the other two
/// (a failover needs a majority of them to agree).
async fn sentinel_ready(
    servers: &[RedisServer],
    sentinels: &[SentinelServer],
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    let replica = servers[1].target("");
    let mut replica = Node::new(replica);
    let mut watchers: Vec<Node> = sentinels.iter().map(|s| Node::new(s.target())).collect();
    let master = crate::env::redis::SENTINEL_MASTER;
    loop {
        let synced = replica
            .query::<String>(redis::cmd("INFO").arg("replication"))
            .await
            .is_some_and(|i| i.contains("master_link_status:up"));
        let mut known = synced;
        for w in &mut watchers {
            if !known {
                break;
            }
            let others = w
                .query::<Vec<redis::Value>>(redis::cmd("SENTINEL").arg("sentinels").arg(master))
                .await
                .map_or(0, |v| v.len());
            let replicas = w
                .query::<Vec<redis::Value>>(redis::cmd("SENTINEL").arg("replicas").arg(master))
                .await
                .map_or(0, |v| v.len());
            known = others == 2 && replicas == 1;
        }
        if known {
            return Ok(());
        }
        if Instant::now() > until {
            bail!(
                "the Sentinels did not all find the replica and each other within 30 s \
                 (replica in sync: {synced})"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn race(
    cfg: &RedisFailover,
    ctx: &VariantCtx<'_>,
    servers: &mut [RedisServer],
    sentinels: &[SentinelServer],
) -> anyhow::Result<VariantRun> {
    let prefix = ctx.env.redis()?.prefix.clone();
    let targets: Vec<RedisTarget> = servers.iter().map(|s| s.target(&prefix)).collect();
    let key = ctx.redis_key("lock:product:1")?;
    let quorum = match cfg.lock {
        Lock::Redlock => REDLOCK_QUORUM,
        Lock::Single | Lock::Sentinel => 1,
    };
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let sentinel_targets: Vec<RedisTarget> = sentinels.iter().map(SentinelServer::target).collect();
    let stock = Arc::new(Stock::of(ctx.env));
    let sequence = ctx.env.pg.table("fences");
    let admin = ctx.env.direct.connect(&ctx.app("admin")).await?;
    stock.create(&admin, cfg.stock).await?;
    admin
        .batch_execute(&format!(
            "DROP SEQUENCE IF EXISTS {sequence}; CREATE SEQUENCE {sequence}"
        ))
        .await
        .context("could not create the fencing tokens' sequence")?;
    let sections: Arc<Mutex<Vec<Section>>> = Arc::default();
    let denied_after_fault: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let someone_paying = Arc::new(Flag::default());
    let (holder_wrote, holder_may_write) = (Arc::new(Flag::default()), Arc::new(Flag::default()));
    // Each buyer asks a Sentinel of its own choosing, as clients spread over them do.
    let locker = |targets: &[RedisTarget], i: usize| Locker {
        nodes: targets.iter().cloned().map(Node::new).collect(),
        quorum,
        key: key.clone(),
        ttl_ms: cfg.ttl.as_millis() as u64,
        sentinel: (!sentinel_targets.is_empty()).then(|| {
            let s = sentinel_targets[i % sentinel_targets.len()].clone();
            (Node::new(s), ports.clone())
        }),
        // Long enough to outlast the replica's lag: WAIT returns as soon as it is acknowledged.
        wait_replica: cfg
            .wait_replica
            .then_some(cfg.lag * 2 + Duration::from_secs(1)),
    };
    let buyer = |i: usize, pg: Client, recorder: Recorder, write_after: Arc<Flag>| Buyer {
        name: recorder.buyer.clone(),
        locker: locker(&targets, i),
        canceller: Canceller::new(&pg, &ctx.env.pg),
        pg,
        stock: stock.clone(),
        fenced: cfg.fenced,
        sequence: sequence.clone(),
        payment: cfg.payment,
        recorder,
        write_after,
        first_attempt_ms: (i == 0).then(epoch_ms),
        denied: denied_after_fault.clone(),
    };
    let recorder = |name: String, paying: Option<Arc<Flag>>| Recorder {
        buyer: name,
        sections: sections.clone(),
        open: None,
        paying,
    };
    let mut clients: Vec<Box<dyn workload::Client>> = Vec::with_capacity(cfg.buyers);
    for i in 1..cfg.buyers {
        let pg = ctx
            .env
            .pg
            .connect(&ctx.app(&format!("w/buyer-{i}")))
            .await?;
        let name = format!("buyer-{}", i + 1);
        clients.push(Box::new(buyer(
            i,
            pg,
            recorder(name, Some(someone_paying.clone())),
            holder_wrote.clone(),
        )));
    }
    let pg = ctx.env.pg.connect(&ctx.app("w/holder")).await?;
    let holder_paying = Arc::new(Flag::default());
    let mut holder = buyer(
        0,
        pg,
        recorder("holder".into(), Some(holder_paying.clone())),
        holder_may_write.clone(),
    );

    let clock = Clock::start();
    let started_ms = clock.now_ms();
    let latest: Arc<Mutex<Vec<Option<Option<String>>>>> = Arc::default();
    let watcher = observe(targets.clone(), key.clone(), latest.clone());
    // Redlock's critique: two nodes are out when the first holder locks.
    if cfg.fault == NodeFault::RestartGranted {
        for s in &servers[REDLOCK_QUORUM..] {
            s.kill();
        }
    }
    // The replica lags: it stops reading, and the primary is given more to send it than the
    // socket holds, so the lock's SET (after it) stays in the primary's memory.
    if cfg.fault == NodeFault::Failover {
        servers[1].pause();
        let mut con = targets[0].connect().await?;
        let junk = vec![b'x'; BACKLOG_BYTES];
        redis::cmd("SET")
            .arg(ctx.redis_key("backlog")?)
            .arg(junk)
            .query_async::<()>(&mut con)
            .await
            .context("could not fill the replication stream")?;
    }
    // The first holder takes the lock (a node slow to answer can cost it a try) and reads the
    // stock; it writes only when let.
    let holder_run = async {
        let mut tries = 0;
        let result = loop {
            tries += 1;
            match holder.buy().await {
                Err(e) if e.class == class::DENIED && tries < 10 => {
                    tokio::time::sleep(NODE_TIMEOUT).await;
                }
                r => break r,
            }
        };
        holder_wrote.set();
        (result, clock.now_ms())
    };
    let fault_and_buyers = async {
        // Behind Sentinel the replica catches up after `lag` for a holder that waits for it
        // (WAIT holds it back until then); one that does not wait pays at once, and the
        // primary dies before the replica has caught up.
        let mut caught_up = false;
        if cfg.fault == NodeFault::Failover && cfg.wait_replica {
            tokio::select! {
                () = holder_paying.wait() => {}
                () = tokio::time::sleep(cfg.lag) => {
                    servers[1].resume();
                    caught_up = true;
                }
            }
        }
        tokio::select! {
            () = holder_paying.wait() => {}
            () = holder_wrote.wait() => bail!("the first holder finished without paying"),
            () = tokio::time::sleep(Duration::from_secs(10) + cfg.lag * 2) => {
                bail!("the first holder did not start paying within 10 s (and twice the lag)")
            }
        }
        // The fault waits until the observer has seen the first holder's lock on a quorum of
        // nodes: what is lost afterwards is then seen to be lost.
        let token = sections.lock().ok().and_then(|s| {
            s.iter()
                .find(|s| s.buyer == "holder")
                .map(|s| s.value.clone())
        });
        // A node's last answer was the first holder's lock.
        let holds = |v: &Option<Option<String>>| {
            token.is_some() && v.as_ref().and_then(|v| v.as_ref()) == token.as_ref()
        };
        // Nodes whose last answer, as the observer saw it, passes `test`.
        let nodes_where = |test: &dyn Fn(&Option<Option<String>>) -> bool| {
            latest
                .lock()
                .map_or(0, |l| l.iter().filter(|v| test(v)).count())
        };
        // Nodes that answered, without the first holder's lock.
        let free = || nodes_where(&|v| v.is_some() && !holds(v));
        let seen_by = Instant::now() + Duration::from_secs(10);
        loop {
            let holding = nodes_where(&holds);
            if holding >= quorum {
                break;
            }
            if Instant::now() > seen_by {
                bail!(
                    "the observer did not see the first holder's lock on {quorum} node(s) within 10 s"
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let fault_ms = epoch_ms();
        let mut failover_ms = None;
        match cfg.fault {
            NodeFault::Failover => {
                servers[0].kill();
                if !caught_up {
                    servers[1].resume();
                }
                let at = promoted(servers[1].port, &sentinel_targets).await?;
                failover_ms = Some(at - fault_ms);
                // The holder's lease must still outlast the buyers' cut-off: a lock that
                // expired would pass on for a reason other than the failover.
                let granted = sections
                    .lock()
                    .ok()
                    .and_then(|s| s.iter().find(|s| s.buyer == "holder").map(|s| s.granted_ms));
                let lease_left = granted.map_or(0.0, |g| g + cfg.ttl.as_secs_f64() * 1000.0 - at);
                if lease_left < cfg.deadline.as_secs_f64() * 1000.0 * 1.5 {
                    bail!(
                        "the failover took {:.1} s, and the first holder's lease would run out \
                         before the cut-off: the verdict would not be the failover's (raise \
                         --param ttl)",
                        (at - fault_ms) / 1000.0
                    );
                }
            }
            NodeFault::Restart => servers[0].restart().await?,
            NodeFault::KillOne => servers[0].kill(),
            NodeFault::RestartGranted => {
                // One of the three that granted it restarts empty; the two come back.
                for s in &mut servers[REDLOCK_QUORUM - 1..] {
                    s.restart().await?;
                }
            }
        }
        let deadline = Instant::now() + cfg.deadline;
        denied_after_fault.store(0, std::sync::atomic::Ordering::Relaxed);
        // The first holder resumes once a second holder is paying; or, if nobody can get the
        // lock, once `pause` has passed and the buyers have each been denied a few times since
        // the fault (the cut-off at the latest). Nobody can while fewer than a quorum of the
        // nodes answer without the first holder's lock, as the observer sees them: denials
        // alone would also count buyers splitting the free nodes among themselves, or nodes
        // slow to answer on a busy machine, and let the first holder write before a second
        // holder that was about to get the lock.
        let resume = async {
            let tried = async {
                tokio::time::sleep(cfg.pause).await;
                let enough = TRIES_BEFORE_RESUME * (cfg.buyers - 1);
                loop {
                    let denied = denied_after_fault.load(std::sync::atomic::Ordering::Relaxed);
                    // (Not once a second holder pays: the lock was lost, see below.)
                    if free() < quorum && denied >= enough && !someone_paying.is_set() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            // A second holder paying means the lock was lost: the first holder resumes (and
            // releases) once the observer has seen it lost too, a quorum of nodes answering
            // without its lock. On a busy machine the observer's next look at a restarted node
            // can come after a quick release, and the loss would go unrecorded.
            let seen_lost = async {
                someone_paying.wait().await;
                while free() < quorum {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            };
            tokio::select! {
                () = seen_lost => {}
                () = tried => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
            holder_may_write.set();
        };
        let (sold, ticker) = ctx.progress_counter(" bought".into());
        let plan = Plan::UntilOk {
            retry_after: cfg.retry_after,
            stop_on: &[class::SOLD_OUT, class::FENCED],
        };
        let (driven, ()) = tokio::join!(
            workload::drive(clients, plan, clock, deadline, &ctx.cancel, sold),
            resume
        );
        drop(ticker);
        anyhow::Ok((driven, fault_ms, failover_ms))
    };
    // However the fault and the buyers end (an error included), the holder may then write:
    // it never waits on a permission nobody is left to give.
    let fault_and_buyers = async {
        let r = fault_and_buyers.await;
        holder_may_write.set();
        r
    };
    let (holder_done, driven) = tokio::join!(holder_run, fault_and_buyers);
    holder_may_write.set();
    let end_ms = epoch_ms();
    let nodes = watcher.finish().await;
    ctx.terminate_sessions("w/").await?;
    let (driven, fault_ms, failover_ms) = driven?;
    let mut history = driven.history;
    history.ops.push(Op {
        client: cfg.buyers - 1,
        kind: "buy".into(),
        start_ms: started_ms,
        end_ms: Some(holder_done.1),
        outcome: match holder_done.0 {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::Error { class: e.class },
        },
    });
    let (stock_left, orders) = stock.tally(&admin).await?;
    let sections = sections.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(VariantRun::checked(
        &clock,
        history,
        crate::check::Input::RedisFailover(Box::new(Observations {
            sections,
            nodes,
            quorum,
            fault_ms: Some(fault_ms),
            failover_ms,
            end_ms,
            cut_off: driven.cut_off,
            stock_initial: cfg.stock,
            stock_left,
            orders,
        })),
    ))
}
