//! setnx-race's checker: from every critical section the buyers recorded, what Redis showed the
//! lock key holding over time, and what PostgreSQL counted, decide how many holders overlapped,
//! whose lock each release removed, how long a dead holder's lock stayed, and what was sold.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Evaluation;
pub use super::samples::KeySample;
use super::stats::{json_ms, p50, p99};
use crate::history::{History, class};

/// What the stock and the lock key showed.
pub mod outcome {
    pub const OVERSOLD: &str = "oversold";
    /// Nothing sold and buyers still locked out at the cut-off.
    pub const LOCKED_OUT: &str = "locked-out";
    pub const SOLD_EXACTLY: &str = "sold-exactly";
    pub const UNDERSOLD: &str = "undersold";
}

/// One buyer's time holding the lock: from SET … NX granted to its release (or its death).
/// Times are wall-clock epoch milliseconds, shared by locklab and its holder process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub buyer: String,
    /// The value this buyer stored in the lock key.
    pub value: String,
    pub granted_ms: f64,
    /// How long the buyer had been trying before it got the lock.
    pub waited_ms: f64,
    /// When its release ran; `None` if it never released (crashed, or cut off).
    pub released_ms: Option<f64>,
    /// The value the release removed from Redis: `None` when it removed nothing.
    pub deleted: Option<String>,
}

/// The holder process was killed while holding the lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Crash {
    pub at_ms: f64,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Observations {
    pub sections: Vec<Section>,
    pub key_samples: Vec<KeySample>,
    pub crash: Option<Crash>,
    /// When observation ended (epoch ms): open sections and a stuck key end here.
    pub end_ms: f64,
    pub cut_off: bool,
    pub stock_initial: i64,
    pub stock_left: i64,
    /// Rows in `orders`, counted by PostgreSQL.
    pub orders: i64,
}

pub const METRICS: &[&str] = &[
    "sold",
    "oversold",
    "stock_left",
    "max_concurrent_holders",
    "foreign_releases",
    "stale_writes_rejected",
    "lock_stuck_ms",
    "denied",
    "sold_out",
    "acquire_p50_ms",
    "acquire_p99_ms",
    "p50_ms",
    "p99_ms",
    "cut_off",
];

/// The most sections open at one instant. A section ends at its release, else at `end_ms`.
pub fn max_concurrent(sections: &[Section], end_ms: f64) -> usize {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for s in sections {
        edges.push((s.granted_ms, 1));
        edges.push((s.released_ms.unwrap_or(end_ms), -1));
    }
    // At equal times, a release comes before a grant: a hand-over is not an overlap.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut open, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        max = max.max(open);
    }
    max as usize
}

/// Releases that removed a value other than the releaser's own: someone else's lock.
pub fn foreign_releases(sections: &[Section]) -> usize {
    sections
        .iter()
        .filter(|s| s.deleted.as_ref().is_some_and(|d| *d != s.value))
        .count()
}

/// How long the crashed holder's value stayed in the key after the crash, and whether it was
/// still there when observation ended (the figure is then a lower bound).
pub fn lock_stuck_ms(crash: &Crash, samples: &[KeySample], end_ms: f64) -> (f64, bool) {
    let Some(dead) = &crash.value else {
        return (0.0, false);
    };
    let gone = samples
        .iter()
        .filter(|s| s.at_ms >= crash.at_ms)
        .find(|s| s.value.as_ref() != Some(dead))
        .map(|s| s.at_ms);
    (
        (gone.unwrap_or(end_ms) - crash.at_ms).max(0.0),
        gone.is_none(),
    )
}

/// What a shop sold, as every checker of one reports it (setnx-race, lock-watchdog,
/// redis-failover): orders counted by PostgreSQL against the stock, and the buyers' outcomes.
pub struct Sale {
    pub sold: i64,
    pub oversold: i64,
    pub metrics: [(&'static str, serde_json::Value); 9],
}

impl Sale {
    pub fn of(
        h: &History,
        stock_initial: i64,
        stock_left: i64,
        orders: i64,
        cut_off: bool,
    ) -> Sale {
        let count = |class: &str| h.count("buy", class);
        let oversold = (orders - stock_initial).max(0);
        let latencies = h.completed_latencies("buy");
        Sale {
            sold: orders,
            oversold,
            metrics: [
                ("sold", json!(orders)),
                ("oversold", json!(oversold)),
                ("stock_left", json!(stock_left)),
                ("stale_writes_rejected", json!(count(class::FENCED))),
                ("denied", json!(count(class::DENIED))),
                ("sold_out", json!(count(class::SOLD_OUT))),
                ("p50_ms", p50(&latencies)),
                ("p99_ms", p99(&latencies)),
                ("cut_off", json!(cut_off)),
            ],
        }
    }

    /// Oversold, else locked out (nothing sold and `locked_out`, the checker's own sign of a
    /// lock nobody could take), else sold exactly the stock, else undersold.
    pub fn outcome(&self, stock_initial: i64, locked_out: bool) -> &'static str {
        if self.oversold > 0 {
            outcome::OVERSOLD
        } else if self.sold == 0 && locked_out {
            outcome::LOCKED_OUT
        } else if self.sold == stock_initial {
            outcome::SOLD_EXACTLY
        } else {
            outcome::UNDERSOLD
        }
    }
}

pub fn evaluate(h: &History, obs: &Observations) -> Evaluation {
    let sale = Sale::of(
        h,
        obs.stock_initial,
        obs.stock_left,
        obs.orders,
        obs.cut_off,
    );
    let waits: Vec<f64> = obs.sections.iter().map(|s| s.waited_ms).collect();
    // Only a crashed holder can leave a lock stuck; without a crash there is nothing to measure.
    let lock_stuck = obs
        .crash
        .as_ref()
        .map(|c| lock_stuck_ms(c, &obs.key_samples, obs.end_ms));
    let metrics = [
        (
            "max_concurrent_holders",
            json!(max_concurrent(&obs.sections, obs.end_ms)),
        ),
        ("foreign_releases", json!(foreign_releases(&obs.sections))),
        ("lock_stuck_ms", json_ms(lock_stuck.map(|(ms, _)| ms))),
        ("acquire_p50_ms", p50(&waits)),
        ("acquire_p99_ms", p99(&waits)),
    ];
    let outcome = sale.outcome(obs.stock_initial, obs.cut_off);
    let still_stuck = lock_stuck.is_some_and(|(_, open)| open);
    Evaluation::new(outcome, metrics.into_iter().chain(sale.metrics))
        .lower_bound("lock_stuck_ms", still_stuck)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, Outcome};
    use serde_json::Value;

    fn section(value: &str, granted: f64, released: Option<f64>, deleted: Option<&str>) -> Section {
        Section {
            buyer: value.to_string(),
            value: value.to_string(),
            granted_ms: granted,
            waited_ms: granted,
            released_ms: released,
            deleted: deleted.map(str::to_string),
        }
    }

    fn op(outcome: Outcome) -> Op {
        Op {
            client: 0,
            kind: "buy".into(),
            start_ms: 0.0,
            end_ms: Some(10.0),
            outcome,
        }
    }

    #[test]
    fn overlapping_holders_are_counted_and_hand_overs_are_not() {
        // A holds 0..1500 (paused past its TTL), B 1000..1800, C takes over at B's release.
        let s = [
            section("a", 0.0, Some(1500.0), Some("b")),
            section("b", 1000.0, Some(1800.0), None),
            section("c", 1800.0, Some(1810.0), Some("c")),
        ];
        assert_eq!(max_concurrent(&s, 3000.0), 2);
        assert_eq!(foreign_releases(&s), 1);
        let one_at_a_time = [
            section("a", 0.0, Some(10.0), Some("a")),
            section("b", 10.0, Some(20.0), Some("b")),
        ];
        assert_eq!(max_concurrent(&one_at_a_time, 30.0), 1);
        assert_eq!(foreign_releases(&one_at_a_time), 0);
    }

    #[test]
    fn an_unreleased_section_lasts_until_the_end() {
        let s = [
            section("dead", 0.0, None, None),
            section("b", 2000.0, Some(2100.0), Some("b")),
        ];
        assert_eq!(max_concurrent(&s, 3000.0), 2);
        assert_eq!(max_concurrent(&s, 1000.0), 1);
    }

    #[test]
    fn a_dead_holders_lock_is_stuck_until_its_value_leaves_the_key() {
        let crash = Crash {
            at_ms: 100.0,
            value: Some("a".into()),
        };
        let expired = [
            KeySample {
                at_ms: 0.0,
                value: Some("a".into()),
                ttl_ms: None,
            },
            KeySample {
                at_ms: 1000.0,
                value: None,
                ttl_ms: None,
            },
            KeySample {
                at_ms: 1005.0,
                value: Some("b".into()),
                ttl_ms: None,
            },
        ];
        assert_eq!(lock_stuck_ms(&crash, &expired, 3000.0), (900.0, false));
        // Never expires: stuck for the whole window, and maybe longer.
        assert_eq!(lock_stuck_ms(&crash, &expired[..1], 3000.0), (2900.0, true));
    }

    #[test]
    fn oversold_comes_from_the_order_count_and_errors_by_class() {
        let mut history = History::default();
        history.ops.push(op(Outcome::Ok));
        history.ops.push(op(Outcome::Ok));
        for class in [class::DENIED, class::DENIED, class::SOLD_OUT, class::FENCED] {
            history.ops.push(op(Outcome::Error {
                class: class.into(),
            }));
        }
        let run = evaluate(
            &history,
            &Observations {
                sections: vec![],
                key_samples: vec![],
                crash: None,
                end_ms: 0.0,
                cut_off: false,
                stock_initial: 1,
                stock_left: -1,
                orders: 2,
            },
        );
        assert_eq!(run.outcome, "oversold");
        assert_eq!(run.metrics["oversold"], json!(1));
        assert_eq!(run.metrics["denied"], json!(2));
        assert_eq!(run.metrics["sold_out"], json!(1));
        assert_eq!(run.metrics["stale_writes_rejected"], json!(1));
        assert_eq!(run.metrics["lock_stuck_ms"], Value::Null);
        assert_eq!(run.metrics["acquire_p50_ms"], Value::Null);
        crate::check::assert_emits_exactly(&run, METRICS);
    }
}
