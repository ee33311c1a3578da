//! A Redis key's value and time to live over time, sampled every few milliseconds and kept only
//! where the value changed or the lease was extended: who held a lock, for how long a dead
//! holder's value stayed, and every renewal Redis saw.

pub use crate::check::samples::KeySample;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::history::epoch_ms;

/// Samples `key` until finished.
pub fn watch(mut con: MultiplexedConnection, key: String) -> super::Watch<Vec<KeySample>> {
    let board = crate::gauge::current();
    super::Watch::spawn(move |stop| async move {
        let mut samples: Vec<KeySample> = Vec::new();
        let mut last: Option<(Option<String>, Option<i64>)> = None;
        loop {
            // Both in one transaction: the time to live is the value's own.
            let got: Result<(Option<String>, i64), _> = redis::pipe()
                .atomic()
                .cmd("GET")
                .arg(&key)
                .cmd("PTTL")
                .arg(&key)
                .query_async(&mut con)
                .await;
            if let Ok((value, pttl)) = got {
                // -2: no key; -1: no expiry.
                let ttl_ms = (pttl >= 0).then_some(pttl);
                if kept(last.as_ref(), &value, ttl_ms) {
                    if let Some(board) = &board {
                        board.set(crate::gauge::LOCK_KEY, f64::from(u8::from(value.is_some())));
                    }
                    samples.push(KeySample {
                        at_ms: epoch_ms(),
                        value: value.clone(),
                        ttl_ms,
                    });
                }
                last = Some((value, ttl_ms));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                _ = stop.cancelled() => return samples,
            }
        }
    })
}

/// A sample is kept where the value changed, or where the same value's time to live went up
/// (a renewal: left alone, it only goes down).
fn kept(
    last: Option<&(Option<String>, Option<i64>)>,
    value: &Option<String>,
    ttl: Option<i64>,
) -> bool {
    match last {
        None => true,
        Some((v, _)) if v != value => true,
        Some((_, before)) => matches!((before, ttl), (Some(b), Some(t)) if t > *b),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_changes_and_renewals_only() {
        let a = Some("a".to_string());
        assert!(super::kept(None, &None, None));
        assert!(!super::kept(Some(&(a.clone(), Some(100))), &a, Some(98)));
        assert!(super::kept(Some(&(a.clone(), Some(98))), &a, Some(300)));
        assert!(super::kept(Some(&(a.clone(), Some(98))), &None, None));
        // A key without expiry given one is not a renewal of a lease.
        assert!(!super::kept(Some(&(a.clone(), None)), &a, Some(300)));
    }
}
