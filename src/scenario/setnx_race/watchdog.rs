//! lock-watchdog: setnx-race's shop behind a lease a background task renews every third of it
//! while the holder's process lives, as Redisson-style locks do. The same buyers, holder
//! process, critical sections and key observer; the faults are the ones a renewed lease meets:
//! work that hangs in a live process (renewed for ever) and a whole process stopped past the
//! lease (renewals stop, the lock passes on while its holder still works).

use std::future::Future;
use std::time::Duration;

use super::shop::WATCHDOG_LOCKS;
use super::{HolderFault, SetnxRace, shop};
use crate::env::worker::WorkerIo;
use crate::error::UsageError;
use crate::scenario::spec::{DAY_MS, HOUR_MS};
use crate::scenario::{Code, ParamSpec, Params, VariantCtx, VariantRun};

pub struct LockWatchdog(SetnxRace);

crate::scenario::spec::words!(WATCHDOG_FAULTS, WATCHDOG_FAULT_OF: HolderFault = {
    "hang" => HolderFault::Hang,
    "pause" => HolderFault::Pause,
});

/// The shortest lease after --time-scale: renewed every third of it, a shorter one is lost to
/// a scheduler's hiccup rather than to the fault.
const MIN_LEASE: Duration = Duration::from_millis(400);

/// The shortest payment a stall must land inside: the holder is stopped on its report that it
/// is paying, and must still be paying when the signal arrives.
const MIN_STALLED_PAYMENT: Duration = Duration::from_millis(200);

impl Code for LockWatchdog {
    const NAME: &'static str = "lock-watchdog";
    const FILE: &'static str = include_str!("../../../scenarios/lock-watchdog.toml");
    const PARAMS: &'static [ParamSpec] = &[
        ParamSpec::count("buyers", 2, 1000),
        ParamSpec::count("stock", 1, 1000),
        ParamSpec::words("lock", WATCHDOG_LOCKS),
        ParamSpec::words("fault", WATCHDOG_FAULTS),
        ParamSpec::duration("lease", 1, HOUR_MS),
        ParamSpec::duration("max_lease", 0, DAY_MS),
        ParamSpec::duration("payment", 0, HOUR_MS),
        ParamSpec::duration("pause", 0, HOUR_MS),
        ParamSpec::duration("retry_after", 1, HOUR_MS),
        ParamSpec::duration("deadline", 100, DAY_MS),
    ];
    const METRICS: &'static [&'static str] = crate::check::lock_watchdog::METRICS;
    const SIZED_BY: &'static str = "buyers";
    const NEEDS_REDIS: bool = true;

    fn config(p: &Params) -> Result<LockWatchdog, UsageError> {
        let lease = p.scaled_at_least(
            "lease",
            MIN_LEASE,
            "a renewal every third of it loses the lock to a busy scheduler, not to the fault",
        )?;
        let fault = p.one_of("fault", WATCHDOG_FAULT_OF)?;
        let (stock, payment) = (p.count("stock")?, p.duration("payment")?);
        let retry_after = p.duration("retry_after")?;
        // After the fault, the items go one holder at a time: a payment and a retry's pause each.
        let sales = (payment + retry_after) * stock as u32;
        let max_lease = match p.duration("max_lease")? {
            d if d.is_zero() => None,
            d if d < lease => {
                return Err(UsageError(format!(
                    "max_lease ({}) must be 0 (no bound) or at least the lease ({}): a bound \
                     below it is a lock that is never renewed (--param max_lease={})",
                    p.as_written(d),
                    p.as_written(lease),
                    p.as_written(lease)
                )));
            }
            d => Some(d),
        };
        let pause = p.duration("pause")?;
        match (fault, max_lease) {
            (HolderFault::Hang, Some(bound)) => p.deadline_outlasts(
                1,
                "1.5 × (max_lease + lease + stock × (payment + retry_after))",
                (bound + lease + sales).mul_f64(1.5),
                "the bounded lock could not run out and the items be sold before it",
            )?,
            (HolderFault::Hang, None) => p.deadline_outlasts(
                3,
                "the lease",
                lease,
                "a lock held for ever could not be told from one held a few leases",
            )?,
            _ => {
                // Renewed every third of the lease, the key outlives the stall's start by up to
                // a lease: a shorter stall is bridged by the next renewal and shows nothing.
                if pause < lease.mul_f64(1.5) {
                    return Err(UsageError(format!(
                        "pause ({}) must be at least 1.5 times the lease ({}): a shorter stall \
                         ends before the lease runs out, and the lock never passes on \
                         (--param pause={} or more)",
                        p.as_written(pause),
                        p.as_written(lease),
                        p.as_written(lease.mul_f64(1.5))
                    )));
                }
                p.scaled_at_least(
                    "payment",
                    MIN_STALLED_PAYMENT,
                    "the holder may finish before the stop signal reaches it",
                )?;
                p.deadline_outlasts(
                    1,
                    "1.5 × (pause + lease + stock × (payment + retry_after))",
                    (pause + lease + sales).mul_f64(1.5),
                    "the stalled holder and the next could not both finish before it",
                )?;
            }
        }
        Ok(LockWatchdog(SetnxRace {
            buyers: p.count("buyers")?,
            stock: stock as i64,
            lock: p.one_of("lock", shop::WATCHDOG_LOCK_OF)?,
            fault,
            ttl: lease,
            payment,
            pause,
            retry_after,
            deadline: p.duration("deadline")?,
            max_lease,
        }))
    }

    fn sessions(&self) -> usize {
        self.0.sessions()
    }

    fn run<'a>(
        &'a self,
        ctx: &'a VariantCtx<'a>,
    ) -> impl Future<Output = anyhow::Result<VariantRun>> + Send + 'a {
        super::run(&self.0, ctx)
    }

    async fn worker(io: WorkerIo) -> anyhow::Result<()> {
        super::holder::holder_main(io).await
    }
}
