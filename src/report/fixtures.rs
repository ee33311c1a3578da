//! Hand-built reports for the exporters' tests.

use super::*;
use crate::check::expect::Verdict;
use serde_json::json;

/// The fixture's scenario run at two `--sweep clients=` points; the second one broken.
pub fn sweep() -> RunReport {
    let mut r = report();
    let mut a = r.scenarios[0].clone();
    a.swept = vec![("clients".into(), json!(5))];
    a.variants.retain(|v| v.name != "broken");
    let mut b = r.scenarios[0].clone();
    b.swept = vec![("clients".into(), json!(100))];
    r.scenarios = vec![a, b];
    r
}

/// A hand-built report: one stuck baseline, one mitigated variant that held, one that failed.
pub fn report() -> RunReport {
    let exp = |what: &str, verdict: Verdict, measured: &str| ExpectationResult {
        what: what.into(),
        held: verdict == Verdict::Held,
        verdict,
        measured: measured.into(),
    };
    let variant =
        |name: &str, mitigated: bool, outcome: &str, lock_held: f64, cut_off: bool| VariantReport {
            name: name.into(),
            mitigated,
            shows: "what it shows".into(),
            settings: BTreeMap::new(),
            outcome: outcome.into(),
            expectations: vec![],
            expectations_held: true,
            metrics: [
                ("lock_held_ms".to_string(), json!(lock_held)),
                ("cut_off".to_string(), json!(cut_off)),
                ("p50_ms".to_string(), json!(null)),
                ("p99_ms".to_string(), json!(null)),
            ]
            .into(),
            lower_bounds: vec![],
            requests: Requests::default(),
            warnings: vec![],
            wall_ms: 100,
            error: None,
            runs: 1,
            runs_held: 1,
            outcomes: BTreeMap::new(),
            repeats: vec![],
            failure: None,
            server_settings: BTreeMap::new(),
            skipped: None,
            trace: None,
        };
    let mut baseline = variant("baseline", false, "stuck", 3000.4, true);
    baseline.lower_bounds = vec!["lock_held_ms".into()];
    baseline.requests.stuck = 20;
    baseline.expectations = vec![exp("cut_off", Verdict::Held, "was true")];
    let mut mitigated = variant("mitigated", true, "released", 1002.0, false);
    mitigated.requests = Requests {
        ok: 20,
        failed: 31,
        stuck: 0,
        lost: 0,
        errors: [("55P03".to_string(), 31)].into(),
    };
    mitigated.metrics.insert("p50_ms".into(), json!(52.5));
    mitigated.metrics.insert("p99_ms".into(), json!(1210.0));
    mitigated.expectations = vec![exp(
        "lock_held_ms <= idle_timeout * 1.5",
        Verdict::Held,
        "was 1002, expected <= 1500",
    )];
    let mut broken = variant("broken", true, "stuck", 3000.0, true);
    broken.lower_bounds = vec!["lock_held_ms".into()];
    broken.expectations_held = false;
    broken.runs_held = 0;
    broken.failure = Some(Failure::MitigationRegressed);
    broken.expectations = vec![exp("not cut_off", Verdict::Violated, "was true")];
    RunReport {
        locklab: "0.1.0".into(),
        scenarios: vec![ScenarioReport {
            name: "orphan-lock".into(),
            summary: "A frozen holder keeps a row locked".into(),
            source: "built-in orphan-lock.toml".into(),
            target: "throwaway PostgreSQL".into(),
            time_scale: 0.1,
            params: BTreeMap::new(),
            swept: Vec::new(),
            harm: Harm {
                metric: "lock_held_ms".into(),
                label: "row locked".into(),
            },
            columns: vec![],
            variants: vec![
                baseline,
                mitigated,
                broken,
                VariantReport::skipped(
                    "through-pooler",
                    false,
                    "what it shows",
                    "it runs through a pooler".into(),
                ),
            ],
        }],
        wall_ms: 4200,
        interrupted: false,
    }
}
