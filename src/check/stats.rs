//! Exact statistics over raw samples: at this scale a sorted Vec is enough.

/// The `p`-th percentile (0..=100) by nearest rank; `None` for no samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Rounds to one decimal, for figures meant to be read.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A JSON number rounded to 0.1, or null when there is nothing to report.
pub fn json_ms(x: Option<f64>) -> serde_json::Value {
    match x {
        Some(v) => serde_json::json!(round1(v)),
        None => serde_json::Value::Null,
    }
}

/// The median of latencies in ms as a metric value (0.1 ms, null for none): the `p50_ms` of
/// every checker.
pub fn p50(latencies_ms: &[f64]) -> serde_json::Value {
    json_ms(percentile(latencies_ms, 50.0))
}

/// The 99th percentile of latencies in ms as a metric value: every checker's `p99_ms`.
pub fn p99(latencies_ms: &[f64]) -> serde_json::Value {
    json_ms(percentile(latencies_ms, 99.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50.0), Some(50.0));
        assert_eq!(percentile(&xs, 99.0), Some(99.0));
        assert_eq!(percentile(&xs, 100.0), Some(100.0));
        assert_eq!(percentile(&xs, 0.0), Some(1.0));
    }

    #[test]
    fn percentile_of_unsorted_and_tiny_inputs() {
        assert_eq!(percentile(&[5.0, 1.0, 3.0], 50.0), Some(3.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn json_ms_rounds_and_nulls() {
        assert_eq!(json_ms(Some(1.26)), serde_json::json!(1.3));
        assert_eq!(json_ms(None), serde_json::Value::Null);
    }
}
