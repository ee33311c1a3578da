//! The holder: a booking in a process of its own (`locklab __worker orphan-lock`), so that a
//! fault can freeze, kill or cut off a real client mid-transaction.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::env::postgres::PgTarget;
use crate::env::worker::WorkerIo;
use crate::fault::Victim;

use super::{Booking, provider_app, server_epoch};

/// The holder runs as orphan-lock's worker process.
pub(crate) const WORKER: &str = "orphan-lock";

/// The holder's booking: lock, charge, report, wait for the payment call's answer (this is
/// where the fault hits), record, commit. `inside` puts the payment call inside the
/// transaction, as the write-up's code does; outside, the fault falls between the charge and
/// the booking.
pub(crate) async fn hold(
    c: &Client,
    provider: &Client,
    booking: &Booking,
    (passenger, inside, payment_call): (&str, bool, Duration),
    poll_every: Option<Duration>,
    report: impl FnOnce(f64),
) -> anyhow::Result<()> {
    if inside {
        booking.begin(c).await?;
        let at = booking.take_seat(c).await?.context("sold out")?;
        booking.charge(provider, passenger).await?;
        report(at);
        match poll_every {
            None => tokio::time::sleep(payment_call).await,
            // A holder that asks after the payment's status inside its transaction: never
            // idle for long, never one long statement, and the row held all along.
            Some(every) => {
                let until = Instant::now() + payment_call;
                while Instant::now() < until {
                    c.batch_execute("SELECT 1").await?;
                    tokio::time::sleep(every.min(until - Instant::now())).await;
                }
            }
        }
        booking.record(c, passenger).await?;
        c.batch_execute("COMMIT").await?;
    } else {
        booking.charge(provider, passenger).await?;
        report(server_epoch(c).await?);
        tokio::time::sleep(payment_call).await;
        booking.book_at_once(c, passenger).await?;
    }
    Ok(())
}

/// The holder's passenger name.
pub(crate) const HOLDER: &str = "holder";

/// What the holder process is told: where to book, as whom, and how.
#[derive(Serialize, Deserialize)]
pub(crate) struct HolderConfig {
    pub(crate) target: PgTarget,
    /// The payment provider's own path to its records (see [`provider_target`]).
    pub(crate) provider: PgTarget,
    /// Its application_name; its payment provider's session is named after it.
    pub(crate) app: String,
    pub(crate) settings: Vec<(String, String)>,
    pub(crate) payment_inside: bool,
    pub(crate) payment_call: Duration,
    /// Serves bookings one after another, as a service's request loop, instead of one.
    #[serde(default)]
    pub(crate) serve: bool,
    /// On SIGTERM, drains as a well-behaved service does: takes no new booking, lets the one
    /// in flight finish (commit or roll back), closes its connections and exits 0. Without it
    /// SIGTERM does what it does by default: the process dies at once.
    #[serde(default)]
    pub(crate) drain: bool,
    /// During the payment call, a short query this often inside the transaction.
    #[serde(default)]
    pub(crate) poll_every: Option<Duration>,
}

impl HolderConfig {
    /// The holder of one booking, inside the transaction, with the variant's session settings.
    pub(crate) fn new(
        target: PgTarget,
        provider: PgTarget,
        app: String,
        settings: Vec<(String, String)>,
        payment_call: Duration,
    ) -> HolderConfig {
        HolderConfig {
            target,
            provider,
            app,
            settings,
            payment_inside: true,
            payment_call,
            serve: false,
            drain: false,
            poll_every: None,
        }
    }
}

/// What the holder process reports: first that it is in its payment call (server clock);
/// then, a draining holder, that it got SIGTERM and what its drain came to.
#[derive(Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub(crate) enum HolderEvent {
    Paying { at_epoch: f64 },
    Draining,
    Drained { committed: usize, failed: usize },
}

/// A server whose slots, listen queue or role limit are full refuses for a moment
/// (connection-storm's next ghost arrives amid the storm): try again, as the next invocation
/// would, for up to 5 s. Both of the holder's sessions need this: against a role at its
/// connection limit, the provider's session is refused as readily as the booking's.
pub(crate) async fn connect_patiently(target: &PgTarget, app: &str) -> anyhow::Result<Client> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match target.connect(app).await {
            Ok(c) => return Ok(c),
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The holder as its own process (`locklab __worker orphan-lock`), so it can be frozen or
/// killed for real.
pub(crate) async fn holder_main(io: WorkerIo) -> anyhow::Result<()> {
    let cfg: HolderConfig = io.config()?;
    let c = connect_patiently(&cfg.target, &cfg.app).await?;
    let provider = connect_patiently(&cfg.provider, &provider_app(&cfg.app)).await?;
    let booking = Booking::new(&cfg.target, &cfg.settings);
    // A draining service listens for SIGTERM from the start; the default is to die of it.
    let terminated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if cfg.drain {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("could not listen for SIGTERM")?;
        let terminated = terminated.clone();
        tokio::spawn(async move {
            term.recv().await;
            terminated.store(true, std::sync::atomic::Ordering::SeqCst);
            // Written from this task at once, while the booking in flight goes on.
            let line = serde_json::to_string(&HolderEvent::Draining).unwrap_or_default();
            println!("{line}");
        });
    }
    let (mut committed, mut failed) = (0, 0);
    let mut reported = false;
    for n in 1.. {
        let passenger = match cfg.serve {
            true => format!("{HOLDER}-{n}"),
            false => HOLDER.to_string(),
        };
        let how = (passenger.as_str(), cfg.payment_inside, cfg.payment_call);
        let result = hold(&c, &provider, &booking, how, cfg.poll_every, |at_epoch| {
            if !reported {
                io.emit(&HolderEvent::Paying { at_epoch });
            }
        })
        .await;
        reported = true;
        match result {
            Ok(()) => committed += 1,
            Err(e) if !cfg.drain => return Err(e),
            Err(_) => {
                failed += 1;
                let _ = c.batch_execute("ROLLBACK").await;
            }
        }
        if !cfg.serve || terminated.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
    }
    if terminated.load(std::sync::atomic::Ordering::SeqCst) {
        // The drain's last step: close the connections, then report and exit 0.
        drop(c);
        drop(provider);
        io.emit(&HolderEvent::Drained { committed, failed });
    }
    Ok(())
}

/// Starts the holder as its own process and waits until it is inside its payment call, holding
/// the row. Returns the victim for the fault and the server clock when the call began.
/// `netns`: inside a network namespace of the run's own, so its connection can be cut off.
pub(crate) async fn spawn_holder(
    env: &crate::env::Env,
    netns: Option<&crate::env::netns::Netns>,
    config: HolderConfig,
) -> anyhow::Result<(Victim, f64)> {
    let mut worker = match netns {
        Some(ns) => env.spawn_worker_in(ns, WORKER, &config).await?,
        None => env.spawn_worker(WORKER, &config).await?,
    };
    let paying = worker
        .next::<HolderEvent>(Instant::now() + Duration::from_secs(10))
        .await;
    match paying {
        Ok(Some(HolderEvent::Paying { at_epoch })) => {
            Ok((Victim::Process(Box::new(worker)), at_epoch))
        }
        Ok(Some(_)) => {
            worker.end().await;
            bail!("the holder process reported something before its payment call")
        }
        Ok(None) => {
            worker.end().await;
            bail!("the holder process did not reach its payment call within 10 s")
        }
        Err(e) => {
            worker.end().await;
            Err(e.context("the holder process did not reach its payment call"))
        }
    }
}
