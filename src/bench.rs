//! `locklab bench driver`: the workload driver against `pgbench` on the same throwaway server,
//! the same single-row UPDATE and the same number of clients, so a scenario's load is known to
//! come from the harness at the speed a standard tool would drive it.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::env::{Env, EnvOptions};
use crate::history::Clock;
use crate::workload::{self, OpError, Plan};

/// One driver client: the UPDATE in autocommit, over the simple query protocol as pgbench's
/// default is.
struct Updater {
    client: tokio_postgres::Client,
    sql: Arc<str>,
}

impl workload::Client for Updater {
    fn kind(&self) -> &'static str {
        "update"
    }
    fn attempt(&mut self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(async move { Ok(self.client.batch_execute(&self.sql).await?) })
    }
    fn canceller(&self) -> Option<crate::env::postgres::Canceller> {
        None
    }
}

/// Transactions a second through locklab's driver.
async fn driver_tps(
    env: &Env,
    clients: usize,
    seconds: f64,
    sql: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<f64> {
    let sql: Arc<str> = Arc::from(sql);
    let mut all: Vec<Box<dyn workload::Client>> = Vec::new();
    for i in 0..clients {
        let client = env.pg.connect(&env.app(&format!("bench/{i}"))).await?;
        all.push(Box::new(Updater {
            client,
            sql: sql.clone(),
        }));
    }
    let clock = Clock::start();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let driven = workload::drive(
        all,
        Plan::Times(usize::MAX),
        clock,
        deadline,
        cancel,
        Arc::new(AtomicUsize::new(0)),
    )
    .await;
    let ok = driven.history.ok("update");
    Ok(ok as f64 / started.elapsed().as_secs_f64())
}

/// Transactions a second through pgbench, from its own report.
async fn pgbench_tps(
    env: &Env,
    clients: usize,
    seconds: f64,
    sql: &str,
    dir: &std::path::Path,
) -> anyhow::Result<f64> {
    let pgbench = find_pgbench()?;
    let script = dir.join("update.sql");
    std::fs::write(&script, format!("{sql};\n")).context("could not write the pgbench script")?;
    // The same path as the driver's sessions (the throwaway server's unix socket).
    let url = env.pg.conninfo();
    let out = tokio::process::Command::new(&pgbench)
        .args(["-n", "-c", &clients.to_string(), "-j", "2"])
        .args(["-T", &format!("{}", seconds.ceil() as u64)])
        .arg("-f")
        .arg(&script)
        .arg(url)
        .output()
        .await
        .context("could not run pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse_tps(&text).with_context(|| format!("no `tps = ` in pgbench's report:\n{text}"))
}

/// pgbench beside the server binaries (Debian's versioned directory, where locklab found
/// them), else on PATH.
fn find_pgbench() -> anyhow::Result<std::path::PathBuf> {
    let bins = crate::env::postgres::find_binaries()?;
    crate::env::process::find_program("pgbench", &[bins.dir], &[]).context(
        "no pgbench found: it ships with the PostgreSQL server packages (Debian/Ubuntu: \
             `apt-get install postgresql-contrib` or `postgresql`)",
    )
}

/// `tps = 1234.567890 (without initial connection time)` → 1234.56789.
pub fn parse_tps(report: &str) -> Option<f64> {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs both, `rounds` times each alternately, and prints the best of each and their ratio.
pub async fn driver(
    clients: usize,
    seconds: f64,
    rounds: usize,
    exe: std::path::PathBuf,
    cancel: CancellationToken,
) -> anyhow::Result<(f64, f64)> {
    let env = Env::setup(&EnvOptions {
        exe,
        ..EnvOptions::default()
    })
    .await?;
    let result = async {
        let table = env.pg.table("bench_counter");
        let admin = env.pg.connect(&env.app("bench/admin")).await?;
        admin
            .batch_execute(&format!(
                "CREATE TABLE {table} (id int PRIMARY KEY, n bigint NOT NULL); \
                 INSERT INTO {table} VALUES (1, 0);"
            ))
            .await
            .context("could not create the benchmark's table")?;
        let sql = format!("UPDATE {table} SET n = n + 1 WHERE id = 1");
        let dir = TempDir(
            crate::env::process::make_temp_dir("locklab-bench")
                .context("could not make a temp dir")?,
        );
        let (mut ours, mut theirs) = (0f64, 0f64);
        for _ in 0..rounds {
            ours = ours.max(driver_tps(&env, clients, seconds, &sql, &cancel).await?);
            theirs = theirs.max(pgbench_tps(&env, clients, seconds, &sql, &dir.0).await?);
            if cancel.is_cancelled() {
                break;
            }
        }
        anyhow::Ok((ours, theirs))
    }
    .await;
    env.teardown().await;
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_pgbench_s_tps_line() {
        let report = "number of failed transactions: 0 (0.000%)\n\
                      latency average = 1.2 ms\n\
                      initial connection time = 3.1 ms\n\
                      tps = 8123.456789 (without initial connection time)\n";
        assert_eq!(super::parse_tps(report), Some(8123.456789));
        assert_eq!(super::parse_tps("nothing"), None);
    }
}
