//! The live view: what the observers see right now, drawn under a variant's progress bar on a
//! terminal. A line per gauge (sessions waiting on the lock, idle in transaction, connections,
//! clients ok / failed / waiting, the holder's idle age) with its value and a sparkline of the
//! last few seconds; one line per variant when several run side by side.
//!
//! The runner puts a [`Live`] in scope around a variant's code ([`scope`]); observers and the
//! workload driver pick it up with [`current`] when they start, and feed it. Out of scope (off
//! a terminal, `--no-progress`, tests) there is none, and nothing is drawn or counted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The gauges in the order they are drawn; any other name follows them.
const ORDER: &[&str] = &[
    WAITING_ON_LOCK,
    IDLE_IN_TRANSACTION,
    CONNECTIONS,
    HOLDER_IDLE_S,
    OLDEST_IDLE_TX_S,
    LOCK_KEY,
    CLIENTS_OK,
    CLIENTS_FAILED,
    CLIENTS_WAITING,
];
pub const WAITING_ON_LOCK: &str = "waiting on lock";
pub const IDLE_IN_TRANSACTION: &str = "idle in transaction";
pub const CONNECTIONS: &str = "connections";
pub const HOLDER_IDLE_S: &str = "holder idle in tx, s";
pub const LOCK_KEY: &str = "lock key set";
pub const CLIENTS_OK: &str = "ok";
pub const CLIENTS_FAILED: &str = "failed";
pub const CLIENTS_WAITING: &str = "in flight";
/// `env up --watch`: how long the oldest open transaction has sat idle.
pub const OLDEST_IDLE_TX_S: &str = "oldest idle in tx, s";

/// Values kept per gauge: the sparkline's width, at one every [`TICK`].
const WIDTH: usize = 24;
const TICK: Duration = Duration::from_millis(250);
const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

#[derive(Debug, Clone, PartialEq)]
struct Gauge {
    name: &'static str,
    now: f64,
    /// The last values, oldest first, one per tick.
    past: Vec<f64>,
}

/// A variant's gauges, and where they are drawn.
#[derive(Clone)]
pub struct Live {
    gauges: Arc<Mutex<Vec<Gauge>>>,
    lines: Arc<Vec<ProgressBar>>,
    compact: bool,
}

tokio::task_local! {
    static LIVE: Live;
}

/// The live view in scope, if any.
pub fn current() -> Option<Live> {
    LIVE.try_with(Clone::clone).ok()
}

/// Runs `f` with `live` in scope (or none).
pub async fn scope<F: Future>(live: Option<Live>, f: F) -> F::Output {
    match live {
        Some(l) => LIVE.scope(l, f).await,
        None => f.await,
    }
}

impl Live {
    /// A live view drawn after `below` in `multi`: a line per gauge, or one line for all of
    /// them when `compact` (several variants on screen at once).
    pub fn new(multi: &MultiProgress, below: &ProgressBar, compact: bool) -> Live {
        let rows = if compact { 1 } else { ORDER.len() };
        let style = ProgressStyle::with_template("{wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let mut lines = Vec::with_capacity(rows);
        let mut after = below.clone();
        for _ in 0..rows {
            let line = multi.insert_after(&after, ProgressBar::new_spinner());
            line.set_style(style.clone());
            after = line.clone();
            lines.push(line);
        }
        Live {
            gauges: Arc::new(Mutex::new(Vec::new())),
            lines: Arc::new(lines),
            compact,
        }
    }

    /// A view with nowhere to draw, for tests and for `env up --watch` off a terminal.
    pub fn detached() -> Live {
        Live {
            gauges: Arc::new(Mutex::new(Vec::new())),
            lines: Arc::new(Vec::new()),
            compact: true,
        }
    }

    pub fn set(&self, name: &'static str, value: f64) {
        self.with(name, |g| g.now = value);
    }

    pub fn add(&self, name: &'static str, delta: f64) {
        self.with(name, |g| g.now += delta);
    }

    fn with(&self, name: &'static str, f: impl FnOnce(&mut Gauge)) {
        let Ok(mut gauges) = self.gauges.lock() else {
            return;
        };
        let at = match gauges.iter().position(|g| g.name == name) {
            Some(i) => i,
            None => {
                gauges.push(Gauge {
                    name,
                    now: 0.0,
                    past: Vec::new(),
                });
                gauges.sort_by_key(|g| ORDER.iter().position(|o| *o == g.name).unwrap_or(99));
                gauges.iter().position(|g| g.name == name).unwrap_or(0)
            }
        };
        f(&mut gauges[at]);
    }

    /// The gauges' values on one line, as they are now.
    fn line(&self) -> String {
        let Ok(gauges) = self.gauges.lock() else {
            return String::new();
        };
        gauges
            .iter()
            .map(|g| format!("{} {}", g.name, value(g.now)))
            .collect::<Vec<_>>()
            .join(" · ")
    }

    /// Moves every gauge one tick on, and returns what to draw.
    pub fn tick(&self) -> Vec<String> {
        let Ok(mut gauges) = self.gauges.lock() else {
            return Vec::new();
        };
        for g in gauges.iter_mut() {
            g.past.push(g.now);
            if g.past.len() > WIDTH {
                g.past.remove(0);
            }
        }
        match self.compact {
            true => {
                drop(gauges);
                vec![format!("{:>34} {}", "↳", self.line())]
            }
            false => gauges
                .iter()
                .map(|g| format!("{:>34} {:>6}  {}", g.name, value(g.now), sparkline(&g.past)))
                .collect(),
        }
    }

    /// Redraws every [`TICK`] until the returned task is aborted (see [`Live::finish`]).
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let live = self.clone();
        tokio::spawn(async move {
            loop {
                let text = live.tick();
                for (i, line) in live.lines.iter().enumerate() {
                    line.set_message(text.get(i).cloned().unwrap_or_default());
                }
                tokio::time::sleep(TICK).await;
            }
        })
    }

    /// Takes the lines off the screen.
    pub fn finish(&self) {
        for line in self.lines.iter() {
            line.finish_and_clear();
        }
    }
}

/// `env up --watch`: the same gauges for the whole server, whoever runs against it, until
/// `stop`. On a terminal they are drawn as lines; otherwise one plain line a second.
pub async fn watch_server(
    target: &crate::env::postgres::PgTarget,
    stop: tokio_util::sync::CancellationToken,
    on_terminal: bool,
) -> anyhow::Result<()> {
    use crate::env::postgres::Sql as _;
    let c = target.connect("locklab_watch").await?;
    let stmt = "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'), \
                       count(*) FILTER (WHERE state = 'idle in transaction'), \
                       count(*) FILTER (WHERE backend_type = 'client backend'), \
                       coalesce(max(extract(epoch FROM clock_timestamp() - state_change)::float8) \
                         FILTER (WHERE state = 'idle in transaction'), 0), \
                       current_setting('max_connections')::int8 \
                FROM pg_stat_activity WHERE pid <> pg_backend_pid()";
    let multi = MultiProgress::new();
    let head = multi.add(ProgressBar::new_spinner());
    head.set_style(
        ProgressStyle::with_template("{wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let live = match on_terminal {
        true => Live::new(&multi, &head, false),
        false => {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            Live::detached()
        }
    };
    let mut printed = std::time::Instant::now();
    loop {
        let row = c.one(stmt, &[]).await?;
        let max: i64 = row.get(4);
        live.set(WAITING_ON_LOCK, row.get::<_, i64>(0) as f64);
        live.set(IDLE_IN_TRANSACTION, row.get::<_, i64>(1) as f64);
        live.set(CONNECTIONS, row.get::<_, i64>(2) as f64);
        live.set(
            OLDEST_IDLE_TX_S,
            (row.get::<_, f64>(3) * 10.0).round() / 10.0,
        );
        let lines = live.tick();
        if on_terminal {
            head.set_message(format!(
                "server sessions (max_connections {max}), every 250 ms:"
            ));
            for (line, text) in live.lines.iter().zip(&lines) {
                line.set_message(text.clone());
            }
        } else if printed.elapsed() >= Duration::from_secs(1) {
            printed = std::time::Instant::now();
            let compact = Live {
                compact: true,
                ..live.clone()
            };
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), "{}", compact.line());
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.cancelled() => break,
        }
    }
    live.finish();
    head.finish_and_clear();
    Ok(())
}

fn value(v: f64) -> String {
    match v.fract() == 0.0 {
        true => format!("{v:.0}"),
        false => format!("{v:.1}"),
    }
}

/// The values as blocks, scaled to the largest (all low when every value is 0).
pub fn sparkline(values: &[f64]) -> String {
    let top = values.iter().copied().fold(0.0, f64::max);
    values
        .iter()
        .map(|v| match top > 0.0 {
            true => BLOCKS[((v / top) * 7.0).round().clamp(0.0, 7.0) as usize],
            false => BLOCKS[0],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_to_its_largest_value() {
        assert_eq!(sparkline(&[0.0, 10.0, 20.0]), "▁▅█");
        assert_eq!(sparkline(&[0.0, 0.0]), "▁▁");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn gauges_draw_in_a_fixed_order_with_their_recent_past() {
        let live = Live::detached();
        let wide = Live {
            compact: false,
            ..live.clone()
        };
        live.add(CLIENTS_OK, 1.0);
        live.set(WAITING_ON_LOCK, 20.0);
        wide.tick();
        live.set(WAITING_ON_LOCK, 10.0);
        let lines = wide.tick();
        assert!(
            lines[0]
                .trim_start()
                .starts_with("waiting on lock     10  █▅"),
            "{lines:?}"
        );
        assert!(
            lines[1].trim_start().starts_with("ok      1  ██"),
            "{lines:?}"
        );
        assert_eq!(live.tick()[0].trim_start(), "↳ waiting on lock 10 · ok 1");
        for _ in 0..WIDTH * 2 {
            wide.tick();
        }
        assert_eq!(wide.gauges.lock().unwrap()[0].past.len(), WIDTH);
    }

    #[tokio::test]
    async fn only_code_in_scope_sees_the_view() {
        assert!(current().is_none());
        let seen = scope(Some(Live::detached()), async { current().is_some() }).await;
        assert!(seen);
        assert!(!scope(None, async { current().is_some() }).await);
    }
}
