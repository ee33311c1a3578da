//! The concurrent client driver: one loop for every scenario, parameterised by what a client
//! does. Clients only record (invoke, then completion); the history is assembled when they are
//! done, and an operation that was invoked but never completed is unknown, whatever the reason.

pub mod gate;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::env::postgres::Canceller;
use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::history::{Clock, History, LostClient, Op, Outcome, class};

/// Why an operation failed: the SQLSTATE where the server gave one, else a short word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub class: String,
}

impl OpError {
    pub fn new(class: &str) -> OpError {
        OpError {
            class: class.to_string(),
        }
    }
}

impl From<tokio_postgres::Error> for OpError {
    fn from(e: tokio_postgres::Error) -> OpError {
        let said = |what: &str| e.as_db_error().is_some_and(|d| d.message().contains(what));
        let class = match e.code() {
            Some(_) if said(class::QUERY_WAIT_TIMEOUT) => class::QUERY_WAIT_TIMEOUT.to_string(),
            Some(_) if said("no more connections allowed") => class::POOLER_FULL.to_string(),
            Some(code) => code.code().to_string(),
            None if e.is_closed() => class::CONNECTION_CLOSED.to_string(),
            None if would_block(&e) => class::LISTEN_QUEUE_FULL.to_string(),
            None => class::CLIENT.to_string(),
        };
        OpError { class }
    }
}

impl From<redis::RedisError> for OpError {
    fn from(e: redis::RedisError) -> OpError {
        OpError {
            class: format!("redis-{}", e.category()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for OpError {
    fn from(e: deadpool_postgres::PoolError) -> OpError {
        match e {
            deadpool_postgres::PoolError::Timeout(_) => OpError::new(class::POOL_TIMEOUT),
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            _ => OpError::new(class::POOL),
        }
    }
}

/// A connect refused with EAGAIN: a unix socket's listen queue was full.
fn would_block(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::WouldBlock;
        }
        source = s.source();
    }
    false
}

/// One simulated client.
pub trait Client: Send + 'static {
    /// What an operation is called in the history, e.g. `book`.
    fn kind(&self) -> &'static str;
    /// One operation, start to finish.
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>>;
    /// Cancels the statement in flight on the server: dropping the future would not.
    fn canceller(&self) -> Option<Canceller>;
    /// Waits until the next operation may start (another client's step, say); the wait is not
    /// part of the operation. The deadline or a cancel cuts it short. None: it may start now
    /// (no future to allocate for a client that never waits).
    fn ready(&mut self) -> Option<BoxFuture<'_, ()>> {
        None
    }
    /// Whether the client has nothing left to do, whatever the plan says.
    fn done(&self) -> bool {
        false
    }
}

/// What a client does after an attempt. Every client stops after its first success, except
/// under [`Plan::Times`].
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// One attempt per client, whatever its outcome.
    Once,
    /// Exactly this many attempts per client, one after another, whatever their outcomes
    /// (rounds of a workload; the client knows which round it is in).
    Times(usize),
    /// Retry a failed attempt after `retry_after` (jittered ±50%), except after an error of a
    /// class in `stop_on` (e.g. `sold-out`), where retrying cannot help.
    UntilOk {
        retry_after: Duration,
        stop_on: &'static [&'static str],
    },
}

pub struct Driven {
    pub history: History,
    /// Some client was still at work when the deadline (or Ctrl-C) came.
    pub cut_off: bool,
}

/// Where a client's operations land when its task ends, however it ends.
type Log = Arc<std::sync::Mutex<Vec<Op>>>;

/// One client's operations as it records them: invoked (outcome unknown), then completed in
/// place, in the task's own memory. Dropped as the task ends (returns, panics or is aborted),
/// it hands them to the collector: nothing a client started is lost if its task dies. (A
/// channel shared by every client cost a tight loop contended atomics per operation.)
struct Recorder {
    ops: Vec<Op>,
    log: Log,
}

impl Recorder {
    fn invoke(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// The operation in flight completed.
    fn complete(&mut self, end_ms: f64, outcome: Outcome) {
        if let Some(op) = self.ops.last_mut() {
            op.end_ms = Some(end_ms);
            op.outcome = outcome;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let mut log = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.append(&mut self.ops);
    }
}

/// Runs every client until it is done, the deadline passes, or `cancel` fires.
/// An operation in flight at that moment is recorded as unknown and cancelled on the server;
/// so is the one in flight in a client task that panics.
pub async fn drive(
    clients: Vec<Box<dyn Client>>,
    plan: Plan,
    clock: Clock,
    deadline: Instant,
    cancel: &CancellationToken,
    ok_count: Arc<AtomicUsize>,
) -> Driven {
    let board = crate::gauge::current();
    let logs: Vec<Log> = clients.iter().map(|_| Log::default()).collect();
    // One watcher of the cut-off and a cancel for every client: when either comes it sets
    // `stopped` and drops each client's sender, which wakes that client alone. (A timer and a
    // cancel future per client, polled with every operation, shared the token's lock among
    // them all: a cost a tight loop noticed.)
    let stopped = Arc::new(AtomicBool::new(false));
    let (senders, receivers): (Vec<_>, Vec<_>) = clients
        .iter()
        .map(|_| tokio::sync::oneshot::channel::<()>())
        .unzip();
    let watcher = {
        let (stopped, cancel) = (stopped.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = cancel.cancelled() => {}
            }
            stopped.store(true, Ordering::Relaxed);
            drop(senders);
        })
    };
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(&logs)
        .zip(receivers)
        .enumerate()
        .map(|(id, ((client, log), stop))| {
            let run = ClientRun {
                id,
                plan,
                clock,
                deadline,
                stopped: stopped.clone(),
                ok_count: ok_count.clone(),
                board: board.clone(),
            };
            let recorder = Recorder {
                ops: Vec::new(),
                log: log.clone(),
            };
            tokio::spawn(run.run(client, recorder, stop))
        })
        .collect();
    let mut history = History::default();
    let mut cut_off = false;
    for (id, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(was_cut) => cut_off |= was_cut,
            Err(e) => history.lost_clients.push(LostClient {
                client: id,
                why: panic_message(e),
            }),
        }
    }
    watcher.abort();
    // Every task has ended: what each recorded, a panicked one's too.
    for log in &logs {
        let mut ops = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        history.ops.append(&mut ops);
    }
    history
        .ops
        .sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    Driven { history, cut_off }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return "aborted".into();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

/// One client task's settings; it only records, the collector assembles the history.
struct ClientRun {
    id: usize,
    plan: Plan,
    clock: Clock,
    deadline: Instant,
    /// The cut-off came or the run was cancelled.
    stopped: Arc<AtomicBool>,
    ok_count: Arc<AtomicUsize>,
    /// The gauges' client counts, when a board is in scope.
    board: Option<crate::gauge::Board>,
}

impl ClientRun {
    /// Runs one client to its end; returns whether the deadline or a cancel cut it off.
    /// `stop` is closed then: it resolves (with an error) once, after which the client
    /// returns, so it is never polled again.
    async fn run(
        self,
        mut client: Box<dyn Client>,
        mut recorder: Recorder,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) -> bool {
        let deadline = self.deadline;
        let mut attempts = 0;
        loop {
            attempts += 1;
            if client.done() {
                return false;
            }
            // `biased`: polled in this order, not a random one (a random draw per select is
            // a cost a tight loop notices; the deadline is checked again just below).
            if let Some(wait) = client.ready() {
                tokio::select! {
                    biased;
                    _ = wait => {}
                    _ = &mut stop => return true,
                }
            }
            if client.done() {
                return false;
            }
            if Instant::now() >= deadline || self.stopped.load(Ordering::Relaxed) {
                return true;
            }
            let kind = client.kind();
            if let Some(board) = &self.board {
                board.add(crate::gauge::CLIENTS_WAITING, 1.0);
            }
            recorder.invoke(Op {
                client: self.id,
                kind: kind.into(),
                start_ms: self.clock.now_ms(),
                end_ms: None,
                outcome: Outcome::Unknown,
            });
            let result = tokio::select! {
                biased;
                r = client.attempt() => Some(r),
                _ = &mut stop => None,
            };
            // Cut off mid-operation: no completion, so it stays unknown.
            let Some(result) = result else {
                // Asked only now: a canceller per operation is a clone a tight loop notices.
                if let Some(t) = client.canceller() {
                    t.cancel().await;
                }
                return true;
            };
            let end_ms = self.clock.now_ms();
            let again = match self.plan {
                Plan::Times(n) => attempts < n,
                _ => false,
            };
            let (outcome, retry_after) = match result {
                Ok(()) if again => {
                    self.ok_count.fetch_add(1, Ordering::Relaxed);
                    (Outcome::Ok, Some(Duration::ZERO))
                }
                Ok(()) => {
                    self.ok_count.fetch_add(1, Ordering::Relaxed);
                    (Outcome::Ok, None)
                }
                Err(e) if again => (Outcome::Error { class: e.class }, Some(Duration::ZERO)),
                Err(e) => {
                    let retry_after = match self.plan {
                        Plan::UntilOk {
                            retry_after,
                            stop_on,
                        } if !stop_on.contains(&e.class.as_str()) => Some(retry_after),
                        _ => None,
                    };
                    (Outcome::Error { class: e.class }, retry_after)
                }
            };
            if let Some(board) = &self.board {
                board.add(crate::gauge::CLIENTS_WAITING, -1.0);
                let done = match outcome {
                    Outcome::Ok => crate::gauge::CLIENTS_OK,
                    _ => crate::gauge::CLIENTS_FAILED,
                };
                board.add(done, 1.0);
            }
            recorder.complete(end_ms, outcome);
            let Some(retry_after) = retry_after else {
                return false;
            };
            if retry_after.is_zero() {
                continue;
            }
            let pause = retry_after.mul_f64(rand::random_range(0.5..1.5));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = &mut stop => return !client.done(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails once, then panics in the middle of its second attempt.
    struct Panicky {
        attempts: usize,
    }

    impl Client for Panicky {
        fn kind(&self) -> &'static str {
            "book"
        }
        fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
            self.attempts += 1;
            let n = self.attempts;
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if n == 1 {
                    return Err(OpError::new(class::LOCK_TIMEOUT));
                }
                panic!("the client's own code broke");
            })
        }
        fn canceller(&self) -> Option<Canceller> {
            None
        }
    }

    struct Fine;

    impl Client for Fine {
        fn kind(&self) -> &'static str {
            "book"
        }
        fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
            Box::pin(async { Ok(()) })
        }
        fn canceller(&self) -> Option<Canceller> {
            None
        }
    }

    #[tokio::test]
    async fn a_client_that_panics_mid_operation_leaves_that_operation_unknown() {
        let clients: Vec<Box<dyn Client>> = vec![Box::new(Fine), Box::new(Panicky { attempts: 0 })];
        let plan = Plan::UntilOk {
            retry_after: Duration::from_millis(1),
            stop_on: &[],
        };
        let driven = drive(
            clients,
            plan,
            Clock::start(),
            Instant::now() + Duration::from_secs(10),
            &CancellationToken::new(),
            Arc::new(AtomicUsize::new(0)),
        )
        .await;
        let h = &driven.history;
        assert!(!driven.cut_off);
        assert_eq!(
            h.lost_clients,
            vec![LostClient {
                client: 1,
                why: "the client's own code broke".into()
            }]
        );
        let of_panicky: Vec<&Outcome> = h
            .ops
            .iter()
            .filter(|o| o.client == 1)
            .map(|o| &o.outcome)
            .collect();
        assert_eq!(
            of_panicky,
            vec![
                &Outcome::Error {
                    class: class::LOCK_TIMEOUT.into()
                },
                &Outcome::Unknown
            ]
        );
        assert_eq!(
            (h.ok("book"), h.failed("book"), h.unknown("book")),
            (1, 1, 1)
        );
        let unknown: Vec<&Op> = h.ops.iter().filter(|o| o.end_ms.is_none()).collect();
        assert!(unknown.len() == 1 && h.is_lost(unknown[0]), "{h:?}");
    }

    #[tokio::test]
    async fn an_operation_in_flight_at_the_deadline_is_unknown_and_not_lost() {
        struct Slow;
        impl Client for Slow {
            fn kind(&self) -> &'static str {
                "book"
            }
            fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(())
                })
            }
            fn canceller(&self) -> Option<Canceller> {
                None
            }
        }
        let driven = drive(
            vec![Box::new(Slow)],
            Plan::Once,
            Clock::start(),
            Instant::now() + Duration::from_millis(20),
            &CancellationToken::new(),
            Arc::new(AtomicUsize::new(0)),
        )
        .await;
        assert!(driven.cut_off);
        assert_eq!(driven.history.unknown("book"), 1);
        assert!(driven.history.lost_clients.is_empty());
        assert!(!driven.history.is_lost(&driven.history.ops[0]));
    }
}
