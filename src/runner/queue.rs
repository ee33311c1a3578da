//! The queue of runs and the admission that starts them side by side: a run starts on a free
//! lane when its weight fits beside those in flight, its kind of CPU use may share the machine
//! with theirs, and a look at the machine taken after they all started found idle CPU.

use std::collections::VecDeque;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::plan::Plans;
use crate::scenario::Cpu;

/// The queue: every run of every planned variant, repeats round by round (every variant once,
/// then every variant again, so side by side run different variants, not ten copies of the
/// busiest one). Results come out in scenario and variant order whatever the queue's.
///
/// Within a round: kernel-timed runs first, then the hogs beside them (lost-client's seconds of
/// keepalive timing pass while the storms take the CPU, which nothing timed could share), then
/// the timed runs. Within each kind, the longest expected first, so the long ones run beside
/// the short ones instead of after them: no short run waits behind a long tail. Ties keep
/// scenario and variant order.
pub(super) fn order(plans: &Plans, repeat: u32) -> VecDeque<Unit> {
    let mut firsts: Vec<(usize, usize)> = plans
        .rows
        .iter()
        .enumerate()
        .flat_map(|(si, row)| {
            row.iter()
                .enumerate()
                .filter(|(_, p)| p.is_some())
                .map(move |(vi, _)| (si, vi))
        })
        .collect();
    firsts.sort_by_key(|&(si, vi)| {
        let kind = match plans.loads[si][vi].1 {
            Cpu::Kernel => 0,
            Cpu::Hog => 1,
            Cpu::Timed => 2,
        };
        let estimate = plans.get(si, vi).map(|p| p.estimate).unwrap_or_default();
        (kind, std::cmp::Reverse(estimate))
    });
    (0..repeat.max(1))
        .flat_map(|rep| {
            firsts.iter().map(move |&(si, vi)| Unit {
                si,
                vi,
                rep,
                started: 0,
            })
        })
        .collect()
}

/// `--jobs` unless given: four lanes per core, at most 8. Most of a variant's time is a
/// designed wait (a cut-off, a timeout, a TTL) with the CPU idle, so lanes outnumber cores;
/// [`Admission`] keeps them from starting runs on a machine whose CPU is already busy.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 4)
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Sessions in flight per core before another lane may start a run: a PostgreSQL backend
/// and a client task each, busy while a variant's clients work.
const SESSIONS_PER_CORE: usize = 90;

/// Another run starts beside those in flight only while this share of the machine's CPU time
/// was idle over the last sample (whoever else is using it).
const IDLE_FLOOR_PERMILLE: u32 = 100;

/// How often the machine's idle CPU is sampled.
const IDLE_SAMPLE: Duration = Duration::from_millis(100);

pub(super) fn weight_cap() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) * SESSIONS_PER_CORE
}

/// The machine's idle CPU share over the last [`IDLE_SAMPLE`], from /proc/stat (all idle
/// where it cannot be read), and how many samples have been taken.
#[derive(Default)]
pub(super) struct IdleCpu {
    permille: std::sync::atomic::AtomicU32,
    samples: std::sync::atomic::AtomicU64,
}

impl IdleCpu {
    /// Samples until `stop` fires.
    pub(super) async fn sample(&self, stop: CancellationToken) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut last = crate::observe::cpu::machine_ticks();
        self.permille.store(1000, Relaxed);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(IDLE_SAMPLE) => {}
                _ = stop.cancelled() => return,
            }
            let now = crate::observe::cpu::machine_ticks();
            let permille = match (last, now) {
                (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => {
                    ((i1.saturating_sub(i0)) * 1000 / (t1 - t0)) as u32
                }
                _ => 1000,
            };
            last = now;
            self.permille.store(permille, Relaxed);
            self.samples.fetch_add(1, Relaxed);
        }
    }
}

/// The runs waiting for a lane, and how much is in flight. A lane takes the first waiting run
/// that fits beside what runs now (its weight, and its kind of CPU use beside theirs: see
/// [`Cpu`]), if a sample of the machine taken after every run in flight started found idle CPU;
/// any run when nothing else is in flight.
pub(super) struct Admission {
    state: std::sync::Mutex<Waiting>,
    changed: tokio::sync::Notify,
    cap: usize,
    pub(super) idle: IdleCpu,
}

impl Admission {
    pub(super) fn new(units: VecDeque<Unit>, cap: usize) -> Admission {
        Admission {
            state: std::sync::Mutex::new(Waiting {
                queue: units,
                running: Vec::new(),
            }),
            changed: tokio::sync::Notify::new(),
            cap,
            idle: IdleCpu::default(),
        }
    }

    /// The next run for a lane; `None` when none is left or the run was cancelled.
    pub(super) async fn next(
        &self,
        weights: &[Vec<(usize, Cpu)>],
        cancel: &CancellationToken,
    ) -> Option<Unit> {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if cancel.is_cancelled() {
                return None;
            }
            {
                let mut st = self.state.lock().ok()?;
                let Waiting { queue, running } = &mut *st;
                if queue.is_empty() {
                    return None;
                }
                let sample = self.idle.samples.load(Relaxed);
                // Enough idle CPU, in a look taken after every run in flight started: a run
                // that started since then has not shown its load yet. (One that already ended
                // has nothing left to show, so a string of short runs need not wait a sample
                // each.)
                let room = running.iter().all(|r| r.started < sample)
                    && self.idle.permille.load(Relaxed) >= IDLE_FLOOR_PERMILLE;
                let fits = |u: &Unit| {
                    let (weight, cpu) = weights[u.si][u.vi];
                    let in_flight: usize = running.iter().map(|r| r.weight).sum();
                    in_flight + weight <= self.cap && running.iter().all(|r| cpu.beside(r.cpu))
                };
                let pick = match running.is_empty() {
                    true => Some(0),
                    false if room => queue.iter().position(fits),
                    false => None,
                };
                if let Some(unit) = pick.and_then(|i| queue.remove(i)) {
                    let (weight, cpu) = weights[unit.si][unit.vi];
                    running.push(Running {
                        weight,
                        cpu,
                        started: sample,
                    });
                    return Some(Unit {
                        started: sample,
                        ..unit
                    });
                }
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep(IDLE_SAMPLE) => {}
                _ = cancel.cancelled() => return None,
            }
        }
    }

    pub(super) fn done(&self, unit: Unit, weights: &[Vec<(usize, Cpu)>]) {
        let (weight, cpu) = weights[unit.si][unit.vi];
        if let Ok(mut st) = self.state.lock() {
            let ran = Running {
                weight,
                cpu,
                started: unit.started,
            };
            if let Some(i) = st.running.iter().position(|r| *r == ran) {
                st.running.remove(i);
            }
        }
        self.changed.notify_waiters();
    }
}

/// The runs not yet started, and those in flight.
struct Waiting {
    queue: VecDeque<Unit>,
    running: Vec<Running>,
}

/// A run in flight: its weight, its kind of CPU use, and the idle-CPU sample current when it
/// started.
#[derive(PartialEq)]
struct Running {
    weight: usize,
    cpu: Cpu,
    started: u64,
}

/// One run of one variant, waiting for a lane.
#[derive(Clone, Copy)]
pub(super) struct Unit {
    pub(super) si: usize,
    pub(super) vi: usize,
    pub(super) rep: u32,
    /// The idle-CPU sample current when it started (0 while it waits).
    started: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_kinds_of_cpu_use_run_side_by_side() {
        use Cpu::*;
        // (a run of this kind, beside one of that kind in flight, may start)
        let table = [
            (Kernel, Kernel, true),
            (Kernel, Hog, true),
            (Kernel, Timed, true),
            (Hog, Kernel, true),
            (Hog, Hog, false),
            (Hog, Timed, false),
            (Timed, Kernel, true),
            (Timed, Hog, false),
            (Timed, Timed, true),
        ];
        for (a, b, expected) in table {
            assert_eq!(a.beside(b), expected, "{a:?} beside {b:?}");
        }
    }

    /// Admission over hand-built runs: `kinds[i]` is run i's CPU kind, weight 1 each.
    fn admission(kinds: &[Cpu]) -> (Admission, Vec<Vec<(usize, Cpu)>>) {
        let units = (0..kinds.len())
            .map(|vi| Unit {
                si: 0,
                vi,
                rep: 0,
                started: 0,
            })
            .collect();
        let weights = vec![kinds.iter().map(|k| (1, *k)).collect()];
        (Admission::new(units, 100), weights)
    }

    /// A new look at the machine's CPU, with this share idle.
    fn sample(a: &Admission, permille: u32) {
        use std::sync::atomic::Ordering::Relaxed;
        a.idle.permille.store(permille, Relaxed);
        a.idle.samples.fetch_add(1, Relaxed);
    }

    /// The next run admitted within 300 ms (the admission re-checks every 100 ms).
    async fn admitted(a: &Admission, weights: &[Vec<(usize, Cpu)>]) -> Option<usize> {
        let cancel = CancellationToken::new();
        tokio::time::timeout(Duration::from_millis(300), a.next(weights, &cancel))
            .await
            .ok()
            .flatten()
            .map(|u| u.vi)
    }

    #[tokio::test]
    async fn a_hog_runs_beside_kernel_timed_runs_only() {
        let (a, w) = admission(&[Cpu::Kernel, Cpu::Hog, Cpu::Hog, Cpu::Timed]);
        assert_eq!(
            admitted(&a, &w).await,
            Some(0),
            "nothing in flight: the first"
        );
        sample(&a, 900);
        let hog = a.next(&w, &CancellationToken::new()).await;
        assert_eq!(
            hog.map(|u| u.vi),
            Some(1),
            "a hog beside a kernel-timed run"
        );
        sample(&a, 900);
        assert_eq!(
            admitted(&a, &w).await,
            None,
            "no second hog, no timed run beside it"
        );
        if let Some(hog) = hog {
            a.done(hog, &w);
        }
        sample(&a, 900);
        assert_eq!(
            admitted(&a, &w).await,
            Some(2),
            "the next hog once the first is done"
        );
    }

    #[tokio::test]
    async fn a_hog_waits_for_timed_runs_and_every_start_for_idle_cpu() {
        let (a, w) = admission(&[Cpu::Timed, Cpu::Timed, Cpu::Hog]);
        assert_eq!(admitted(&a, &w).await, Some(0));
        sample(&a, 50);
        assert_eq!(
            admitted(&a, &w).await,
            None,
            "5% idle: no start beside a run"
        );
        sample(&a, 900);
        assert_eq!(admitted(&a, &w).await, Some(1));
        sample(&a, 900);
        assert_eq!(
            admitted(&a, &w).await,
            None,
            "the hog waits for the timed runs"
        );
    }

    #[tokio::test]
    async fn runs_side_by_side_stay_within_the_weight_cap() {
        let (mut a, w) = admission(&[Cpu::Timed, Cpu::Timed, Cpu::Timed]);
        a.cap = 2;
        assert_eq!(admitted(&a, &w).await, Some(0));
        sample(&a, 900);
        assert_eq!(admitted(&a, &w).await, Some(1));
        sample(&a, 900);
        assert_eq!(admitted(&a, &w).await, None, "a third would weigh 3 > 2");
    }

    #[tokio::test]
    async fn a_short_run_that_ended_does_not_hold_back_the_next_start() {
        let (a, w) = admission(&[Cpu::Timed, Cpu::Timed, Cpu::Timed, Cpu::Timed]);
        let cancel = CancellationToken::new();
        assert_eq!(admitted(&a, &w).await, Some(0));
        sample(&a, 900);
        let short = a.next(&w, &cancel).await;
        assert_eq!(short.map(|u| u.vi), Some(1));
        assert_eq!(
            admitted(&a, &w).await,
            None,
            "run 1 started after the last sample: its load is not seen yet"
        );
        if let Some(short) = short {
            a.done(short, &w);
        }
        assert_eq!(
            admitted(&a, &w).await,
            Some(2),
            "run 1 ended: nothing in flight is unseen, no need to wait for a sample"
        );
    }
}
