//! The concurrent client driver: one loop for every scenario, parameterised by what a client
//! does. Clients only record; the history is assembled when they are done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_postgres::{CancelToken, NoTls};
use tokio_util::sync::CancellationToken;

use crate::history::{Clock, History, Op, Outcome};

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
        let class = match e.code() {
            Some(code) => code.code().to_string(),
            None if e.is_closed() => "connection-closed".to_string(),
            None => "client".to_string(),
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
            deadpool_postgres::PoolError::Timeout(_) => OpError::new("pool-timeout"),
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            _ => OpError::new("pool"),
        }
    }
}

/// One simulated client.
pub trait Client: Send + 'static {
    /// What an operation is called in the history, e.g. `book`.
    fn kind(&self) -> &'static str;
    /// One operation, start to finish.
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>>;
    /// Cancels the statement in flight on the server: dropping the future would not.
    fn cancel_token(&self) -> Option<CancelToken>;
}

/// What a client does after an attempt. Every client stops after its first success.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// One attempt per client, whatever its outcome.
    Once,
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

/// Runs every client until it is done, the deadline passes, or `cancel` fires.
/// An operation in flight at that moment is recorded as unknown and cancelled on the server.
pub async fn drive(
    clients: Vec<Box<dyn Client>>,
    plan: Plan,
    clock: Clock,
    deadline: Instant,
    cancel: &CancellationToken,
    ok_count: Arc<AtomicUsize>,
) -> Driven {
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(id, client)| {
            let cancel = cancel.clone();
            let ok_count = ok_count.clone();
            tokio::spawn(run_client(
                id, client, plan, clock, deadline, cancel, ok_count,
            ))
        })
        .collect();
    let mut history = History::default();
    let mut cut_off = false;
    for t in tasks {
        if let Ok((ops, was_cut)) = t.await {
            history.ops.extend(ops);
            cut_off |= was_cut;
        }
    }
    history
        .ops
        .sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    Driven { history, cut_off }
}

async fn run_client(
    id: usize,
    mut client: Box<dyn Client>,
    plan: Plan,
    clock: Clock,
    deadline: Instant,
    cancel: CancellationToken,
    ok_count: Arc<AtomicUsize>,
) -> (Vec<Op>, bool) {
    let mut ops = Vec::new();
    let kind = client.kind();
    loop {
        if Instant::now() >= deadline || cancel.is_cancelled() {
            return (ops, true);
        }
        let start_ms = clock.now_ms();
        let token = client.cancel_token();
        let result = tokio::select! {
            r = client.attempt() => Some(r),
            _ = tokio::time::sleep_until(deadline) => None,
            _ = cancel.cancelled() => None,
        };
        let Some(result) = result else {
            ops.push(Op {
                client: id,
                kind,
                start_ms,
                end_ms: None,
                outcome: Outcome::Unknown,
            });
            if let Some(t) = token {
                let _ = t.cancel_query(NoTls).await;
            }
            return (ops, true);
        };
        let end_ms = Some(clock.now_ms());
        match result {
            Ok(()) => {
                ops.push(Op {
                    client: id,
                    kind,
                    start_ms,
                    end_ms,
                    outcome: Outcome::Ok,
                });
                ok_count.fetch_add(1, Ordering::Relaxed);
                return (ops, false);
            }
            Err(e) => {
                let retry_after = match plan {
                    Plan::UntilOk {
                        retry_after,
                        stop_on,
                    } if !stop_on.contains(&e.class.as_str()) => Some(retry_after),
                    _ => None,
                };
                ops.push(Op {
                    client: id,
                    kind,
                    start_ms,
                    end_ms,
                    outcome: Outcome::Error { class: e.class },
                });
                let Some(retry_after) = retry_after else {
                    return (ops, false);
                };
                let pause = retry_after.mul_f64(rand::random_range(0.5..1.5));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = cancel.cancelled() => {}
                }
            }
        }
    }
}
