//! A Redis key's value over time, sampled every few milliseconds and kept only where it changed:
//! who held a lock, and for how long a dead holder's value stayed.

pub use crate::check::samples::KeySample;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::history::epoch_ms;

/// Samples `key` until finished; what it saw is each change of its value.
pub fn watch(mut con: MultiplexedConnection, key: String) -> super::Watch<Vec<KeySample>> {
    let board = crate::gauge::current();
    super::Watch::spawn(move |stop| async move {
        let mut samples: Vec<KeySample> = Vec::new();
        loop {
            let got: Result<Option<String>, _> =
                redis::cmd("GET").arg(&key).query_async(&mut con).await;
            if let Ok(value) = got
                && samples.last().is_none_or(|s| s.value != value)
            {
                if let Some(board) = &board {
                    board.set(crate::gauge::LOCK_KEY, f64::from(u8::from(value.is_some())));
                }
                samples.push(KeySample {
                    at_ms: epoch_ms(),
                    value,
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                _ = stop.cancelled() => return samples,
            }
        }
    })
}
