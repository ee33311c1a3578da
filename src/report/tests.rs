//! The report's outputs on a hand-built run, as snapshots.

use super::*;

#[test]
fn failures_are_classified_by_what_the_variant_is_for() {
    assert_eq!(Failure::classify(true, 10, 10, false), None);
    assert_eq!(
        Failure::classify(true, 1, 0, false),
        Some(Failure::MitigationRegressed)
    );
    assert_eq!(
        Failure::classify(false, 3, 0, false),
        Some(Failure::BaselineNoLongerReproduces)
    );
    assert_eq!(
        Failure::classify(true, 10, 9, false),
        Some(Failure::Inconsistent)
    );
    assert_eq!(
        Failure::classify(false, 10, 10, true),
        Some(Failure::HarnessError)
    );
}

/// Every exporter over one hand-built report: a change to any output shows as a diff.
#[test]
fn exporters_render_the_fixture_report() {
    use super::{json::Json, junit::Junit, markdown::Markdown, table::Tables};
    let r = fixtures::report();
    let table = Tables {
        fit_terminal: false,
    };
    insta::assert_snapshot!("table", table.render(&r));
    insta::assert_snapshot!("markdown", Markdown.render(&r));
    insta::assert_snapshot!("json", Json.render(&r));
    insta::assert_snapshot!("junit", Junit.render(&r));
}

#[test]
fn failure_lines_name_the_kind_the_expectation_and_the_figure() {
    let r = fixtures::report();
    assert_eq!(
        r.failures(),
        vec!["MITIGATION REGRESSED orphan-lock/broken: `not cut_off` did not hold: was true"]
    );
    assert_eq!(r.exit_code(), crate::error::exit::EXPECTATION_FAILED);

    // A results file without `failure` still gets its kind from the verdict.
    let mut old = r.scenarios[0].variants[2].clone();
    old.failure = None;
    assert_eq!(old.failure_kind(), Some(Failure::MitigationRegressed));
    old.mitigated = false;
    assert_eq!(
        old.failure_kind(),
        Some(Failure::BaselineNoLongerReproduces)
    );
    assert_eq!(r.scenarios[0].variants[1].failure_kind(), None);
}

#[test]
fn durations_never_round_up_into_a_longer_form() {
    let ms = |v: f64| fmt_ms(Some(&serde_json::json!(v)));
    assert_eq!(ms(999.7), "1.00 s");
    assert_eq!(ms(999.4), "999 ms");
    assert_eq!(ms(9.97), "10 ms");
    assert_eq!(ms(9.94), "9.9 ms");
    assert_eq!(ms(1500.0), "1.50 s");
}
