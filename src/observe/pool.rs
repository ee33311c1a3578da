//! An application pool's own counters (deadpool's status), as the pool itself reports them.

use std::time::Duration;

use tokio::time::Instant;

pub use crate::check::samples::PoolState;

use super::Watch;

/// The pool's counters now, as deadpool reports them.
pub fn state(pool: &deadpool_postgres::Pool) -> PoolState {
    let s = pool.status();
    PoolState {
        size: s.size,
        available: s.available,
        waiting: s.waiting,
    }
}

/// Samples the pool every few milliseconds until just before `until` (or until finished): the
/// pool as it was at a cut-off (after it, dropped clients give everything back).
pub fn last_before(pool: deadpool_postgres::Pool, until: Instant) -> Watch<PoolState> {
    Watch::spawn(move |stop| async move {
        let mut last = PoolState::default();
        while Instant::now() + Duration::from_millis(5) < until && !stop.is_cancelled() {
            last = state(&pool);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        last
    })
}
