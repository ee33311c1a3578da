//! An application pool's own counters (deadpool's status), as the pool itself reports them.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use tokio::time::Instant;

/// The pool's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolState {
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
}

impl PoolState {
    pub fn of(pool: &deadpool_postgres::Pool) -> PoolState {
        let s = pool.status();
        PoolState {
            size: s.size,
            available: s.available,
            waiting: s.waiting,
        }
    }
}

/// Samples the pool every few milliseconds until just before `until`; returns the last sample,
/// i.e. the pool as it was at a cut-off (after it, dropped clients give everything back).
pub fn last_before(
    pool: deadpool_postgres::Pool,
    until: Instant,
) -> tokio::task::JoinHandle<PoolState> {
    tokio::spawn(async move {
        let mut last = PoolState::default();
        while Instant::now() + Duration::from_millis(5) < until {
            last = PoolState::of(&pool);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        last
    })
}
