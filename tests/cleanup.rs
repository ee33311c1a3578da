//! Nothing leaks: throwaway servers, worker processes and temp dirs are gone after Ctrl-C,
//! SIGTERM, and a SIGKILL of locklab itself.

mod common;
use common::*;

use std::process::Stdio;
use std::time::{Duration, Instant};

/// Starts a run and waits until its throwaway PostgreSQL and frozen holder exist.
fn start_run(tmp: &std::path::Path, out: &std::path::Path) -> std::process::Child {
    let child = locklab(tmp)
        .args([
            "run",
            "orphan-lock",
            "--variant",
            "baseline",
            "--param",
            "deadline=600s",
        ])
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn locklab");
    let needle = tmp.to_string_lossy().to_string();
    let until = Instant::now() + Duration::from_secs(30);
    // This run's holder (`__worker orphan-lock`, with this test's TMPDIR in its environment) exists once
    // postgres is up and the variant is running; other tests' holders must not count.
    while processes_mentioning_all(&["__worker", &needle]).is_empty() {
        assert!(Instant::now() < until, "the run did not get going");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child
}

#[test]
fn sigkill_of_locklab_leaves_no_server_and_no_temp_dir() {
    let tmp = tempdir();
    let out = tempdir();
    let mut child = start_run(tmp.path(), out.path());
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    assert_nothing_left(tmp.path(), Duration::from_secs(10));
}

#[test]
fn ctrl_c_stops_servers_writes_partial_results_and_exits_130() {
    let tmp = tempdir();
    let out = tempdir();
    let mut child = start_run(tmp.path(), out.path());
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_nothing_left(tmp.path(), Duration::from_secs(5));
    let files: Vec<_> = std::fs::read_dir(out.path()).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "one partial results file");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files[0].path()).unwrap()).unwrap();
    assert_eq!(report["interrupted"], true);
    assert_eq!(report["scenarios"][0]["variants"][0]["name"], "baseline");
}

#[test]
fn sigterm_stops_servers_like_ctrl_c() {
    let tmp = tempdir();
    let out = tempdir();
    let mut child = start_run(tmp.path(), out.path());
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_nothing_left(tmp.path(), Duration::from_secs(5));
}

#[test]
fn second_ctrl_c_exits_at_once_and_still_leaves_nothing() {
    let tmp = tempdir();
    let out = tempdir();
    let mut child = start_run(tmp.path(), out.path());
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(5));
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_nothing_left(tmp.path(), Duration::from_secs(10));
}
