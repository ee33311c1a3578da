//! A saved run, read back: `report` re-derives its verdicts from the saved histories, refuses
//! an edited one, and `--html` draws it in a real browser (headless Chromium).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{locklab, tempdir};

/// The browser the test draws with: Debian's `chromium`, or one the user named.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("LOCKLAB_CHROMIUM") {
        return p.into();
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(name))
            .find(|p| p.is_file());
        if let Some(p) = found {
            return p;
        }
    }
    panic!("no Chromium: install the Debian package `chromium` (scripts/setup does)");
}

/// Chromium, headless, with nothing that would reach out to the network.
fn browser(profile: &Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// A `data-NAME="…"` attribute of the page's body, as the browser left it.
fn body_attr(dom: &str, name: &str) -> String {
    let body = &dom[dom.find("<body").expect("a body")..];
    let body = &body[..body.find('>').expect("a body tag")];
    let key = format!("data-{name}=\"");
    let at = body
        .find(&key)
        .unwrap_or_else(|| panic!("no data-{name} on {body}"));
    let rest = &body[at + key.len()..];
    rest[..rest.find('"').expect("closing quote")].to_string()
}

#[test]
fn a_saved_run_re_derives_its_verdicts_and_draws_in_a_browser() {
    let tmp = tempdir();
    let out = tmp.path().join("results");
    let page = tmp.path().join("orphan-lock.html");
    let run = locklab(tmp.path())
        .args(["run", "orphan-lock", "--no-progress", "--out"])
        .arg(&out)
        .arg("--html")
        .arg(&page)
        .output()
        .expect("run locklab");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    let file = std::fs::read_dir(&out)
        .expect("results dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a results file");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    let variants = saved["scenarios"][0]["variants"]
        .as_array()
        .expect("variants");

    // The same verdicts, re-derived from the saved histories.
    let again = locklab(tmp.path())
        .arg("report")
        .arg(&file)
        .output()
        .expect("report");
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(0), "{err}");
    // Skipped variants (transaction-timeout before PostgreSQL 17) have no verdict to re-derive.
    let judged = variants
        .iter()
        .filter(|v| v["outcome"] != "skipped")
        .count();
    assert!(
        err.contains(&format!("re-derived {judged} verdicts")),
        "{err}"
    );

    // An edited history no longer bears the verdict out.
    let mut edited = saved.clone();
    let baseline = edited["scenarios"][0]["variants"]
        .as_array_mut()
        .expect("variants")
        .iter_mut()
        .find(|v| v["name"] == "baseline")
        .expect("baseline");
    for op in baseline["trace"]["ops"].as_array_mut().expect("ops") {
        op["outcome"] = serde_json::json!({"type": "ok"});
        op["end_ms"] = serde_json::json!(op["start_ms"].as_f64().unwrap_or(0.0) + 5.0);
    }
    let edited_file = tmp.path().join("edited.json");
    std::fs::write(&edited_file, edited.to_string()).expect("write");
    let refused = locklab(tmp.path())
        .arg("report")
        .arg(&edited_file)
        .output()
        .expect("report");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains("RE-CHECK DIFFERS orphan-lock/baseline: bookings_ok was 0, re-derived 20"),
        "{err}"
    );

    // The page, in a real browser: loaded without errors, every variant's lanes, the fault
    // in each, the release where the row was freed.
    let profile = tmp.path().join("chromium");
    let url = format!("file://{}", page.display());
    let dom = browser(&profile)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("start chromium");
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert_eq!(
        body_attr(&dom, "check"),
        "ok",
        "the page's script did not run"
    );
    assert_eq!(body_attr(&dom, "errors"), "0");
    assert_eq!(body_attr(&dom, "variants"), variants.len().to_string());
    let ran: Vec<_> = variants.iter().filter(|v| v["trace"].is_object()).collect();
    let clients = 20;
    let lanes: usize = body_attr(&dom, "lanes").parse().expect("a count");
    assert_eq!(lanes, ran.len() * clients, "a lane per client per variant");
    let faults: usize = body_attr(&dom, "faults").parse().expect("a count");
    assert_eq!(faults, ran.len(), "a fault marker per variant");
    // Every variant where the row was free again (released, or never locked by the holder),
    // and none where it stayed stuck.
    let freed = ran.iter().filter(|v| v["outcome"] != "stuck").count();
    assert!(ran.iter().any(|v| v["outcome"] == "released"));
    let releases: usize = body_attr(&dom, "releases").parse().expect("a count");
    assert_eq!(releases, freed, "a release marker where the row was freed");

    let png = tmp.path().join("page.png");
    let shot = browser(&profile)
        .arg("--window-size=1100,1600")
        .arg(format!("--screenshot={}", png.display()))
        .arg(&url)
        .output()
        .expect("start chromium");
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png).expect("a screenshot");
    assert_eq!(&bytes[1..4], b"PNG");
    assert!(
        bytes.len() > 50_000,
        "a page with lanes on it: {} bytes",
        bytes.len()
    );
}
