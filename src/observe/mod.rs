//! Watching the servers themselves while a variant runs: what PostgreSQL's sessions are doing,
//! what a Redis key holds, what a connection pool counts. Observers only sample; checkers decide
//! (the samples' types live with them, in `check::samples`).
//!
//! Every observer has one lifecycle, a [`Watch`]: its constructor starts it, [`Watch::finish`]
//! stops it and hands over what it saw.

pub mod cpu;
pub mod pg_activity;
pub mod pg_slots;
pub mod pool;
pub mod pooler;
pub mod redis_key;
pub mod sampler;

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use pg_activity::{Observer, Sample};

/// A running observer.
pub struct Watch<T> {
    stop: CancellationToken,
    task: JoinHandle<T>,
}

impl<T: Default + Send + 'static> Watch<T> {
    /// Runs `observe` in a task of its own; it returns what it saw once its token is cancelled.
    pub fn spawn<F>(observe: impl FnOnce(CancellationToken) -> F) -> Watch<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(observe(stop.clone()));
        Watch { stop, task }
    }

    /// Stops it and returns what it saw (nothing, if its task died).
    pub async fn finish(mut self) -> T {
        self.stop.cancel();
        (&mut self.task).await.unwrap_or_default()
    }
}

/// An observer dropped without being finished (its variant cut off by the harness) stops too.
impl<T> Drop for Watch<T> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
