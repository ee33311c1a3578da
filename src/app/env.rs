//! `locklab env`: throwaway servers for a workshop, and what starting one costs.

use std::io::IsTerminal as _;

use crate::env::{Env, EnvOptions, PoolerChoice};
use crate::error::{UsageError, exit};

use super::{cancel_on_signals, exe};

pub(super) async fn env_up(
    pg_settings: Vec<String>,
    pooler_settings: Vec<String>,
    watch: bool,
) -> anyhow::Result<i32> {
    let settings = pg_settings
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| UsageError(format!("--pg-setting takes NAME=VALUE, got `{s}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pooler_settings = pooler_settings
        .iter()
        .map(|s| crate::env::pgbouncer::parse_setting(s))
        .collect::<Result<Vec<_>, _>>()?;
    let cancel = cancel_on_signals("stopping servers");
    let env = Env::setup(&EnvOptions {
        need_redis: true,
        pg_server_settings: settings,
        exe: exe()?,
        servers_only: true,
        pooler: PoolerChoice::Throwaway(pooler_settings),
        ..EnvOptions::default()
    })
    .await?;
    let url = env.pg_url().unwrap_or_default();
    let redis_url = env.redis_url().unwrap_or_default();
    let pooler_url = env.pooler_url().unwrap_or_default();
    out!("PostgreSQL  {url}");
    out!("PgBouncer   {pooler_url}   (transaction pooling, in front of the server above)");
    out!("Redis       {redis_url}");
    out!(
        "\nWatch it:   psql '{url}' -c \"SELECT pid, application_name, state, wait_event_type, now() - state_change AS for FROM pg_stat_activity WHERE application_name LIKE 'locklab%'\""
    );
    out!("            redis-cli -u '{redis_url}' --scan --pattern 'locklab_*'");
    out!("Run on it:  locklab run all --pg-url '{url}' --redis-url '{redis_url}'");
    out!(
        "Through the pooler: locklab run all --pooler-url '{pooler_url}' --pg-url '{url}' --redis-url '{redis_url}'"
    );
    out!("\nUp until Ctrl-C.");
    if watch {
        let on_terminal = std::io::stderr().is_terminal();
        if let Err(e) = crate::live::watch_server(&env.direct, cancel.clone(), on_terminal).await {
            crate::say!("the watch stopped: {e:#}");
        }
    }
    cancel.cancelled().await;
    env.teardown().await;
    Ok(exit::OK)
}

/// Times what every run pays before its first variant: start a throwaway server and get a
/// first answer; and what it pays after: stop it and remove its files.
pub(super) async fn env_time(runs: usize) -> anyhow::Result<i32> {
    use crate::check::stats::percentile;
    let runs = runs.max(1);
    let opts = EnvOptions {
        exe: exe()?,
        servers_only: true,
        ..EnvOptions::default()
    };
    // The first start may build the template cache; it is not counted.
    let warmup = Env::setup(&opts).await?;
    let major = warmup.pg_version().unwrap_or_default();
    warmup.teardown().await;
    let (mut start, mut stop) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = std::time::Instant::now();
        let env = Env::setup(&opts).await?;
        env.pg
            .connect("locklab-time")
            .await?
            .batch_execute("SELECT 1")
            .await?;
        start.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = std::time::Instant::now();
        env.teardown().await;
        stop.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // Redis alone: start, first PING answered; then stop.
    let (mut rstart, mut rstop) = (Vec::new(), Vec::new());
    let guardian = std::sync::Arc::new(crate::env::guardian::Guardian::start(&opts.exe)?);
    for _ in 0..runs {
        let t = std::time::Instant::now();
        let started = crate::env::redis::RedisServer::start(guardian.clone()).await;
        let mut server = match started {
            Ok(s) => s,
            Err(e) => {
                guardian.finish();
                return Err(e);
            }
        };
        rstart.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = std::time::Instant::now();
        server.stop().await;
        rstop.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    guardian.finish();
    let initdb = crate::env::postgres::time_initdb().await?;
    let bins = crate::env::postgres::find_binaries()?;
    let med = |xs: &[f64]| percentile(xs, 50.0).unwrap_or(0.0);
    let max = |xs: &[f64]| xs.iter().copied().fold(0.0, f64::max);
    out!(
        "throwaway PostgreSQL {} ({}), {runs} runs",
        major,
        bins.dir.display()
    );
    out!(
        "  copy template + start + first query   median {:>6.1} ms   max {:>6.1} ms",
        med(&start),
        max(&start)
    );
    out!(
        "  stop (SIGQUIT) + remove data dir      median {:>6.1} ms   max {:>6.1} ms",
        med(&stop),
        max(&stop)
    );
    out!(
        "  initdb alone (what the template saves)       {:>6.1} ms",
        initdb.as_secs_f64() * 1000.0
    );
    out!(
        "throwaway Redis ({}), {runs} runs",
        crate::env::redis::find_binary()?.display()
    );
    out!(
        "  start + first PING answered           median {:>6.1} ms   max {:>6.1} ms",
        med(&rstart),
        max(&rstart)
    );
    out!(
        "  stop (SIGKILL) + remove dir           median {:>6.1} ms   max {:>6.1} ms",
        med(&rstop),
        max(&rstop)
    );
    Ok(exit::OK)
}
