//! The live view: the gauges of a variant ([`crate::gauge`]) drawn under its progress bar on
//! a terminal. A line per gauge (sessions waiting on the lock, idle in transaction,
//! connections, clients ok / failed / waiting, the holder's idle age) with its value and a
//! sparkline of the last few seconds; one line per variant when several run side by side.
//! What is shown comes through the board alone: observers and the workload driver never see
//! the terminal.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::gauge::{
    Board, CONNECTIONS, IDLE_IN_TRANSACTION, OLDEST_IDLE_TX_S, ORDER, WAITING_ON_LOCK,
};

/// Values kept per gauge: the sparkline's width, at one every [`TICK`].
const WIDTH: usize = 24;
const TICK: Duration = Duration::from_millis(250);
const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A variant's board, its gauges' recent past, and where they are drawn.
#[derive(Clone)]
pub struct Live {
    board: Board,
    /// The last values of each gauge, oldest first, one per tick.
    past: Arc<Mutex<BTreeMap<&'static str, Vec<f64>>>>,
    lines: Arc<Vec<ProgressBar>>,
    compact: bool,
}

impl Live {
    /// A live view of `board` drawn after `below` in `multi`: a line per gauge, or one line
    /// for all of them when `compact` (several variants on screen at once).
    pub fn new(multi: &MultiProgress, below: &ProgressBar, compact: bool, board: Board) -> Live {
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
            board,
            past: Arc::default(),
            lines: Arc::new(lines),
            compact,
        }
    }

    /// A view with nowhere to draw, for tests and for `env up --watch` off a terminal.
    pub fn detached(board: Board) -> Live {
        Live {
            board,
            past: Arc::default(),
            lines: Arc::new(Vec::new()),
            compact: true,
        }
    }

    /// The gauges' values on one line, as they are now.
    fn line(&self) -> String {
        self.board
            .now()
            .iter()
            .map(|(name, now)| format!("{name} {}", value(*now)))
            .collect::<Vec<_>>()
            .join(" · ")
    }

    /// Moves every gauge one tick on, and returns what to draw.
    pub fn tick(&self) -> Vec<String> {
        let now = self.board.now();
        let Ok(mut past) = self.past.lock() else {
            return Vec::new();
        };
        for (name, v) in &now {
            let p = past.entry(name).or_default();
            p.push(*v);
            if p.len() > WIDTH {
                p.remove(0);
            }
        }
        match self.compact {
            true => vec![format!("{:>34} {}", "↳", self.line())],
            false => now
                .iter()
                .map(|(name, v)| {
                    let spark = past.get(name).map(|p| sparkline(p)).unwrap_or_default();
                    format!("{name:>34} {:>6}  {spark}", value(*v))
                })
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
    let board = Board::default();
    let live = match on_terminal {
        true => Live::new(&multi, &head, false, board.clone()),
        false => {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            Live::detached(board.clone())
        }
    };
    let mut printed = std::time::Instant::now();
    loop {
        let row = c.one(stmt, &[]).await?;
        let max: i64 = row.get(4);
        board.set(WAITING_ON_LOCK, row.get::<_, i64>(0) as f64);
        board.set(IDLE_IN_TRANSACTION, row.get::<_, i64>(1) as f64);
        board.set(CONNECTIONS, row.get::<_, i64>(2) as f64);
        board.set(
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
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), "{}", live.line());
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
        use crate::gauge::CLIENTS_OK;
        let board = Board::default();
        let live = Live::detached(board.clone());
        let wide = Live {
            compact: false,
            ..live.clone()
        };
        board.add(CLIENTS_OK, 1.0);
        board.set(WAITING_ON_LOCK, 20.0);
        wide.tick();
        board.set(WAITING_ON_LOCK, 10.0);
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
        assert_eq!(wide.past.lock().unwrap()[WAITING_ON_LOCK].len(), WIDTH);
    }
}
