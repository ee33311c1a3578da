//! write-skew: two doctors on call in each shift; each checks that someone else is on call and
//! goes off call. Both read before either writes (a gate per shift), so both checks pass on
//! every run; the rows left on call are the verdict.

use crate::env::postgres::Sql as _;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use anyhow::Context;
use futures::future::BoxFuture;
use tokio_postgres::Client;

use super::isolation::{Conflicts, LEVELS, Level};
use super::spec::{DAY_MS, HOUR_MS};
use super::{Code, ParamSpec, Params, VariantCtx, VariantRun};
use crate::check::isolation::{ROTA_METRICS, RotaObservations, STAYED, kind};
use crate::error::UsageError;
use crate::workload::gate::Gates;
use crate::workload::{self, OpError, Plan};

/// write-skew's configuration: its parameters, parsed once.
pub struct WriteSkew {
    shifts: usize,
    level: Level,
    for_update: bool,
    retry: bool,
    max_retries: usize,
    step: Duration,
    deadline: Duration,
}

impl Code for WriteSkew {
    const NAME: &'static str = "write-skew";
    const FILE: &'static str = include_str!("../../scenarios/write-skew.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::count("shifts", 1, 250),
        ParamSpec::words("isolation", LEVELS),
        ParamSpec::words("read", &["plain", "for-update"]),
        ParamSpec::flag("retry"),
        ParamSpec::count("max_retries", 0, 1000),
        ParamSpec::duration("step", 1, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = ROTA_METRICS;
    const SIZED_BY: &'static str = "shifts";

    fn config(p: &Params) -> Result<WriteSkew, UsageError> {
        let step = p.duration("step")?;
        p.deadline_outlasts(
            4,
            "step",
            step,
            "a shift's second doctor could not finish before it",
        )?;
        Ok(WriteSkew {
            shifts: p.count("shifts")?,
            level: p.parse("isolation")?,
            for_update: p.switch("read", "for-update", "plain")?,
            retry: p.flag("retry")?,
            max_retries: p.count("max_retries")?,
            step,
            deadline: p.duration("deadline")?,
        })
    }

    fn sessions(&self) -> usize {
        // Two doctors a shift, each on a connection of its own, and the setup session.
        2 * self.shifts + 1
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        run(self, ctx)
    }
}

struct Shared {
    level: Level,
    settings: Vec<(String, String)>,
    read: String,
    update: String,
    retry: bool,
    max_retries: usize,
    /// One gate per shift, for its two doctors.
    gates: Gates,
    conflicts: Conflicts,
}

struct Doctor {
    client: Client,
    shift: i32,
    name: String,
    shared: Arc<Shared>,
}

impl Doctor {
    async fn go_off_call(&mut self) -> Result<(), OpError> {
        let s = &self.shared;
        s.conflicts
            .retrying(&self.client, s.retry, s.max_retries, |first| {
                self.attempt(first)
            })
            .await
    }

    async fn attempt(&self, first: bool) -> Result<(), OpError> {
        let s = &self.shared;
        let gate = self.shift as usize;
        let begin = crate::env::postgres::sql::begin_with(s.level.begin(), &s.settings);
        let read = async {
            self.client.batch_execute(&begin).await?;
            Ok::<_, OpError>(self.client.rows(&s.read, &[&self.shift]).await?.len())
        }
        .await;
        if first {
            // Both doctors of the shift have checked before either writes.
            s.gates.pass(gate).await;
        }
        if read? < 2 {
            return Err(OpError::new(STAYED));
        }
        self.client
            .exec(&s.update, &[&self.shift, &self.name])
            .await?;
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

impl workload::Client for Doctor {
    fn kind(&self) -> &'static str {
        kind::GO_OFF_CALL
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.go_off_call())
    }
    fn canceller(&self) -> Option<crate::env::postgres::Canceller> {
        None
    }
}

async fn run(cfg: &WriteSkew, ctx: &VariantCtx<'_>) -> anyhow::Result<VariantRun> {
    let env = ctx.env;
    let doctors = env.pg.table("doctors");
    let admin = ctx
        .admin(&format!(
            "DROP TABLE IF EXISTS {doctors}; \
             CREATE TABLE {doctors} (shift int NOT NULL, name text NOT NULL, \
                                     on_call boolean NOT NULL, PRIMARY KEY (shift, name)); \
             INSERT INTO {doctors} SELECT s, d, true \
               FROM generate_series(0, {}) s, unnest(ARRAY['alice', 'bob']) d;",
            cfg.shifts - 1
        ))
        .await?;
    let lock = if cfg.for_update { " FOR UPDATE" } else { "" };
    let shared = Arc::new(Shared {
        level: cfg.level,
        settings: ctx.variant.settings.clone(),
        read: format!("SELECT name FROM {doctors} WHERE shift = $1 AND on_call{lock}"),
        update: format!("UPDATE {doctors} SET on_call = false WHERE shift = $1 AND name = $2"),
        retry: cfg.retry,
        max_retries: cfg.max_retries,
        gates: Gates::new(cfg.shifts, 2, cfg.step),
        conflicts: Conflicts::default(),
    });
    let mut clients: Vec<Box<dyn workload::Client>> = Vec::new();
    for shift in 0..cfg.shifts {
        for name in ["alice", "bob"] {
            let app = ctx.app(&format!("w/{name}-{shift}"));
            clients.push(Box::new(Doctor {
                client: ctx.pg().connect(&app).await?,
                shift: shift as i32,
                name: name.into(),
                shared: shared.clone(),
            }));
        }
    }
    let window = ctx.window(cfg.deadline);
    let driven = ctx.drive(clients, Plan::Once, &window, " off call").await;
    ctx.terminate_sessions("w/").await?;
    let on_call: Vec<i64> = admin
        .rows(
            &format!(
                "SELECT count(*) FILTER (WHERE on_call) FROM {doctors} GROUP BY shift ORDER BY shift"
            ),
            &[],
        )
        .await
        .context("could not read the rota")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (failures, retries) = shared.conflicts.counts();
    Ok(VariantRun::checked(
        &window.clock,
        driven.history,
        crate::check::Input::Rota(RotaObservations {
            on_call,
            serialization_failures: failures,
            retries,
            cut_off: driven.cut_off,
        }),
    ))
}
