//! Small text helpers shared by the command line, scenario files and reports.

use std::time::Duration;

/// `1.5s`, `250ms`: short and exact enough for tables and settings.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 {
        let s = ms / 1000.0;
        if s.fract() == 0.0 {
            format!("{s:.0}s")
        } else {
            format!("{s:.2}s")
        }
    } else if ms.fract() == 0.0 || ms >= 10.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{ms:.1}ms")
    }
}

/// The closest of `candidates` to `name`, if it is close enough to be a likely typo.
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= (c.len() / 2).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_name_suggests_typos_only() {
        let names = ["orphan-lock", "pool-deadlock", "setnx-race"];
        assert_eq!(nearest("orphan-lok", names), Some("orphan-lock"));
        assert_eq!(nearest("setnx", names), Some("setnx-race"));
        assert_eq!(nearest("completely-different", names), None);
    }

    #[test]
    fn durations_format_compactly() {
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.50s");
        assert_eq!(format_duration(Duration::from_secs(3)), "3s");
        assert_eq!(format_duration(Duration::from_millis(25)), "25ms");
    }
}
