//! lock-watchdog's checker: setnx-race's observations (critical sections, the lock key and its
//! time to live as Redis showed them, the orders PostgreSQL counted), judged on what a renewed
//! lease does: how long the first holder's lock stayed in Redis, how many renewals Redis saw,
//! how many buyers believed they held the lock at once, and what was sold.

use serde_json::json;

use super::Evaluation;
use super::samples::KeySample;
use super::setnx_race::{Observations, Sale, Section, max_concurrent};
use super::stats::json_ms;
use crate::history::History;

pub const METRICS: &[&str] = &[
    "lock_held_ms",
    "max_holders",
    "oversold",
    "renewals",
    "sold",
    "stock_left",
    "stale_writes_rejected",
    "denied",
    "sold_out",
    "p50_ms",
    "p99_ms",
    "cut_off",
];

/// The first holder's (the process the fault hits).
pub const HOLDER: &str = "holder";

/// How long `holder`'s value stayed in the key as Redis showed it: from its grant to the first
/// sample after it that holds something else (nothing, or another's token). Whether it was
/// still there when observation ended (the figure is then a lower bound).
pub fn lock_held_ms(holder: &Section, samples: &[KeySample], end_ms: f64) -> (f64, bool) {
    let gone = samples
        .iter()
        .filter(|s| s.at_ms >= holder.granted_ms)
        .find(|s| s.value.as_ref() != Some(&holder.value))
        .map(|s| s.at_ms);
    (
        (gone.unwrap_or(end_ms) - holder.granted_ms).max(0.0),
        gone.is_none(),
    )
}

/// Renewals Redis saw. The observer keeps a sample only where the value changed or its time to
/// live went up since the look before (left alone, it only goes down): a kept sample with the
/// same value as the one before it is a renewal.
pub fn renewals(samples: &[KeySample]) -> usize {
    samples
        .windows(2)
        .filter(|w| w[0].value.is_some() && w[0].value == w[1].value)
        .count()
}

pub fn evaluate(h: &History, obs: &Observations) -> Evaluation {
    let sale = Sale::of(
        h,
        obs.stock_initial,
        obs.stock_left,
        obs.orders,
        obs.cut_off,
    );
    let held = obs
        .sections
        .iter()
        .find(|s| s.buyer == HOLDER)
        .map(|s| lock_held_ms(s, &obs.key_samples, obs.end_ms));
    let metrics = [
        ("lock_held_ms", json_ms(held.map(|(ms, _)| ms))),
        (
            "max_holders",
            json!(max_concurrent(&obs.sections, obs.end_ms)),
        ),
        ("renewals", json!(renewals(&obs.key_samples))),
    ];
    let still_held = held.is_some_and(|(_, open)| open);
    let outcome = sale.outcome(obs.stock_initial, still_held);
    Evaluation::new(outcome, metrics.into_iter().chain(sale.metrics))
        .lower_bound("lock_held_ms", still_held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::setnx_race::outcome;

    fn sample(at_ms: f64, value: Option<&str>, ttl_ms: Option<i64>) -> KeySample {
        KeySample {
            at_ms,
            value: value.map(str::to_string),
            ttl_ms,
        }
    }

    fn section(buyer: &str, value: &str, granted: f64, released: Option<f64>) -> Section {
        Section {
            buyer: buyer.into(),
            value: value.into(),
            granted_ms: granted,
            waited_ms: 0.0,
            released_ms: released,
            deleted: None,
        }
    }

    fn observations(sections: Vec<Section>, samples: Vec<KeySample>, orders: i64) -> Observations {
        Observations {
            sections,
            key_samples: samples,
            crash: None,
            end_ms: 10_000.0,
            cut_off: false,
            stock_initial: 1,
            stock_left: 1 - orders,
            orders,
        }
    }

    #[test]
    fn a_renewed_lock_held_to_the_end_locks_everyone_out() {
        // Granted at 100 with a 300 ms lease, renewed twice, still there at the end.
        let samples = vec![
            sample(0.0, None, None),
            sample(100.0, Some("h"), Some(300)),
            sample(200.0, Some("h"), Some(300)),
            sample(300.0, Some("h"), Some(300)),
        ];
        assert_eq!(renewals(&samples), 2);
        let run = evaluate(
            &History::default(),
            &observations(vec![section(HOLDER, "h", 100.0, None)], samples, 0),
        );
        assert_eq!(run.outcome, outcome::LOCKED_OUT);
        assert_eq!(run.metrics["lock_held_ms"], json!(9900.0));
        assert!(run.lower_bounds.contains("lock_held_ms"));
        crate::check::assert_emits_exactly(&run, METRICS);
    }

    #[test]
    fn a_lapsed_lease_ends_the_hold_and_a_second_holder_oversells() {
        // The holder stalls; its lease lapses at 700; b takes the lock at 720; both sell.
        let samples = vec![
            sample(100.0, Some("h"), Some(300)),
            sample(200.0, Some("h"), Some(300)),
            sample(700.0, None, None),
            sample(720.0, Some("b"), Some(300)),
            // Another value's first sample is a change, not a renewal.
            sample(820.0, Some("b"), Some(300)),
        ];
        assert_eq!(renewals(&samples), 2);
        let run = evaluate(
            &History::default(),
            &observations(
                vec![
                    section(HOLDER, "h", 100.0, Some(1500.0)),
                    section("buyer-2", "b", 720.0, Some(1600.0)),
                ],
                samples,
                2,
            ),
        );
        assert_eq!(run.outcome, outcome::OVERSOLD);
        assert_eq!(run.metrics["lock_held_ms"], json!(600.0));
        assert_eq!(run.metrics["max_holders"], json!(2));
        assert_eq!(run.metrics["oversold"], json!(1));
        assert!(run.lower_bounds.is_empty());
    }
}
