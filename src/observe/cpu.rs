//! CPU time from /proc: a throwaway server's (its postmaster, the backends it runs and those it
//! has reaped) and locklab's own, as a share of the machine over a window.

use std::time::Instant;

/// The fields of /proc/PID/stat that CPU accounting needs, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    pub ppid: u32,
    /// User and system time of the process itself (all its threads).
    pub own: u64,
    /// User and system time of its children it has waited for.
    pub reaped: u64,
}

/// Parses one /proc/PID/stat line. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted from its closing parenthesis.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field n is f[n - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: num(4)? as u32,
        own: num(14)? + num(15)?,
        reaped: num(16)? + num(17)?,
    })
}

/// The machine's idle and total jiffies since boot, over all CPUs, from /proc/stat's first
/// line (`cpu  user nice system idle iowait irq softirq steal …`): idle and iowait are idle.
pub fn parse_machine(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((idle, fields.iter().take(8).sum()))
}

/// [`parse_machine`] of this machine now.
pub fn machine_ticks() -> Option<(u64, u64)> {
    parse_machine(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn stat_of(pid: &str) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU ticks of `root` and every live process below it, plus what it and they have reaped: a
/// counter that only grows while the tree runs (a backend that exits moves from live to
/// reaped). `None` when `root` is gone or /proc is unreadable.
pub fn tree_ticks(root: u32) -> Option<u64> {
    let root_stat = stat_of(&root.to_string())?;
    let procs: Vec<(u32, Stat)> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            let pid = name.parse::<u32>().ok()?;
            Some((pid, stat_of(name)?))
        })
        .collect();
    Some(sum_tree(root, root_stat, &procs))
}

/// [`tree_ticks`] over a snapshot of the process table.
pub fn sum_tree(root: u32, root_stat: Stat, procs: &[(u32, Stat)]) -> u64 {
    let mut total = root_stat.own + root_stat.reaped;
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, st) in procs
            .iter()
            .filter(|(p, st)| st.ppid == parent && *p != root)
        {
            total += st.own + st.reaped;
            frontier.push(*pid);
        }
    }
    total
}

/// locklab's own CPU ticks (all threads).
pub fn self_ticks() -> Option<u64> {
    stat_of("self").map(|s| s.own)
}

/// The machine's busy CPU time since boot, all cores, in seconds: a counter for how much CPU a
/// stretch of work took (whoever else ran meanwhile counts too).
pub fn machine_busy_seconds() -> Option<f64> {
    let (idle, total) = machine_ticks()?;
    Some(total.saturating_sub(idle) as f64 / ticks_per_second())
}

fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// This machine's cores, as the runner counts them.
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// A counter's reading at the start of a window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    ticks: u64,
    at: Instant,
}

impl Window {
    pub fn start(ticks: Option<u64>) -> Option<Window> {
        Some(Window {
            ticks: ticks?,
            at: Instant::now(),
        })
    }

    /// The share of the whole machine (all cores = 100%) the counter grew by since the start.
    pub fn share_pct(&self, ticks_now: Option<u64>) -> Option<f64> {
        let secs = self.at.elapsed().as_secs_f64();
        share_pct(
            ticks_now?.checked_sub(self.ticks)?,
            secs,
            ticks_per_second(),
            cores(),
        )
    }
}

/// `ticks` of CPU over `secs` of wall time on `cores` cores, in percent of the machine.
pub fn share_pct(ticks: u64, secs: f64, ticks_per_second: f64, cores: f64) -> Option<f64> {
    (secs > 0.0).then(|| ticks as f64 / ticks_per_second / secs / cores * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_idle_counts_idle_and_iowait_of_the_first_eight_fields() {
        let stat = "cpu  100 5 50 800 20 3 2 1 7 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        assert_eq!(parse_machine(stat), Some((820, 981)));
        assert_eq!(parse_machine("intr 1 2 3"), None);
    }

    #[test]
    fn parses_a_stat_line_whose_name_has_spaces_and_parens() {
        let line = "4242 (postgres: x (y) z) S 4000 4242 4242 0 -1 4194560 100 0 0 0 \
                    7 3 20 5 20 0 1 0 100 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ppid: 4000,
                own: 10,
                reaped: 25
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 0 1"), None);
    }

    #[test]
    fn a_tree_sums_its_descendants_and_what_they_reaped() {
        let st = |ppid, own, reaped| Stat { ppid, own, reaped };
        let procs = [
            (10, st(1, 5, 100)),
            (11, st(10, 2, 0)),
            (12, st(11, 1, 1)),
            (13, st(1, 50, 0)), // not below the root
        ];
        assert_eq!(sum_tree(10, procs[0].1, &procs), 105 + 2 + 2);
    }

    #[test]
    fn a_share_is_of_all_cores() {
        assert_eq!(share_pct(200, 2.0, 100.0, 2.0), Some(50.0));
        assert_eq!(share_pct(1, 0.0, 100.0, 2.0), None);
    }
}
