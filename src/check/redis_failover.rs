//! redis-failover's checker: from every critical section the buyers recorded, the lock key as
//! an observer saw it on every node, and what PostgreSQL counted, decide how many holders
//! overlapped, whose lock Redis lost while its holder was still inside, and what was sold.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Evaluation;
use super::setnx_race::{Sale, Section, max_concurrent};
use super::stats::json_ms;
use crate::history::History;

/// One node's key at one moment (epoch ms): its value, or that the node did not answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSample {
    pub at_ms: f64,
    pub up: bool,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Observations {
    pub sections: Vec<Section>,
    /// Each node's key as sampled every 2 ms, kept where it changed.
    pub nodes: Vec<Vec<NodeSample>>,
    /// How many nodes a lock needs (1 for a single node, a majority for Redlock).
    pub quorum: usize,
    /// When the fault hit (epoch ms).
    pub fault_ms: Option<f64>,
    /// From the primary's death to the first Sentinel naming the replica as the primary,
    /// where a failover happened.
    pub failover_ms: Option<f64>,
    pub end_ms: f64,
    pub cut_off: bool,
    pub stock_initial: i64,
    pub stock_left: i64,
    pub orders: i64,
}

pub const METRICS: &[&str] = &[
    "max_holders",
    "oversold",
    "lock_lost",
    "stale_writes_rejected",
    "failover_ms",
    "sold",
    "stock_left",
    "denied",
    "sold_out",
    "p50_ms",
    "p99_ms",
    "cut_off",
];

/// Whether Redis lost `s`'s lock while its holder was inside: once a quorum of nodes showed
/// its token, enough nodes answered without it (holding nothing, or another's token) that
/// another client could gather a quorum of its own, before its release (or the end). A node
/// that does not answer is neither: it grants nothing to anyone.
pub fn lost(s: &Section, nodes: &[Vec<NodeSample>], quorum: usize, end_ms: f64) -> bool {
    let until = s.released_ms.unwrap_or(end_ms);
    let mut times: Vec<f64> = nodes
        .iter()
        .flatten()
        .map(|k| k.at_ms)
        .filter(|t| *t > s.granted_ms && *t < until)
        .collect();
    times.insert(0, s.granted_ms);
    times.sort_by(f64::total_cmp);
    let at = |samples: &[NodeSample], t: f64| {
        samples.iter().take_while(|k| k.at_ms <= t).last().cloned()
    };
    let mut reached = false;
    for t in times {
        let now: Vec<Option<NodeSample>> = nodes.iter().map(|n| at(n, t)).collect();
        let holding = now
            .iter()
            .flatten()
            .filter(|k| k.value.as_ref() == Some(&s.value))
            .count();
        let against = now
            .iter()
            .flatten()
            .filter(|k| k.up && k.value.as_ref() != Some(&s.value))
            .count();
        if holding >= quorum {
            reached = true;
        } else if reached && against >= quorum {
            return true;
        }
    }
    false
}

pub fn evaluate(h: &History, obs: &Observations) -> Evaluation {
    let sale = Sale::of(
        h,
        obs.stock_initial,
        obs.stock_left,
        obs.orders,
        obs.cut_off,
    );
    let lock_lost = obs
        .sections
        .iter()
        .filter(|s| lost(s, &obs.nodes, obs.quorum, obs.end_ms))
        .count();
    let metrics = [
        (
            "max_holders",
            json!(max_concurrent(&obs.sections, obs.end_ms)),
        ),
        ("lock_lost", json!(lock_lost)),
        ("failover_ms", json_ms(obs.failover_ms)),
    ];
    let outcome = sale.outcome(obs.stock_initial, obs.cut_off);
    Evaluation::new(outcome, metrics.into_iter().chain(sale.metrics))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::setnx_race::outcome;

    fn k(at_ms: f64, value: Option<&str>) -> NodeSample {
        NodeSample {
            at_ms,
            up: true,
            value: value.map(str::to_string),
        }
    }

    fn down(at_ms: f64) -> NodeSample {
        NodeSample {
            at_ms,
            up: false,
            value: None,
        }
    }

    fn section(value: &str, granted: f64, released: Option<f64>) -> Section {
        Section {
            buyer: value.into(),
            value: value.into(),
            granted_ms: granted,
            waited_ms: 0.0,
            released_ms: released,
            deleted: None,
        }
    }

    #[test]
    fn a_restarted_single_node_loses_the_lock_its_holder_is_inside() {
        let node = vec![
            k(0.0, None),
            k(12.0, Some("a")),
            down(480.0),
            k(500.0, None),
            k(530.0, Some("b")),
            k(900.0, None),
        ];
        let nodes = vec![node];
        assert!(lost(&section("a", 10.0, Some(1000.0)), &nodes, 1, 2000.0));
        // Down and back with the key (an append-only file): never lost.
        let kept = vec![vec![k(12.0, Some("a")), down(480.0), k(500.0, Some("a"))]];
        assert!(!lost(&section("a", 10.0, Some(1000.0)), &kept, 1, 2000.0));
        // b held it from its grant to its release.
        assert!(!lost(&section("b", 528.0, Some(890.0)), &nodes, 1, 2000.0));
    }

    #[test]
    fn a_majority_that_stays_is_not_a_loss_and_one_that_goes_is() {
        let holds = |gone_at: Option<f64>| {
            let mut s = vec![k(0.0, None), k(5.0, Some("a"))];
            if let Some(t) = gone_at {
                s.push(down(t));
                s.push(k(t + 20.0, None));
            }
            s
        };
        // Five nodes; one restarts empty at 100: four of five still hold it.
        let one_lost = vec![
            holds(Some(100.0)),
            holds(None),
            holds(None),
            holds(None),
            holds(None),
        ];
        assert!(!lost(
            &section("a", 4.0, Some(1000.0)),
            &one_lost,
            3,
            2000.0
        ));
        // Three restart empty: two of five is no majority, and three could grant another.
        let three_lost = vec![
            holds(Some(100.0)),
            holds(Some(110.0)),
            holds(Some(120.0)),
            holds(None),
            holds(None),
        ];
        assert!(lost(
            &section("a", 4.0, Some(1000.0)),
            &three_lost,
            3,
            2000.0
        ));
        let run = evaluate(
            &History::default(),
            &Observations {
                sections: vec![section("a", 4.0, Some(1000.0))],
                nodes: three_lost,
                quorum: 3,
                fault_ms: Some(100.0),
                failover_ms: None,
                end_ms: 2000.0,
                cut_off: false,
                stock_initial: 1,
                stock_left: 0,
                orders: 1,
            },
        );
        assert_eq!(run.metrics["lock_lost"], json!(1));
        assert_eq!(run.outcome, outcome::SOLD_EXACTLY);
        crate::check::assert_emits_exactly(&run, METRICS);
    }
}
