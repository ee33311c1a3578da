//! The history: every operation a simulated client invoked, with when it started, when it
//! completed and how. Workers only append; checkers only read.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Why an operation failed: the SQLSTATEs the scenarios provoke, and the words used where the
/// server gave none. Scenario code raises them, checkers count them, retry plans stop on them.
pub mod class {
    pub const LOCK_TIMEOUT: &str = "55P03";
    pub const STATEMENT_TIMEOUT: &str = "57014";
    pub const DEADLOCK: &str = "40P01";
    pub const SERIALIZATION: &str = "40001";
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    pub const TERMINATED: &str = "57P01";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";

    /// Nothing left to buy or book: retrying cannot help.
    pub const SOLD_OUT: &str = "sold-out";
    /// The lock is someone else's (a Redis SET NX that was refused).
    pub const DENIED: &str = "denied";
    /// The seat was already booked when this booker checked or wrote.
    pub const TAKEN: &str = "taken";
    /// A stale fencing token: a newer lock holder has been at the row.
    pub const FENCED: &str = "fenced";
    /// The application pool gave no connection within its wait timeout.
    pub const POOL_TIMEOUT: &str = "pool-timeout";
    pub const POOL: &str = "pool";
    pub const CONNECTION_CLOSED: &str = "connection-closed";
    /// A pooler gave up on finding the client a server connection (PgBouncer's
    /// query_wait_timeout, sent as 08P01 with that message).
    pub const QUERY_WAIT_TIMEOUT: &str = "query_wait_timeout";
    /// A pooler refused the client at connect: its max_client_conn was reached (PgBouncer's
    /// "no more connections allowed", 08P01).
    pub const POOLER_FULL: &str = "max_client_conn";
    /// A connect the server's listen queue had no room for (EAGAIN on its socket): it is
    /// forking backends slower than connections arrive.
    pub const LISTEN_QUEUE_FULL: &str = "listen-queue-full";
    /// The client library failed without a SQLSTATE.
    pub const CLIENT: &str = "client";
    /// The worker process was killed on purpose (the fault).
    pub const CRASHED: &str = "crashed";
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// A definite failure. `class` is the SQLSTATE where the server gave one
    /// (55P03, 57014, 25P03...), else one of the words in [`class`] such as `connection-closed` or `sold-out`.
    Error {
        class: String,
    },
    /// Still in flight when the variant was cut off: it may or may not have taken effect.
    Unknown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    pub client: usize,
    /// What the client tried, e.g. `book` (owned only when read back from a results file).
    pub kind: Cow<'static, str>,
    /// Milliseconds since the variant's origin.
    pub start_ms: f64,
    /// `None` while the outcome is unknown.
    pub end_ms: Option<f64>,
    pub outcome: Outcome,
}

impl Op {
    pub fn latency_ms(&self) -> Option<f64> {
        self.end_ms.map(|e| e - self.start_ms)
    }
}

/// Wall-clock epoch milliseconds: the one clock locklab and its worker processes share.
pub fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Clock of one variant: every timestamp in its history is relative to `origin`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub origin: Instant,
    /// `origin` on the wall clock ([`epoch_ms`]), to place server-clock events on the same axis.
    pub origin_epoch_ms: f64,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            origin: Instant::now(),
            origin_epoch_ms: epoch_ms(),
        }
    }

    /// Milliseconds since the origin of a server-clock instant in epoch seconds.
    pub fn since_epoch_s(&self, epoch_s: f64) -> f64 {
        epoch_s * 1000.0 - self.origin_epoch_ms
    }

    pub fn ms(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.origin).as_secs_f64() * 1000.0
    }

    pub fn now_ms(&self) -> f64 {
        self.ms(Instant::now())
    }
}

/// The operations of one variant run, in start order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    pub ops: Vec<Op>,
    /// Client tasks that died (panicked or were aborted) instead of returning: their operation
    /// in flight is in `ops` with an unknown outcome, never dropped. A harness bug, not a verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_clients: Vec<LostClient>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LostClient {
    pub client: usize,
    /// The panic message, or `aborted`.
    pub why: String,
}

impl History {
    pub fn ok(&self, kind: &str) -> usize {
        self.of(kind).filter(|o| o.outcome == Outcome::Ok).count()
    }

    pub fn failed(&self, kind: &str) -> usize {
        self.of(kind)
            .filter(|o| matches!(o.outcome, Outcome::Error { .. }))
            .count()
    }

    pub fn unknown(&self, kind: &str) -> usize {
        self.of(kind)
            .filter(|o| o.outcome == Outcome::Unknown)
            .count()
    }

    /// Failures of one class, e.g. `class::LOCK_TIMEOUT`.
    pub fn count(&self, kind: &str, class: &str) -> u64 {
        self.of(kind)
            .filter(|o| matches!(&o.outcome, Outcome::Error { class: c } if c == class))
            .count() as u64
    }

    /// Failures counted by class, e.g. {"55P03": 31}.
    pub fn error_classes(&self, kind: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for op in self.of(kind) {
            if let Outcome::Error { class } = &op.outcome {
                *out.entry(class.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// Latencies of the operations that completed, ok or failed.
    pub fn completed_latencies(&self, kind: &str) -> Vec<f64> {
        self.of(kind).filter_map(Op::latency_ms).collect()
    }

    /// Whether `op` belongs to a client whose task died (its unknown outcome is no cut-off).
    pub fn is_lost(&self, op: &Op) -> bool {
        op.end_ms.is_none() && self.lost_clients.iter().any(|l| l.client == op.client)
    }

    fn of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Op> + 'a {
        self.ops.iter().filter(move |o| o.kind == kind)
    }
}
