//! Running one variant of a step file: a schema of the variant's own, the `[setup]` SQL, every
//! session's clients driven through their steps in the order their conditions allow, the
//! server's view sampled (who waits on a lock, who sits idle in a transaction), faults and
//! their probes, then the `[metrics]` queries, and the schema dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_postgres::Client;

use super::{Connect, Fault, Resolved, StepVariant};
use crate::check::steps::{Observations, Section, SessionSeen};
use crate::env::postgres::{Canceller, PgTarget, Sql as _, like_prefix};
use crate::history::Clock;
use crate::scenario::{VariantCtx, VariantRun, Window};
use crate::workload::{self, OpError, Plan};

/// No current step.
const IDLE: usize = usize::MAX;

/// What the clients, the sampler and the probes share during a run.
struct Shared {
    /// Per session and step: clients that completed it in their first round.
    completed: Vec<Vec<AtomicUsize>>,
    /// Per session and step: a client of the session was seen waiting on a lock in it.
    waiting_seen: Vec<Vec<AtomicBool>>,
    /// Per session and client: the step it is in (IDLE between steps).
    current: Vec<Vec<AtomicUsize>>,
    /// Bumped whenever a condition may have come true.
    changed: tokio::sync::watch::Sender<u64>,
    /// Connections of frozen sessions, kept open until the run ends.
    frozen: Mutex<Vec<Client>>,
    seen: Mutex<Vec<SessionSeen>>,
    waited_ms: Mutex<BTreeMap<String, f64>>,
    probes: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The run's clock and cut-off, once they start (after every client has connected).
    window: std::sync::OnceLock<Window>,
    sections: Mutex<Vec<Section>>,
}

impl Shared {
    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

pub(super) async fn run(v: &StepVariant, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let schema = format!(
        "{}_s{:06x}",
        ctx.env.pg.schema,
        rand::random::<u32>() & 0xff_ffff
    );
    let admin = ctx.env.direct.connect(&ctx.app("admin")).await?;
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\""
        ))
        .await
        .context("could not create the variant's schema")?;
    let result = run_in(v, ctx, &admin, &schema).await;
    let _ = ctx.terminate_sessions("w/").await;
    let _ = ctx.terminate_sessions("probe").await;
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .context("could not drop the variant's schema")?;
    result
}

async fn run_in(
    v: &StepVariant,
    ctx: &VariantCtx<'_>,
    admin: &Client,
    schema: &str,
) -> anyhow::Result<VariantRun> {
    for (i, stmt) in statements(&v.setup).iter().enumerate() {
        admin.batch_execute(stmt).await.with_context(|| {
            format!(
                "[setup] statement {} (`{}`) failed",
                i + 1,
                stmt.trim().chars().take(60).collect::<String>()
            )
        })?;
    }
    let shared = Arc::new(shared(v));
    let clients = connect(v, ctx, schema, &shared).await?;
    let window = ctx.window(v.deadline);
    let _ = shared.window.set(window);
    let sampler = sample(v, ctx, window.clock, &shared).await?;
    let driven = ctx
        .drive(clients, Plan::Times(usize::MAX), &window, " steps done")
        .await;
    let probes: Vec<_> = shared
        .probes
        .lock()
        .map(|mut p| p.drain(..).collect())
        .unwrap_or_default();
    for p in probes {
        let _ = p.await;
    }
    let end_ms = window.clock.now_ms();
    sampler.finish().await;
    // Frozen sessions end with the run: what they held is freed for the next variant.
    ctx.terminate_sessions("w/").await?;
    if let Ok(mut f) = shared.frozen.lock() {
        f.clear();
    }
    let mut queries = BTreeMap::new();
    for (name, sql) in &v.queries {
        queries.insert(
            name.clone(),
            query_number(admin, sql)
                .await
                .with_context(|| format!("[metrics] `{name}` failed"))?,
        );
    }
    let obs = Observations {
        layout: v.layout.clone(),
        seen: shared.seen.lock().map(|s| s.clone()).unwrap_or_default(),
        waited_ms: shared
            .waited_ms
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default(),
        queries,
        cut_off: driven.cut_off,
        end_ms,
        sections: shared
            .sections
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default(),
    };
    Ok(VariantRun::checked(
        &window.clock,
        driven.history,
        crate::check::Input::Steps(Box::new(obs)),
    ))
}

fn shared(v: &StepVariant) -> Shared {
    Shared {
        completed: v
            .sessions
            .iter()
            .map(|s| s.steps.iter().map(|_| AtomicUsize::new(0)).collect())
            .collect(),
        waiting_seen: v
            .sessions
            .iter()
            .map(|s| s.steps.iter().map(|_| AtomicBool::new(false)).collect())
            .collect(),
        current: v
            .sessions
            .iter()
            .map(|s| (0..s.clients).map(|_| AtomicUsize::new(IDLE)).collect())
            .collect(),
        changed: tokio::sync::watch::Sender::new(0),
        frozen: Mutex::new(Vec::new()),
        seen: Mutex::new(vec![SessionSeen::default(); v.sessions.len()]),
        waited_ms: Mutex::new(BTreeMap::new()),
        probes: Mutex::new(Vec::new()),
        window: std::sync::OnceLock::new(),
        sections: Mutex::new(Vec::new()),
    }
}

/// Every client of every session, connected and set up before the clock starts.
async fn connect(
    v: &StepVariant,
    ctx: &VariantCtx<'_>,
    schema: &str,
    shared: &Arc<Shared>,
) -> anyhow::Result<Vec<Box<dyn workload::Client>>> {
    let mut clients: Vec<Box<dyn workload::Client>> = Vec::new();
    for (si, (s, def)) in v.sessions.iter().zip(&v.spec.sessions).enumerate() {
        let target = match def.connect {
            Connect::Direct => &ctx.env.direct,
            Connect::Pooler => ctx.pg(),
        };
        // The variant's settings, then the session's own (which win).
        let mut settings = ctx.variant.settings.clone();
        settings.extend(s.settings.iter().cloned());
        let mut prefix = format!("SET search_path TO \"{schema}\"; ");
        for (k, val) in &settings {
            let val = super::substitute(val, &ctx.variant.params).map_err(anyhow::Error::msg)?;
            prefix.push_str(&format!("SET {k} = '{}'; ", val.replace('\'', "''")));
        }
        let redis = match ctx.env.redis.as_ref() {
            Some(r)
                if v.spec.sessions[si]
                    .steps
                    .iter()
                    .any(|t| matches!(t.action, super::Action::Redis(_))) =>
            {
                Some(r)
            }
            _ => None,
        };
        let connects = (0..s.clients).map(|i| target.connect_named(ctx, &def.name, i));
        for (i, c) in futures::future::join_all(connects)
            .await
            .into_iter()
            .enumerate()
        {
            let conn = c.with_context(|| format!("could not connect session {}", def.name))?;
            // Straight to the server, a session's settings are set once; through a pooler,
            // with every step, on whichever server connection runs it.
            let per_step = match def.connect {
                Connect::Direct => {
                    conn.batch_execute(&prefix)
                        .await
                        .with_context(|| format!("session {}'s settings were refused", def.name))?;
                    String::new()
                }
                Connect::Pooler => prefix.clone(),
            };
            let redis = match redis {
                Some(r) => Some(r.connect().await?),
                None => None,
            };
            clients.push(Box::new(StepClient {
                redis,
                key_prefix: ctx.redis_key("").unwrap_or_default(),
                token: token(&def.name, i, 0),
                canceller: Canceller::new(&conn, target),
                conn: Some(conn),
                session: si,
                client: i,
                steps: s.steps.clone(),
                kinds: def.steps.iter().map(|t| t.kind).collect(),
                after: def.steps.iter().map(|t| t.after).collect(),
                once: def.once,
                per_step,
                pos: 0,
                round: 0,
                done: false,
                shared: shared.clone(),
                probe: s
                    .probe
                    .clone()
                    .map(|p| (p, ctx.env.direct.clone(), schema.to_string())),
                probe_app: ctx.app(&format!("probe-{}", def.name)),
            }));
        }
    }
    Ok(clients)
}

impl PgTarget {
    /// A session's client `i`, named `…/w/SESSION-i` so the sampler can tell whose it is.
    async fn connect_named(
        &self,
        ctx: &VariantCtx<'_>,
        session: &str,
        i: usize,
    ) -> anyhow::Result<Client> {
        self.connect(&ctx.app(&format!("w/{session}-{i}"))).await
    }
}

/// One client of a session, going through its steps.
struct StepClient {
    conn: Option<Client>,
    /// Its Redis connection, for a session with Redis steps.
    redis: Option<redis::aio::MultiplexedConnection>,
    /// Put before every key a Redis step names: the run's own keys only.
    key_prefix: String,
    /// `${token}`: unique per client and round.
    token: String,
    canceller: Canceller,
    session: usize,
    client: usize,
    steps: Vec<Resolved>,
    kinds: Vec<&'static str>,
    after: Vec<Option<super::After>>,
    once: bool,
    /// Sent before each step's SQL (through a pooler: the search path and settings).
    per_step: String,
    pos: usize,
    round: usize,
    done: bool,
    shared: Arc<Shared>,
    /// The session's probe, where to run it, and in which schema.
    probe: Option<(String, PgTarget, String)>,
    probe_app: String,
}

impl StepClient {
    /// Past the last step: another round, or done.
    fn next_round(&mut self) {
        self.pos = 0;
        self.round += 1;
        self.token = token(
            self.kinds.first().copied().unwrap_or("s"),
            self.client,
            self.round,
        );
        if self.once {
            self.done = true;
        }
    }

    /// Waits for the current step's condition (first round only).
    async fn condition(&self) {
        let Some(Some(a)) = self.after.get(self.pos).copied() else {
            return;
        };
        if self.round > 0 {
            return;
        }
        let mut rx = self.shared.changed.subscribe();
        loop {
            let met = match a.waiting {
                true => self.shared.waiting_seen[a.session][a.step].load(Ordering::Relaxed),
                false => {
                    let needed = self.shared.current[a.session].len();
                    self.shared.completed[a.session][a.step].load(Ordering::Relaxed) >= needed
                }
            };
            if met || rx.changed().await.is_err() {
                return;
            }
        }
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
            match self.steps[self.pos].clone() {
                Resolved::Sql(_) | Resolved::Redis { .. } => return,
                Resolved::Critical(enter) => {
                    self.critical(enter, None);
                    self.complete();
                }
                Resolved::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    self.complete();
                }
                Resolved::Fault(f) => {
                    self.fault(f);
                    self.done = true;
                    return;
                }
            }
        }
    }

    fn complete(&mut self) {
        if self.round == 0
            && let Some(c) = self.shared.completed[self.session].get(self.pos)
        {
            c.fetch_add(1, Ordering::Relaxed);
            self.shared.bump();
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
            let w = w.replace("${token}", &self.token);
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

impl workload::Client for StepClient {
    fn kind(&self) -> &'static str {
        self.kinds.get(self.pos).copied().unwrap_or("step")
    }

    fn ready(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.prepare_next())
    }

    fn done(&self) -> bool {
        self.done
    }

    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(async move {
            let sql = match self.steps.get(self.pos).cloned() {
                Some(Resolved::Sql(sql)) => sql,
                Some(Resolved::Redis {
                    words,
                    keys,
                    want,
                    retry_after,
                }) => {
                    let result = self.redis_step((words, keys, want, retry_after)).await;
                    self.complete();
                    if result.is_err() {
                        self.pos = self.steps.len();
                    }
                    return result;
                }
                _ => return Ok(()),
            };
            let sql = sql.replace("${token}", &self.token);
            let Some(conn) = &self.conn else {
                return Err(OpError::new(crate::history::class::CONNECTION_CLOSED));
            };
            self.shared.current[self.session][self.client].store(self.pos, Ordering::Relaxed);
            let result = conn.batch_execute(&format!("{}{sql}", self.per_step)).await;
            self.shared.current[self.session][self.client].store(IDLE, Ordering::Relaxed);
            match result {
                Ok(()) => {
                    self.complete();
                    Ok(())
                }
                Err(e) => {
                    // The rest of the round is skipped: a transaction it was in is rolled
                    // back, as an application's error path would.
                    let e = OpError::from(e);
                    let _ = conn.batch_execute("ROLLBACK").await;
                    self.complete();
                    self.pos = self.steps.len();
                    Err(e)
                }
            }
        })
    }

    fn canceller(&self) -> Option<Canceller> {
        Some(self.canceller.clone())
    }
}

/// `${token}` of a client's round: unique in the run.
fn token(session: &str, client: usize, round: usize) -> String {
    format!("{session}-{client}-{round}-{:08x}", rand::random::<u32>())
}

/// A Redis reply as text to compare with `want`: `OK`, `nil`, an integer, a string.
fn reply_text(v: &redis::Value) -> String {
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

/// A faulted session's probe: from a session of its own, tries the probe's SQL every 10 ms in
/// a transaction it rolls back, until it succeeds (what the faulted session held is free) or
/// the cut-off.
async fn probe(
    (target, app, schema): (PgTarget, String, String),
    sql: String,
    window: Window,
    shared: Arc<Shared>,
    session: usize,
) {
    let Ok(c) = target.connect(&app).await else {
        return;
    };
    if c.batch_execute(&format!("SET search_path TO \"{schema}\""))
        .await
        .is_err()
    {
        return;
    }
    while Instant::now() < window.deadline {
        let got = c.batch_execute(&format!("BEGIN; {sql}")).await.is_ok();
        let _ = c.batch_execute("ROLLBACK").await;
        if got {
            if let Ok(mut seen) = shared.seen.lock()
                && let Some(s) = seen.get_mut(session)
            {
                s.freed_ms = Some(window.clock.now_ms());
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The server's view every 10 ms: which clients wait on a lock or sit idle in a transaction.
/// It feeds `:waiting` conditions, each step's `waited_ms` and each session's peaks.
async fn sample(
    v: &StepVariant,
    ctx: &VariantCtx<'_>,
    clock: Clock,
    shared: &Arc<Shared>,
) -> anyhow::Result<crate::observe::Watch<()>> {
    let c = ctx.env.direct.connect(&ctx.app("observer")).await?;
    let prefix = ctx.app("w/");
    let names: Vec<(String, usize)> = v
        .spec
        .sessions
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("{prefix}{}-", s.name), i))
        .collect();
    let kinds: Vec<Vec<&'static str>> = v
        .spec
        .sessions
        .iter()
        .map(|s| s.steps.iter().map(|t| t.kind).collect())
        .collect();
    let shared = shared.clone();
    let like = like_prefix(&prefix);
    Ok(crate::observe::Watch::spawn(move |stop| async move {
        let stmt = "SELECT application_name, coalesce(wait_event_type = 'Lock', false), \
                           state = 'idle in transaction', \
                           extract(epoch FROM clock_timestamp() - state_change)::float8 * 1000 \
                    FROM pg_stat_get_activity(NULL) WHERE application_name LIKE $1";
        let mut last = clock.now_ms();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(rows) = c.rows(stmt, &[&like]).await else {
                continue;
            };
            let now = clock.now_ms();
            let dt = (now - last).min(50.0);
            last = now;
            let mut waiters = vec![0i64; names.len()];
            let mut bumped = false;
            for row in rows {
                let app: String = row.get(0);
                let Some((session, client)) = names.iter().find_map(|(p, i)| {
                    app.strip_prefix(p.as_str())
                        .and_then(|n| n.parse::<usize>().ok())
                        .map(|c| (*i, c))
                }) else {
                    continue;
                };
                let (waiting, idle_tx): (bool, Option<bool>) = (row.get(1), row.get(2));
                let idle_ms: Option<f64> = row.get(3);
                let step = shared
                    .current
                    .get(session)
                    .and_then(|cs| cs.get(client))
                    .map_or(IDLE, |c| c.load(Ordering::Relaxed));
                if waiting {
                    waiters[session] += 1;
                    if step != IDLE {
                        if !shared.waiting_seen[session][step].swap(true, Ordering::Relaxed) {
                            bumped = true;
                        }
                        if let Ok(mut w) = shared.waited_ms.lock() {
                            *w.entry(kinds[session][step].to_string()).or_insert(0.0) += dt;
                        }
                    }
                }
                if idle_tx == Some(true)
                    && let (Some(ms), Ok(mut seen)) = (idle_ms, shared.seen.lock())
                    && let Some(s) = seen.get_mut(session)
                {
                    s.idle_in_tx_max_ms = s.idle_in_tx_max_ms.max(ms);
                }
            }
            if let Ok(mut seen) = shared.seen.lock() {
                for (s, n) in seen.iter_mut().zip(&waiters) {
                    s.lock_waiters_max = s.lock_waiters_max.max(*n);
                }
            }
            if bumped {
                shared.bump();
            }
        }
    }))
}

/// A query's first column of its first row as a number (true/false as 1/0; NULL as none).
async fn query_number(c: &Client, sql: &str) -> anyhow::Result<Option<f64>> {
    let messages = c.simple_query(sql).await?;
    for m in messages {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            return Ok(match row.get(0) {
                None => None,
                Some("t") => Some(1.0),
                Some("f") => Some(0.0),
                Some(text) => Some(
                    text.trim()
                        .parse::<f64>()
                        .with_context(|| format!("`{text}` is not a number"))?,
                ),
            });
        }
    }
    anyhow::bail!("it returned no row")
}

/// SQL split into its statements at semicolons outside quotes, dollar quotes and comments, so
/// a failing one can be named.
pub(super) fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' => {
                cur.push(c);
                i += 1;
                while i < chars.len() {
                    cur.push(chars[i]);
                    i += 1;
                    if chars[i - 1] == c {
                        break;
                    }
                }
                continue;
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    cur.push(chars[i]);
                    i += 1;
                }
                continue;
            }
            '$' => {
                // A dollar quote: $tag$ … $tag$.
                let tag_end = chars[i + 1..].iter().position(|c| *c == '$');
                if let Some(len) = tag_end
                    && chars[i + 1..i + 1 + len]
                        .iter()
                        .all(|c| c.is_alphanumeric() || *c == '_')
                {
                    let tag: String = chars[i..i + len + 2].iter().collect();
                    let rest: String = chars[i + len + 2..].iter().collect();
                    let close = rest.find(&tag).map_or(rest.len(), |p| p + tag.len());
                    cur.push_str(&tag);
                    cur.push_str(&rest[..close]);
                    i += len + 2 + rest[..close].chars().count();
                    continue;
                }
                cur.push(c);
            }
            ';' => {
                if !cur.trim().is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
        i += 1;
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_dollar_quotes() {
        let sql = "CREATE TABLE t (a text DEFAULT ';'); -- a ; comment\n\
                   CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n\
                   INSERT INTO t VALUES ('x;y')";
        let s = statements(sql);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s[1].contains("$$ SELECT 1; $$"), "{s:?}");
        assert!(s[2].contains("'x;y'"), "{s:?}");
    }
}
