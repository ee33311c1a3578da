//! Gauges: what the observers and the workload driver report while a variant runs (sessions
//! waiting on a lock, clients in flight, whether the lock key is set). They write to a
//! [`Board`] and know nothing of terminals; the live view ([`crate::live`]) reads the board and
//! draws it.
//!
//! The runner puts a board in scope around a variant's code ([`scope`]); observers and the
//! driver pick it up with [`current`] when they start. Out of scope (off a terminal,
//! `--no-progress`, tests) there is none, and nothing is counted.

use std::sync::{Arc, Mutex};

pub const WAITING_ON_LOCK: &str = "waiting on lock";
pub const IDLE_IN_TRANSACTION: &str = "idle in transaction";
pub const CONNECTIONS: &str = "connections";
/// Through a pooler: the pool's server connections, and clients queued for one.
pub const POOL_SERVER_CONNS: &str = "pool's server conns";
pub const POOL_WAITING: &str = "waiting in pooler";
pub const HOLDER_IDLE_S: &str = "holder idle in tx, s";
pub const LOCK_KEY: &str = "lock key set";
pub const CLIENTS_OK: &str = "ok";
pub const CLIENTS_FAILED: &str = "failed";
pub const CLIENTS_WAITING: &str = "in flight";
/// `env up --watch`: how long the oldest open transaction has sat idle.
pub const OLDEST_IDLE_TX_S: &str = "oldest idle in tx, s";

/// The gauges in the order they are shown; any other name follows them.
pub const ORDER: &[&str] = &[
    WAITING_ON_LOCK,
    IDLE_IN_TRANSACTION,
    CONNECTIONS,
    POOL_SERVER_CONNS,
    POOL_WAITING,
    HOLDER_IDLE_S,
    OLDEST_IDLE_TX_S,
    LOCK_KEY,
    CLIENTS_OK,
    CLIENTS_FAILED,
    CLIENTS_WAITING,
];

/// A sample that shows as gauges: on the board while a variant runs, and on the page after.
pub trait Gauged {
    fn gauges(&self) -> Vec<(&'static str, f64)>;
}

/// The gauges' values now, shared by whoever reports and whoever reads.
#[derive(Clone, Default)]
pub struct Board(Arc<Mutex<Vec<(&'static str, f64)>>>);

impl Board {
    pub fn set(&self, name: &'static str, value: f64) {
        self.with(name, |v| *v = value);
    }

    pub fn add(&self, name: &'static str, delta: f64) {
        self.with(name, |v| *v += delta);
    }

    fn with(&self, name: &'static str, f: impl FnOnce(&mut f64)) {
        let Ok(mut gauges) = self.0.lock() else {
            return;
        };
        let at = match gauges.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                gauges.push((name, 0.0));
                gauges.sort_by_key(|(n, _)| ORDER.iter().position(|o| o == n).unwrap_or(99));
                gauges.iter().position(|(n, _)| *n == name).unwrap_or(0)
            }
        };
        f(&mut gauges[at].1);
    }

    /// Every gauge reported so far and its value, in [`ORDER`].
    pub fn now(&self) -> Vec<(&'static str, f64)> {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

tokio::task_local! {
    static BOARD: Board;
}

/// The board in scope, if any.
pub fn current() -> Option<Board> {
    BOARD.try_with(Clone::clone).ok()
}

/// Runs `f` with `board` in scope (or none).
pub async fn scope<F: Future>(board: Option<Board>, f: F) -> F::Output {
    match board {
        Some(b) => BOARD.scope(b, f).await,
        None => f.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_keep_a_fixed_order_whatever_reports_first() {
        let b = Board::default();
        b.add(CLIENTS_OK, 1.0);
        b.set(WAITING_ON_LOCK, 20.0);
        b.add(CLIENTS_OK, 1.0);
        assert_eq!(b.now(), vec![(WAITING_ON_LOCK, 20.0), (CLIENTS_OK, 2.0)]);
    }

    #[tokio::test]
    async fn only_code_in_scope_sees_the_board() {
        assert!(current().is_none());
        let seen = scope(Some(Board::default()), async { current().is_some() }).await;
        assert!(seen);
        assert!(!scope(None, async { current().is_some() }).await);
    }
}
