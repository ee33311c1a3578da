//! A Redis key's value over time, sampled every few milliseconds and kept only where it changed:
//! who held a lock, and for how long a dead holder's value stayed.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::history::epoch_ms;

/// The key's value at one moment (wall-clock epoch milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeySample {
    pub at_ms: f64,
    pub value: Option<String>,
}

/// Samples `key` until `stop` fires; returns the changes.
pub fn watch(
    mut con: MultiplexedConnection,
    key: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<KeySample>> {
    let live = crate::live::current();
    tokio::spawn(async move {
        let mut samples: Vec<KeySample> = Vec::new();
        loop {
            let got: Result<Option<String>, _> =
                redis::cmd("GET").arg(&key).query_async(&mut con).await;
            if let Ok(value) = got
                && samples.last().is_none_or(|s| s.value != value)
            {
                if let Some(live) = &live {
                    live.set(crate::live::LOCK_KEY, f64::from(u8::from(value.is_some())));
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
