//! The loop every PostgreSQL observer runs: one look on a session of its own every 10 ms, each
//! answer turned into a sample stamped with the history clock, until it is told to finish.
//! It reconnects when its session is lost (a server restart), so a gauge never stops, and a
//! look still waiting when it is told to finish is dropped, so a server (or a pooler's console)
//! that stops answering never holds the variant.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_postgres::{Client, Row};

use crate::env::postgres::{Param, PgTarget, Sql as _};
use crate::history::Clock;

/// An observer that samples a query: what it saw is every sample.
pub type Sampler<T> = super::Watch<Vec<T>>;

impl<T: crate::gauge::Gauged + Send + 'static> super::Watch<Vec<T>> {
    /// Runs `stmt` with `params` every 10 ms on a session named `app`; `read` turns a row
    /// (and the history clock's time) into a sample. Fails only if the first connect does.
    pub async fn query(
        target: &PgTarget,
        app: &str,
        clock: Clock,
        (stmt, params): (&'static str, Vec<String>),
        read: fn(&Row, f64) -> T,
    ) -> anyhow::Result<Sampler<T>> {
        let params = Arc::new(params);
        Self::poll(target, app, move |c| {
            let params = params.clone();
            Box::pin(async move {
                let params: Vec<&dyn Param> = params.iter().map(|p| p as &dyn Param).collect();
                let row = c.one(stmt, &params).await.ok()?;
                Some(read(&row, clock.now_ms()))
            })
        })
        .await
    }

    /// Runs `look` every 10 ms on a session named `app` (a sample, or none this time), puts
    /// each sample's gauges on the board in scope. Fails only if the first connect does.
    pub async fn poll(
        target: &PgTarget,
        app: &str,
        look: impl for<'c> Fn(&'c Client) -> BoxFuture<'c, Option<T>> + Send + 'static,
    ) -> anyhow::Result<Sampler<T>> {
        let first = target.connect(app).await?;
        let (target, app) = (target.clone(), app.to_string());
        let board = crate::gauge::current();
        Ok(super::Watch::spawn(move |stopped| async move {
            let mut samples = Vec::new();
            let mut client = Some(first);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let c = match client.take() {
                    Some(c) if !c.is_closed() => c,
                    _ => match target.connect(&app).await {
                        Ok(c) => c,
                        Err(_) => continue,
                    },
                };
                let seen = tokio::select! {
                    seen = look(&c) => seen,
                    _ = stopped.cancelled() => break,
                };
                if let Some(sample) = seen {
                    if let Some(board) = &board {
                        for (name, v) in sample.gauges() {
                            board.set(name, v);
                        }
                    }
                    samples.push(sample);
                }
                client = Some(c);
            }
            samples
        }))
    }
}
