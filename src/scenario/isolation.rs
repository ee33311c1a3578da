//! What the isolation-family scenarios share: the isolation level a transaction runs under,
//! and counters of the serialization failures and retries met along the way.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_postgres::Client;

use crate::workload::OpError;

/// The isolation level a transaction asks for; `Default` asks for none (the server's, the
/// database's or the role's default_transaction_isolation decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    ReadCommitted,
    RepeatableRead,
    Serializable,
    Default,
}

crate::scenario::spec::words!(pub LEVELS, LEVEL_OF: Level = {
    "read-committed" => Level::ReadCommitted,
    "repeatable-read" => Level::RepeatableRead,
    "serializable" => Level::Serializable,
    "default" => Level::Default,
});

impl Level {
    /// The statement that opens a transaction at this level.
    pub fn begin(self) -> &'static str {
        match self {
            Level::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Level::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            Level::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
            Level::Default => "BEGIN",
        }
    }
}

/// Serialization failures (40001) or deadlocks (40P01) met, and the retries they caused.
#[derive(Default)]
pub struct Conflicts {
    pub failures: AtomicUsize,
    pub retries: AtomicUsize,
}

impl Conflicts {
    /// Counts `e` if it is a conflict; returns whether a retry loop may run the transaction
    /// again (a conflict, `retry` allowed, and tries left).
    pub fn again(&self, e: &OpError, retry: bool, tries: usize, max: usize) -> bool {
        if !crate::check::isolation::retryable(&e.class) {
            return false;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        let again = retry && tries < max;
        if again {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        again
    }

    /// Runs a transaction with `attempt` (told whether this is its first try), rolling back
    /// after each failure and trying again while [`Conflicts::again`] allows.
    pub async fn retrying<F, Fut>(
        &self,
        client: &Client,
        retry: bool,
        max_retries: usize,
        mut attempt: F,
    ) -> Result<(), OpError>
    where
        F: FnMut(bool) -> Fut,
        Fut: Future<Output = Result<(), OpError>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let Err(e) = attempt(tries == 1).await else {
                return Ok(());
            };
            let _ = client.batch_execute("ROLLBACK").await;
            if !self.again(&e, retry, tries, max_retries + 1) {
                return Err(e);
            }
        }
    }

    pub fn counts(&self) -> (usize, usize) {
        (
            self.failures.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
    }
}
