//! A tenant of the pooler: a client whose session-level state (a prepared statement, a SET,
//! an advisory lock, a LISTEN) lands on whichever server connection the pooler hands it.

use crate::check::pooler::{Seen, Settings, kind};
use crate::env::postgres::PgTarget;
use crate::env::postgres::Sql as _;
use crate::workload::{self, OpError};
use futures::StreamExt;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::*;

/// One client: client 0 (the one whose state strays) or a tenant.
pub(super) struct Member {
    pub(super) id: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) target: PgTarget,
    pub(super) app: String,
    /// Startup options (`-c plan_cache_mode=…`), if the variant sends them.
    pub(super) options: Option<String>,
    pub(super) conn: Option<Arc<Client>>,
    /// Whether this client's driver believes its statement is prepared on "its" connection.
    pub(super) prepared: bool,
    /// The lock this client believes it holds (an index into the beliefs).
    pub(super) belief: Option<usize>,
    pub(super) round: usize,
}

/// Where a connection's notifications go.
#[derive(Clone, Copy)]
pub(super) enum Sink {
    Listener,
    Stray,
}

impl Member {
    /// Connects on first use; a refused startup is this operation's failure.
    async fn conn(&mut self, sink: Sink) -> Result<Arc<Client>, OpError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let mut cfg = self
            .target
            .config(&self.app)
            .map_err(|_| OpError::new(crate::history::class::CLIENT))?;
        if let Some(o) = &self.options {
            cfg.options(o);
        }
        let (client, mut connection) = cfg.connect(NoTls).await?;
        let (received, misdelivered) = (
            self.shared.received.clone(),
            self.shared.misdelivered.clone(),
        );
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let AsyncMessage::Notification(n) = m {
                    match sink {
                        Sink::Listener => {
                            if let Ok(mut r) = received.lock() {
                                r.insert(n.payload().to_string());
                            }
                        }
                        Sink::Stray => {
                            misdelivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
        let client = Arc::new(client);
        if let Ok(mut all) = self.shared.conns.lock() {
            all.push(client.clone());
        }
        self.conn = Some(client.clone());
        Ok(client)
    }

    /// What the server shows this transaction: its backend, its settings, and the advisory
    /// locks on the scenario's key that its backend already holds.
    async fn look(&self, c: &Client) -> Result<(), OpError> {
        let (k1, k2) = self.shared.names.key;
        let row = c
            .one(
                "SELECT pg_backend_pid(), current_setting('statement_timeout'), \
                        current_setting('TimeZone'), current_setting('plan_cache_mode'), \
                        (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                           AND pid = pg_backend_pid() AND classid = ($1::bigint)::oid \
                           AND objid = ($2::bigint)::oid AND objsubid = 2)",
                &[&k1, &k2],
            )
            .await?;
        let seen = Seen {
            client: self.id,
            backend_pid: row.get(0),
            settings: Settings {
                statement_timeout: row.get(1),
                timezone: row.get(2),
                plan_cache_mode: row.get(3),
            },
            locks_held: row.get(4),
            believed_holding: self.belief.is_some(),
        };
        if let Ok(mut s) = self.shared.seen.lock() {
            s.push(seen);
        }
        Ok(())
    }

    /// The statement a booking runs: through the driver's named statement, or the unnamed one.
    async fn statement(&mut self, c: &Client) -> Result<(), OpError> {
        let name = &self.shared.names.statement;
        if !self.shared.named {
            c.one("SELECT $1::int + 1", &[&(self.id as i32)]).await?;
            return Ok(());
        }
        if !self.prepared {
            // A driver prepares on first use, in a round trip of its own, and remembers it did.
            c.batch_execute(&format!("PREPARE {name} (int) AS SELECT $1 + 1"))
                .await?;
            self.prepared = true;
        }
        c.batch_execute(&format!("EXECUTE {name} ({})", self.id))
            .await?;
        Ok(())
    }

    /// Client 0's move, alone, before the rounds.
    async fn open(&mut self) -> Result<(), OpError> {
        let shared = self.shared.clone();
        let sink = match shared.pitfall {
            Pitfall::ListenNotify => Sink::Listener,
            _ => Sink::Stray,
        };
        let c = self.conn(sink).await?;
        match shared.pitfall {
            Pitfall::PreparedStatements => self.statement(&c).await,
            Pitfall::SessionSettings => {
                let local = if shared.set_session { "" } else { " LOCAL" };
                c.batch_execute(&format!(
                    "BEGIN; SET{local} statement_timeout = '{}'; SET{local} TimeZone = '{}'",
                    shared.set_timeout, FOREIGN_TIMEZONE
                ))
                .await?;
                let looked = self.look(&c).await;
                let end = if looked.is_ok() { "COMMIT" } else { "ROLLBACK" };
                c.batch_execute(end).await?;
                looked
            }
            Pitfall::AdvisoryLocks => {
                let (k1, k2) = shared.names.key;
                c.batch_execute("BEGIN").await?;
                let taken = match shared.lock_session {
                    true => {
                        c.exec("SELECT pg_advisory_lock($1::int, $2::int)", &[&k1, &k2])
                            .await
                    }
                    false => {
                        c.exec(
                            "SELECT pg_advisory_xact_lock($1::int, $2::int)",
                            &[&k1, &k2],
                        )
                        .await
                    }
                };
                if let Err(e) = taken {
                    let _ = c.batch_execute("ROLLBACK").await;
                    return Err(e.into());
                }
                self.belief = shared.believe(self.id);
                if !shared.work.is_zero() {
                    c.exec("SELECT pg_sleep($1)", &[&shared.work.as_secs_f64()])
                        .await?;
                }
                if !shared.lock_session {
                    // A transaction lock ends with its transaction: the client stops counting
                    // on it when it sends COMMIT (the server frees it a moment later).
                    shared.let_go(self.belief.take());
                }
                c.batch_execute("COMMIT").await?;
                Ok(())
            }
            Pitfall::ListenNotify => {
                c.batch_execute(&format!("LISTEN \"{}\"", shared.names.channel))
                    .await?;
                Ok(())
            }
        }
    }

    /// Client 0's closing move: the session lock's unlock, in a request of its own.
    async fn close(&mut self) -> Result<(), OpError> {
        let shared = self.shared.clone();
        if shared.pitfall != Pitfall::AdvisoryLocks || self.belief.is_none() {
            return Ok(());
        }
        let c = self.conn(Sink::Stray).await?;
        // The application stops counting on the lock as it asks to release it.
        shared.let_go(self.belief.take());
        self.unlock(&c).await
    }

    async fn unlock(&self, c: &Client) -> Result<(), OpError> {
        let (k1, k2) = self.shared.names.key;
        let released: bool = c
            .one("SELECT pg_advisory_unlock($1::int, $2::int)", &[&k1, &k2])
            .await?
            .get(0);
        if !released {
            self.shared.failed_unlocks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One tenant's round: a transaction held open until every tenant is inside its own.
    async fn round(&mut self) -> Result<(), OpError> {
        let r = self.round;
        self.round += 1;
        let shared = self.shared.clone();
        let c = match self.conn(Sink::Stray).await {
            Ok(c) => c,
            Err(e) => {
                shared.gates.skip(r, r + 1);
                return Err(e);
            }
        };
        if shared.pitfall == Pitfall::PreparedStatements
            && shared.named
            && !self.prepared
            && let Err(e) = self.statement(&c).await
        {
            shared.gates.skip(r, r + 1);
            return Err(e);
        }
        if let Err(e) = c.batch_execute("BEGIN").await {
            shared.gates.skip(r, r + 1);
            return Err(e.into());
        }
        let inside = self.inside(&c).await;
        // Failed or not, the transaction stays open to the gate: every tenant holds its
        // server connection at once, so every server connection serves someone this round.
        shared.gates.pass(r).await;
        if !shared.lock_session {
            // As for client 0: the transaction lock is let go as COMMIT is sent.
            shared.let_go(self.belief.take());
        }
        let end = match &inside {
            Ok(_) => c.batch_execute("COMMIT").await,
            Err(_) => c.batch_execute("ROLLBACK").await,
        };
        let took_lock = inside?;
        end?;
        if took_lock && shared.lock_session {
            // The application's unlock, after its transaction: wherever the pooler sends it.
            shared.let_go(self.belief.take());
            self.unlock(&c).await?;
        }
        if shared.pitfall == Pitfall::ListenNotify {
            let payload = format!("{}/{r}", self.id);
            c.exec(
                "SELECT pg_notify($1, $2)",
                &[&shared.names.channel, &payload],
            )
            .await?;
            shared.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The transaction's body; returns whether it took the advisory lock.
    async fn inside(&mut self, c: &Client) -> Result<bool, OpError> {
        let shared = self.shared.clone();
        self.look(c).await?;
        let mut took = false;
        match shared.pitfall {
            Pitfall::PreparedStatements => self.statement(c).await?,
            Pitfall::AdvisoryLocks => {
                let (k1, k2) = shared.names.key;
                let sql = match shared.lock_session {
                    true => "SELECT pg_try_advisory_lock($1::int, $2::int)",
                    false => "SELECT pg_try_advisory_xact_lock($1::int, $2::int)",
                };
                took = c.one(sql, &[&k1, &k2]).await?.get(0);
                if took {
                    self.belief = shared.believe(self.id);
                }
            }
            Pitfall::SessionSettings | Pitfall::ListenNotify => {}
        }
        if !shared.work.is_zero() {
            c.exec("SELECT pg_sleep($1)", &[&shared.work.as_secs_f64()])
                .await?;
        }
        Ok(took)
    }
}

/// Client 0 as a workload client for one phase, sharing its connection across phases.
pub(super) struct Phase {
    pub(super) member: Arc<tokio::sync::Mutex<Member>>,
    pub(super) closing: bool,
}

impl workload::Client for Phase {
    fn kind(&self) -> &'static str {
        match self.closing {
            true => kind::CLOSE,
            false => kind::OPEN,
        }
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(async move {
            let mut m = self.member.lock().await;
            match self.closing {
                true => m.close().await,
                false => m.open().await,
            }
        })
    }
    fn canceller(&self) -> Option<crate::env::postgres::Canceller> {
        None
    }
}

impl workload::Client for Member {
    fn kind(&self) -> &'static str {
        kind::TXN
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.round())
    }
    fn canceller(&self) -> Option<crate::env::postgres::Canceller> {
        // Each round's statements are short; at the cut-off the variant's sessions are ended.
        None
    }
}
