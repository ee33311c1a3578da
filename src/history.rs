//! The history: every operation a simulated client invoked, with when it started, when it
//! completed and how. Workers only append; checkers only read.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// A definite failure. `class` is the SQLSTATE where the server gave one
    /// (55P03, 57014, 25P03...), else a short word such as `connection` or `sold-out`.
    Error {
        class: String,
    },
    /// Still in flight when the variant was cut off: it may or may not have taken effect.
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub client: usize,
    /// What the client tried, e.g. `book`.
    pub kind: &'static str,
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
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    pub fn ms(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.origin).as_secs_f64() * 1000.0
    }

    pub fn now_ms(&self) -> f64 {
        self.ms(Instant::now())
    }

    pub fn since(&self, ms: f64) -> Duration {
        Duration::from_secs_f64((self.now_ms() - ms).max(0.0) / 1000.0)
    }
}

/// The operations of one variant run, in completion order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    pub ops: Vec<Op>,
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

    fn of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Op> + 'a {
        self.ops.iter().filter(move |o| o.kind == kind)
    }
}
