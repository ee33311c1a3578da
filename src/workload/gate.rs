//! Gates that line clients up step by step without ever deadlocking: at gate `i` a client
//! waits until every client has reached it, or until `patience` has passed. Where nothing
//! blocks, all arrive at once and the servers see the same interleaving on every run; where a
//! client is held up elsewhere (a row lock, a pooler's queue), the others go on after
//! `patience` instead of waiting for ever, as a plain barrier would.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub struct Gates {
    arrived: Vec<AtomicUsize>,
    notify: tokio::sync::Notify,
    parties: usize,
    patience: Duration,
}

impl Gates {
    pub fn new(gates: usize, parties: usize, patience: Duration) -> Gates {
        Gates {
            arrived: (0..gates).map(|_| AtomicUsize::new(0)).collect(),
            notify: tokio::sync::Notify::new(),
            parties,
            patience,
        }
    }

    pub fn len(&self) -> usize {
        self.arrived.len()
    }

    pub fn is_empty(&self) -> bool {
        self.arrived.is_empty()
    }

    /// Arrives at gate `gate` and waits for the others (or the patience). A gate past the
    /// last one passes at once.
    pub async fn pass(&self, gate: usize) {
        let Some(arrived) = self.arrived.get(gate) else {
            return;
        };
        arrived.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
        let until = Instant::now() + self.patience;
        loop {
            let notified = self.notify.notified();
            if arrived.load(Ordering::SeqCst) >= self.parties {
                return;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return;
            }
        }
    }

    /// Counts a client at gates `from..to` without waiting: it will not reach them (it stopped
    /// early, or skipped a step), so nobody waits for it there.
    pub fn skip(&self, from: usize, to: usize) {
        for g in self.arrived.iter().take(to).skip(from) {
            g.fetch_add(1, Ordering::SeqCst);
        }
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn everyone_passes_together_and_a_skipper_is_not_waited_for() {
        let gates = Arc::new(Gates::new(2, 3, Duration::from_secs(30)));
        let start = Instant::now();
        let a = tokio::spawn({
            let g = gates.clone();
            async move { g.pass(0).await }
        });
        let b = tokio::spawn({
            let g = gates.clone();
            async move { g.pass(0).await }
        });
        gates.skip(0, 2);
        let (ra, rb) = (a.await, b.await);
        assert!(ra.is_ok() && rb.is_ok());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_missing_party_costs_the_patience_not_a_hang() {
        let gates = Gates::new(1, 2, Duration::from_millis(30));
        let start = Instant::now();
        gates.pass(0).await;
        assert!(start.elapsed() >= Duration::from_millis(30));
        gates.pass(7).await;
    }
}
