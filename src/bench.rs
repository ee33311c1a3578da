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
    // Over the window the clients ran in, as pgbench counts (not the history's assembly after).
    let ok = driven.history.ok("update");
    Ok(ok as f64 / seconds.min(started.elapsed().as_secs_f64()))
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

/// The same UPDATE as a step file (one session of `clients`, looping until its cut-off), run
/// through the whole runner on the same server as `--pg-url`: what a user's own file gets.
async fn step_file_tps(
    env: &Env,
    clients: usize,
    seconds: f64,
    exe: std::path::PathBuf,
    cancel: &CancellationToken,
) -> anyhow::Result<f64> {
    let text = format!(
        "name = \"bench-step-file\"\n\
         summary = \"bench driver's UPDATE as a step file\"\n\
         harm = {{ metric = \"w.update.ok\", label = \"updates\" }}\n\
         time_scale = 1\n\
         [params]\n\
         deadline = \"{ms}ms\"\n\
         [setup]\n\
         sql = \"CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL); \
         INSERT INTO counter VALUES (1, 0)\"\n\
         [[sessions]]\n\
         name = \"w\"\n\
         clients = {clients}\n\
         repeat = \"until-deadline\"\n\
         steps = [{{ name = \"update\", sql = \"UPDATE counter SET n = n + 1 WHERE id = 1\" }}]\n\
         [[variants]]\n\
         name = \"baseline\"\n\
         expect = [\"w.update.ok >= 1\"]\n",
        ms = (seconds * 1000.0).round() as u64,
    );
    let scenario = crate::scenario::steps::parse(&text, "bench driver's step file")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let opts = crate::runner::RunOptions {
        scenarios: vec![scenario],
        variants: Vec::new(),
        time_scale: 1.0,
        time_scale_given: false,
        env: EnvOptions {
            pg_url: Some(env.pg.conninfo().to_string()),
            exe,
            ..EnvOptions::default()
        },
        out_dir: None,
        estimates: Default::default(),
        progress: false,
        repeat: 1,
        jobs: 1,
    };
    let report = crate::runner::run(opts, cancel.clone()).await?.report;
    let v = report
        .scenarios
        .first()
        .and_then(|s| s.variants.first())
        .context("the step file's run reported no variant")?;
    if let Some(e) = &v.error {
        anyhow::bail!("the step file's run failed: {e}");
    }
    let ok = v
        .metrics
        .get("w.update.ok")
        .and_then(serde_json::Value::as_f64)
        .context("the step file's run reported no w.update.ok")?;
    Ok(ok / seconds)
}

/// Removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Transactions a second each way, the best of the rounds.
pub struct Tps {
    /// locklab's workload driver, as the built-in scenarios use it.
    pub driver: f64,
    /// The same through a step file and the whole runner.
    pub step_file: f64,
    pub pgbench: f64,
}

/// Runs the three, `rounds` times each alternately, and prints the best of each and their ratio.
pub async fn driver(
    clients: usize,
    seconds: f64,
    rounds: usize,
    exe: std::path::PathBuf,
    cancel: CancellationToken,
) -> anyhow::Result<Tps> {
    let env = Env::setup(&EnvOptions {
        exe: exe.clone(),
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
        let (mut ours, mut file, mut theirs) = (0f64, 0f64, 0f64);
        for _ in 0..rounds {
            ours = ours.max(driver_tps(&env, clients, seconds, &sql, &cancel).await?);
            file = file.max(step_file_tps(&env, clients, seconds, exe.clone(), &cancel).await?);
            theirs = theirs.max(pgbench_tps(&env, clients, seconds, &sql, &dir.0).await?);
            if cancel.is_cancelled() {
                break;
            }
        }
        anyhow::Ok(Tps {
            driver: ours,
            step_file: file,
            pgbench: theirs,
        })
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
