//! A throwaway PostgreSQL of one variant's own, for scenarios whose fault is the server itself:
//! its connection slots (connection-storm), a restart (shutdown's db-restart), the network
//! between it and a client (lost-client). One lifecycle for all of them: start it (in a network
//! namespace of its own where asked), make the variant's schema on it, run, stop it and delete
//! the namespace whatever the run returned.

use anyhow::Context;

use super::VariantCtx;
use crate::env::netns::Netns;
use crate::env::postgres::PgServer;

/// The variant's own server, and its network namespace where it has one.
pub struct OwnPg {
    pub server: PgServer,
    pub netns: Option<Netns>,
}

impl OwnPg {
    /// Stops the server, then deletes its namespace.
    pub async fn stop(mut self) {
        self.server.stop().await;
        if let Some(mut ns) = self.netns.take() {
            ns.delete().await;
        }
    }
}

impl VariantCtx<'_> {
    /// Starts a server of the variant's own with `settings` (inside a network namespace of the
    /// run's own with `in_netns`) and runs `setup` on it as its superuser: by default
    /// (`None`) it makes the variant's schema. A failed setup stops the server again. `None` on
    /// a run against the user's server, which locklab does not start, restart or cut off.
    pub async fn own_pg(
        &self,
        settings: &[(String, String)],
        in_netns: bool,
        setup: Option<&str>,
    ) -> Option<anyhow::Result<OwnPg>> {
        let started = match in_netns {
            true => self
                .env
                .start_own_pg_in_netns(settings)
                .await?
                .map(|(server, ns)| OwnPg {
                    server,
                    netns: Some(ns),
                }),
            false => self.env.start_own_pg(settings).await?.map(|server| OwnPg {
                server,
                netns: None,
            }),
        };
        let own = match started {
            Ok(own) => own,
            Err(e) => return Some(Err(e)),
        };
        let schema = &self.env.pg.schema;
        let sql = match setup {
            Some(sql) => sql.to_string(),
            None => format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""),
        };
        let made = async {
            let c = own
                .server
                .target(schema)
                .connect(&self.app("admin"))
                .await?;
            c.batch_execute(&sql)
                .await
                .context("could not make the variant's schema on its own server")
        };
        if let Err(e) = made.await {
            own.stop().await;
            return Some(Err(e));
        }
        Some(Ok(own))
    }

    /// [`Self::own_pg`], `body` run on it, and the server stopped (its namespace deleted)
    /// whatever `body` returned. `None` on a run against the user's server.
    pub async fn on_own_pg<T>(
        &self,
        settings: &[(String, String)],
        in_netns: bool,
        body: impl AsyncFnOnce(&mut OwnPg) -> anyhow::Result<T>,
    ) -> Option<anyhow::Result<T>> {
        let mut own = match self.own_pg(settings, in_netns, None).await? {
            Ok(own) => own,
            Err(e) => return Some(Err(e)),
        };
        let result = body(&mut own).await;
        own.stop().await;
        Some(result)
    }
}
