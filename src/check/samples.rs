//! What the observers saw, as data: the samples they take of the servers, which the checkers
//! read. They live here, beside the checkers, so a checker needs nothing that reaches a server;
//! `observe/` fills them.

use serde::{Deserialize, Serialize};

/// PostgreSQL's view of the workload at one moment (pg_stat_activity, pg_locks).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: f64,
    /// Workload sessions `idle in transaction`.
    pub idle_in_transaction: i64,
    /// Workload sessions waiting on a heavyweight lock (wait_event_type = 'Lock').
    pub waiting_on_lock: i64,
    /// Workload sessions that pg_blocking_pids says another session blocks.
    pub blocked: i64,
    /// How long the watched holder session has been idle in transaction, if it is.
    pub holder_idle_ms: Option<f64>,
    /// Server sessions serving the workload, in any state: its share of max_connections
    /// (through a pooler, the pooler's server connections).
    pub sessions: i64,
}

/// The server's connection slots at one moment.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Deserialize)]
pub struct SlotSample {
    pub at_ms: f64,
    /// Client backends on the server, anyone's.
    pub connections: i64,
    /// The workload's sessions waiting on a heavyweight lock.
    pub waiting_on_lock: i64,
    /// The workload's sessions idle in a transaction.
    pub idle_in_transaction: i64,
}

/// A pooler's own view at one moment (PgBouncer's SHOW POOLS), over the pools a variant uses.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Deserialize)]
pub struct PoolerSample {
    pub at_ms: f64,
    /// Clients waiting in the pooler's queue for a server connection (cl_waiting), all pools.
    pub waiting: i64,
    /// The workload's pool's server connections, in any state (sv_*).
    pub server_conns: i64,
    /// How long the longest-waiting client has waited (maxwait), ms.
    pub maxwait_ms: f64,
}

impl crate::gauge::Gauged for PoolerSample {
    fn gauges(&self) -> Vec<(&'static str, f64)> {
        use crate::gauge::*;
        vec![
            (POOL_SERVER_CONNS, self.server_conns as f64),
            (POOL_WAITING, self.waiting as f64),
        ]
    }
}

/// The pool's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolState {
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
}

/// The key's value at one moment (wall-clock epoch milliseconds), and its time to live as
/// Redis answered `PTTL` (none: no key, or no expiry; absent from results saved before it was
/// sampled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeySample {
    pub at_ms: f64,
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<i64>,
}

// What each sample shows as gauges, on the live view and the page.

impl crate::gauge::Gauged for Sample {
    fn gauges(&self) -> Vec<(&'static str, f64)> {
        use crate::gauge::*;
        vec![
            (WAITING_ON_LOCK, self.waiting_on_lock as f64),
            (IDLE_IN_TRANSACTION, self.idle_in_transaction as f64),
            (CONNECTIONS, self.sessions as f64),
            (HOLDER_IDLE_S, self.holder_idle_ms.unwrap_or(0.0) / 1000.0),
        ]
    }
}

impl crate::gauge::Gauged for SlotSample {
    fn gauges(&self) -> Vec<(&'static str, f64)> {
        use crate::gauge::*;
        vec![
            (WAITING_ON_LOCK, self.waiting_on_lock as f64),
            (IDLE_IN_TRANSACTION, self.idle_in_transaction as f64),
            (CONNECTIONS, self.connections as f64),
        ]
    }
}
