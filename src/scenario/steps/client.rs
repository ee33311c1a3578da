//! One client of a session going through its steps: waiting for their conditions, running
//! SQL and Redis commands, sleeping, marking critical sections, and being faulted.

use super::{Fault, Resolved};
use crate::check::steps::Section;
use crate::env::postgres::{Canceller, PgTarget, Wire};
use crate::workload::{self, OpError};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_postgres::Client;

use super::observe::probe;
use super::run::*;

/// One client of a session, going through its steps.
pub(super) struct StepClient {
    /// Its session on the server, spoken to directly (see [`Wire`]).
    pub(super) conn: Option<Wire>,
    /// Its Redis connection, for a session with Redis steps.
    pub(super) redis: Option<redis::aio::MultiplexedConnection>,
    /// Put before every key a Redis step names: the run's own keys only.
    pub(super) key_prefix: String,
    /// `${token}`: unique per client and round (made only when a step uses it).
    pub(super) token: String,
    pub(super) uses_token: bool,
    /// Its rounds completed, failed for good and run again: added to the session's when the
    /// client ends (a lock taken per round would slow a tight loop).
    pub(super) tally: crate::check::steps::Rounds,
    /// None for a pool session's client: it holds no connection between steps.
    pub(super) canceller: Option<Canceller>,
    /// A pool session's pool, from which every step checks out a connection.
    pub(super) pool: Option<deadpool_postgres::Pool>,
    pub(super) session: usize,
    pub(super) client: usize,
    pub(super) steps: Vec<Resolved>,
    pub(super) kinds: Vec<&'static str>,
    /// Per step: the conditions of which the first to come true starts it (none: at once).
    pub(super) after: Vec<Vec<super::After>>,
    /// Per step: how long to wait for `after` at most.
    pub(super) patience: Vec<Option<std::time::Duration>>,
    /// Per step: this client's completion of it in the current round is counted (once, even
    /// when a retry runs it again).
    pub(super) counted: Vec<bool>,
    /// Per step: the rounds in which this client settled it (completed, failed for good,
    /// skipped after a failure, or never to run after a fault): what the checker tells stuck
    /// steps from. Added to the session's when the client ends.
    pub(super) settled: Vec<usize>,
    /// Per step: the capture its result goes into (`into`).
    pub(super) into: Vec<Option<String>>,
    /// This client's captures: `${name}` and what was captured (`NULL` for no value).
    pub(super) vars: Vec<(String, String)>,
    /// SQLSTATEs a round is run again on, and how many times at most.
    pub(super) retry: Option<(Vec<String>, usize)>,
    pub(super) retries_left: usize,
    /// This round is a retry: it waits for no condition (they came true the first time).
    pub(super) retrying: bool,
    /// This round ended with a failure (counted already; not a completed round).
    pub(super) failed_round: bool,
    /// Rounds it runs (usize::MAX: until the cut-off).
    pub(super) rounds: usize,
    /// Sent before each step's SQL (through a pooler: the search path and settings).
    pub(super) pos: usize,
    pub(super) round: usize,
    pub(super) done: bool,
    pub(super) shared: Arc<Shared>,
    /// The session's probe, where to run it, and in which schema.
    pub(super) probe: Option<(String, PgTarget, String)>,
    pub(super) probe_app: String,
}

impl StepClient {
    /// Past the last step: another round, or done.
    fn next_round(&mut self) {
        if !std::mem::take(&mut self.failed_round) {
            self.tally.ok += 1;
        }
        self.pos = 0;
        self.round += 1;
        self.shared.round[self.session][self.client].store(self.round, Ordering::Relaxed);
        self.retrying = false;
        self.retries_left = self.retry.as_ref().map_or(0, |r| r.1);
        if self.uses_token {
            self.token = token(
                self.kinds.first().copied().unwrap_or("s"),
                self.client,
                self.round,
            );
        }
        self.counted.fill(false);
        if self.round >= self.rounds {
            self.done = true;
            self.shared.ended[self.session][self.client].store(true, Ordering::Relaxed);
        }
    }

    /// Waits for the current step's conditions, the first to come true (not again in a retry
    /// of the round). In round r a condition is about round r of the session it names, or its
    /// last round if it runs fewer (a session run once: its only one).
    async fn condition(&self) {
        let Some(conds) = self.after.get(self.pos) else {
            return;
        };
        if conds.is_empty() || self.retrying {
            return;
        }
        let patience = self.patience.get(self.pos).copied().flatten();
        let give_up = async {
            match patience {
                Some(p) => tokio::time::sleep(p).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(give_up);
        let mut rx = self.shared.changed.subscribe();
        loop {
            let met = conds.iter().any(|a| {
                let round = self
                    .round
                    .min(self.shared.planned[a.session].saturating_sub(1));
                match a.waiting {
                    true => {
                        self.shared.waiting_seen[a.session][a.step].load(Ordering::Relaxed) > round
                    }
                    false => {
                        // A client of that session that faulted in an earlier round runs no
                        // more: the others are all there is to wait for.
                        let gone = self.shared.faulted_in[a.session]
                            .lock()
                            .map_or(0, |f| f.iter().filter(|r| **r < round).count());
                        let needed = self.shared.current[a.session].len().saturating_sub(gone);
                        self.shared.completed[a.session][a.step]
                            .as_ref()
                            .and_then(|c| c.lock().ok().map(|per| per.get(round)))
                            .unwrap_or(0)
                            >= needed
                    }
                }
            });
            if met {
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = &mut give_up => return,
            }
        }
    }

    /// After a failed step: the round is rolled back and run again when its error is one the
    /// session retries and retries are left (true); else the rest of the round is skipped.
    async fn after_failure(&mut self, e: &OpError) -> bool {
        let kind = self.kinds.get(self.pos).copied().unwrap_or("step");
        let retry = match &self.retry {
            Some((on, _)) => on.contains(&e.class) && self.retries_left > 0,
            None => false,
        };
        if let Some(conn) = self.conn.as_mut() {
            let _ = conn.query("ROLLBACK", false).await;
        }
        if !retry {
            self.complete();
            self.tally.failed += 1;
            self.failed_round = true;
            self.skip_rest();
            return false;
        }
        if let Ok(mut r) = self.shared.retried.lock() {
            *r.entry(kind.to_string()).or_insert(0) += 1;
        }
        self.tally.retries += 1;
        self.retries_left -= 1;
        self.retrying = true;
        self.critical(false, None);
        self.pos = 0;
        true
    }

    /// Runs the sleeps and faults before the next SQL step.
    async fn prepare_next(&mut self) {
        loop {
            if self.done {
                return;
            }
            if self.pos >= self.steps.len() {
                self.next_round();
                continue;
            }
            self.condition().await;
            // Looked at in place: a clone of the step's shared SQL per step is a reference
            // count that every client's core writes.
            match &self.steps[self.pos] {
                Resolved::Sql(_) | Resolved::Redis { .. } => return,
                Resolved::Critical(enter) => {
                    self.critical(*enter, None);
                    self.complete();
                }
                Resolved::Sleep(d) => {
                    tokio::time::sleep(*d).await;
                    self.complete();
                }
                Resolved::Fault(f) => {
                    self.fault(*f);
                    // A step `after` the fault starts once it has struck.
                    self.complete();
                    self.done = true;
                    return;
                }
            }
        }
    }

    /// After a failed step, the rest of the round is skipped: counted as skipped (not stuck),
    /// each marked done for the steps that wait on it, and a critical section it was in left
    /// (the error path gives up what it believed it held).
    fn skip_rest(&mut self) {
        while self.pos < self.steps.len() {
            if let Ok(mut skipped) = self.shared.skipped.lock()
                && let Some(kind) = self.kinds.get(self.pos)
            {
                *skipped.entry(kind.to_string()).or_insert(0) += 1;
            }
            self.complete();
        }
        self.critical(false, None);
    }

    /// The current step is done (completed, skipped or faulted): counted once per round for
    /// the steps that wait on it (a retry runs it again, uncounted).
    fn complete(&mut self) {
        if self.counted.get(self.pos) == Some(&false) {
            self.counted[self.pos] = true;
            self.settled[self.pos] += 1;
            if let Some(Some(c)) = self.shared.completed[self.session].get(self.pos) {
                if let Ok(mut per) = c.lock() {
                    per.add(self.round, (&self.shared.round, &self.shared.ended));
                }
                self.shared.bump();
            }
        }
        self.pos += 1;
    }

    /// Marks entering (or leaving) a critical section, now or `at_ms`.
    fn critical(&self, enter: bool, at_ms: Option<f64>) {
        let Some(window) = self.shared.window.get() else {
            return;
        };
        let at = at_ms.unwrap_or_else(|| window.clock.now_ms());
        let who = format!("{}-{}", self.session, self.client);
        let Ok(mut sections) = self.shared.sections.lock() else {
            return;
        };
        match enter {
            true => sections.push(Section {
                who,
                enter_ms: at,
                leave_ms: None,
            }),
            false => {
                if let Some(open) = sections
                    .iter_mut()
                    .rev()
                    .find(|s| s.who == who && s.leave_ms.is_none())
                {
                    open.leave_ms = Some(at);
                }
            }
        }
    }

    /// A Redis step: the command with the run's prefix on its keys and this round's token,
    /// retried while the reply is not the one wanted, where the step says so.
    async fn redis_step(
        &mut self,
        (words, keys, want, retry_after): (
            Vec<String>,
            Vec<usize>,
            Option<String>,
            Option<Duration>,
        ),
    ) -> Result<(), OpError> {
        let Some(con) = self.redis.as_mut() else {
            return Err(OpError::new(crate::history::class::CONNECTION_CLOSED));
        };
        let mut cmd = redis::cmd(&words[0]);
        for (i, w) in words.iter().enumerate().skip(1) {
            let w = w
                .replace("${token}", &self.token)
                .replace("${client}", &self.client.to_string());
            match keys.contains(&i) {
                true => cmd.arg(format!("{}{w}", self.key_prefix)),
                false => cmd.arg(w),
            };
        }
        loop {
            let reply: redis::Value = cmd.query_async(con).await?;
            let got = reply_text(&reply);
            match (&want, retry_after) {
                (None, _) => return Ok(()),
                (Some(w), _) if w.eq_ignore_ascii_case(&got) => return Ok(()),
                (Some(_), Some(pause)) => tokio::time::sleep(pause).await,
                (Some(_), None) => return Err(OpError::new("redis-unwanted-reply")),
            }
        }
    }

    fn fault(&mut self, fault: Fault) {
        let conn = self.conn.take();
        // The rounds it will not run are settled: not stuck, and not waited for.
        if self.rounds != usize::MAX {
            let left = self.rounds.saturating_sub(self.round + 1);
            for s in &mut self.settled {
                *s += left;
            }
        }
        // The steps after the fault in this round will not run either: settled (not stuck),
        // though whoever waits on them still waits (they never completed).
        for s in self.settled.iter_mut().skip(self.pos + 1) {
            *s += 1;
        }
        if let Ok(mut f) = self.shared.faulted_in[self.session].lock() {
            f.push(self.round);
        }
        self.shared.ended[self.session][self.client].store(true, Ordering::Relaxed);
        // Waiters on this session's later rounds stop waiting for this client.
        self.shared.bump();
        match fault {
            Fault::Freeze => {
                if let (Some(c), Ok(mut frozen)) = (conn, self.shared.frozen.lock()) {
                    frozen.push(c);
                }
            }
            // Dropping the last handle closes the socket: the server ends the session. A
            // dead client believes nothing any more: its critical section ends here.
            Fault::Kill => {
                drop(conn);
                self.redis = None;
                self.critical(false, None);
            }
            // The client is gone; the connection of its last step is back in the pool as it
            // was, inside the transaction it began, for whoever checks it out next.
            Fault::Leak => {
                self.pool = None;
                self.redis = None;
                self.critical(false, None);
            }
        }
        let Some(window) = self.shared.window.get().copied() else {
            return;
        };
        if let Ok(mut seen) = self.shared.seen.lock()
            && let Some(s) = seen.get_mut(self.session)
            && s.fault_ms.is_none()
        {
            s.fault_ms = Some(window.clock.now_ms());
            if let Some((sql, target, schema)) = self.probe.clone() {
                let task = tokio::spawn(probe(
                    (target, self.probe_app.clone(), schema),
                    sql,
                    window,
                    self.shared.clone(),
                    self.session,
                ));
                if let Ok(mut p) = self.shared.probes.lock() {
                    p.push(task);
                }
            }
        }
    }
}

impl StepClient {
    /// The current step, a Redis command.
    async fn redis_attempt(&mut self) -> Result<(), OpError> {
        let Some(Resolved::Redis {
            words,
            keys,
            want,
            retry_after,
        }) = self.steps.get(self.pos)
        else {
            return Ok(());
        };
        let step = (words.clone(), keys.clone(), want.clone(), *retry_after);
        let result = Box::pin(self.redis_step(step)).await;
        if let Err(e) = &result {
            Box::pin(self.after_failure(e)).await;
        } else {
            self.complete();
        }
        result
    }

    /// The current step, SQL: on the client's connection, or on one checked out of its pool.
    async fn sql_step(&mut self) -> Result<(), OpError> {
        let Some(Resolved::Sql(sql)) = self.steps.get(self.pos) else {
            return Ok(());
        };
        // `${client}` and the settings a pooler needs with every step are in it already
        // (see `for_client`); only `${token}` and the captures change from round to round.
        let sql = match sql.contains("${") {
            true => std::borrow::Cow::Owned(fill(sql, &self.token, &self.vars)),
            false => std::borrow::Cow::Borrowed(&**sql),
        };
        let into = self.into.get(self.pos).cloned().flatten();
        self.shared.current[self.session][self.client].store(self.pos, Ordering::Relaxed);
        let result = match (self.conn.as_mut(), &self.pool) {
            (Some(conn), _) => wire_sql(conn, &sql, into.is_some()).await,
            (None, Some(pool)) => Box::pin(pool_sql(pool, &sql, into.is_some())).await,
            (None, None) => Err(OpError::new(crate::history::class::CONNECTION_CLOSED)),
        };
        drop(sql);
        self.shared.current[self.session][self.client].store(IDLE, Ordering::Relaxed);
        match result {
            Ok(got) => {
                if let Some(name) = into {
                    let value = got.unwrap_or_else(|| "NULL".into());
                    match self.vars.iter_mut().find(|(n, _)| *n == name) {
                        Some(v) => v.1 = value,
                        None => self.vars.push((name, value)),
                    }
                }
                self.complete();
                Ok(())
            }
            Err(e) => {
                // A transaction it was in is rolled back, as an application's error path
                // would; then the round is run again, or the rest of it skipped.
                Box::pin(self.after_failure(&e)).await;
                Err(e)
            }
        }
    }
}

/// A step's SQL on a connection checked out for it, given back as it is when the step ends,
/// as an application's pool does; a failed step's transaction is rolled back first.
async fn pool_sql(
    pool: &deadpool_postgres::Pool,
    sql: &str,
    capture: bool,
) -> Result<Option<String>, OpError> {
    let c = pool.get().await?;
    let r = run_sql(&c, sql, capture).await;
    if r.is_err() {
        let _ = c.batch_execute("ROLLBACK").await;
    }
    r
}

impl Drop for StepClient {
    fn drop(&mut self) {
        if let Ok(mut rounds) = self.shared.rounds.lock()
            && let Some(r) = rounds.get_mut(self.session)
        {
            r.ok += self.tally.ok;
            r.failed += self.tally.failed;
            r.retries += self.tally.retries;
        }
        if let Ok(mut settled) = self.shared.settled.lock() {
            for (kind, n) in self.kinds.iter().zip(&self.settled) {
                *settled.entry(kind.to_string()).or_insert(0) += n;
            }
        }
    }
}

impl workload::Client for StepClient {
    fn kind(&self) -> &'static str {
        self.kinds.get(self.pos).copied().unwrap_or("step")
    }

    fn ready(&mut self) -> Option<BoxFuture<'_, ()>> {
        if !self.done && self.pos >= self.steps.len() {
            self.next_round();
        }
        // A statement or a command with nothing to wait for starts now, as `prepare_next`
        // would start it, without a future to allocate.
        let starts = matches!(
            self.steps.get(self.pos),
            Some(Resolved::Sql(_) | Resolved::Redis { .. })
        );
        let waits = !self.retrying && self.after.get(self.pos).is_some_and(|c| !c.is_empty());
        match self.done || (starts && !waits) {
            true => None,
            false => Some(Box::pin(self.prepare_next())),
        }
    }

    fn done(&self) -> bool {
        self.done
    }

    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        // Each kind of step its own future, boxed at its own size: one future for every kind
        // was as large as the largest (a pool checkout, a Redis command), and a tight loop of
        // one-row UPDATEs allocated and copied all of it with every step.
        match self.steps.get(self.pos) {
            Some(Resolved::Sql(_)) => Box::pin(self.sql_step()),
            Some(Resolved::Redis { .. }) => Box::pin(self.redis_attempt()),
            _ => Box::pin(async { Ok(()) }),
        }
    }

    fn canceller(&self) -> Option<Canceller> {
        self.canceller.clone()
    }
}

/// `${token}` and the client's captures filled in, in one pass (a captured value that holds
/// `${…}` stays as it is).
fn fill(sql: &str, token: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(sql.len() + 32);
    let mut rest = sql;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let name = &after[..end];
        match (name, vars.iter().find(|(n, _)| n == name)) {
            ("token", _) => out.push_str(token),
            (_, Some((_, value))) => out.push_str(value),
            _ => out.push_str(&rest[i..i + 2 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A step's SQL; with a capture, the first column of the last row it returned, as SQL text
/// (a quoted literal, or NULL).
async fn run_sql(c: &Client, sql: &str, capture: bool) -> Result<Option<String>, OpError> {
    if !capture {
        return c
            .batch_execute(sql)
            .await
            .map(|()| None)
            .map_err(OpError::from);
    }
    let mut last = None;
    for m in c.simple_query(sql).await.map_err(OpError::from)? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            last = Some(match row.get(0) {
                Some(v) => crate::env::postgres::sql::literal(v),
                None => "NULL".into(),
            });
        }
    }
    Ok(last)
}

/// A step's SQL on the client's own session; with a capture, as [`run_sql`] gives it.
async fn wire_sql(c: &mut Wire, sql: &str, capture: bool) -> Result<Option<String>, OpError> {
    let last = c.query(sql, capture).await.map_err(OpError::from)?;
    Ok(last.map(|v| match v {
        Some(v) => crate::env::postgres::sql::literal(&v),
        None => "NULL".into(),
    }))
}

/// `${token}` of a client's round: unique in the run.
pub(super) fn token(session: &str, client: usize, round: usize) -> String {
    format!("{session}-{client}-{round}-{:08x}", rand::random::<u32>())
}

/// A Redis reply as text to compare with `want`: `OK`, `nil`, an integer, a string.
pub(super) fn reply_text(v: &redis::Value) -> String {
    match v {
        redis::Value::Nil => "nil".into(),
        redis::Value::Okay => "OK".into(),
        redis::Value::Int(n) => n.to_string(),
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Boolean(b) => i32::from(*b).to_string(),
        redis::Value::Double(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_fill_in_one_pass_and_literals_survive_either_string_mode() {
        let vars = vec![
            ("a".to_string(), "'${b}'".to_string()),
            ("b".to_string(), "'x'".to_string()),
        ];
        assert_eq!(
            fill("SELECT ${a}, ${b}, ${token}, ${other}", "t1", &vars),
            "SELECT '${b}', 'x', t1, ${other}"
        );
        let literal = crate::env::postgres::sql::literal;
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b"), "E'a\\\\b'");
    }
}
