//! Nothing leaks: throwaway servers, worker processes and temp dirs are gone after Ctrl-C,
//! SIGTERM, and a SIGKILL of locklab itself.

mod common;
use common::*;

use std::time::Duration;

/// Starts a run and waits until its throwaway PostgreSQL and frozen holder exist.
fn start_run(tmp: &std::path::Path, out: &std::path::Path) -> std::process::Child {
    let out = out.to_string_lossy().to_string();
    let child = spawn_quiet(
        tmp,
        &[
            "run",
            "orphan-lock",
            "--variant",
            "baseline",
            "--param",
            "deadline=600s",
            "--out",
            &out,
        ],
    );
    let needle = tmp.to_string_lossy().to_string();
    // This run's holder (`__worker orphan-lock`, with this test's TMPDIR in its environment) exists once
    // postgres is up and the variant is running; other tests' holders must not count.
    wait_until("the run getting going", || {
        !processes_mentioning_all(&["__worker", &needle]).is_empty()
    });
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
    let baseline = &report["scenarios"][0]["variants"][0];
    assert_eq!(baseline["name"], "baseline");
    // In flight at the interrupt: no verdict on a history the interrupt ended.
    assert_eq!(
        baseline["skipped"], "cut short by the interrupt: no verdict",
        "{baseline:#}"
    );
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

/// Whoever reads locklab's stderr may be gone (a CI step killed, a pipe into `head`): a signal
/// must still wind everything down. (Writing the "interrupted" line used to panic the signal
/// handler, and the servers stayed up.)
#[test]
fn sigterm_with_stderr_gone_still_stops_the_servers() {
    use std::io::BufRead;
    let tmp = tempdir();
    let mut child = locklab(tmp.path())
        .args(["env", "up"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn env up");
    // Close the read end of stderr before anything is written to it.
    drop(child.stderr.take());
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    assert!(
        lines
            .next()
            .and_then(Result::ok)
            .is_some_and(|l| l.starts_with("PostgreSQL")),
        "env up came up"
    );
    std::thread::spawn(move || for _ in lines {});
    signal(&child, libc::SIGTERM);
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::time::Instant::now() > until {
            signal(&child, libc::SIGKILL);
            panic!("env up did not stop on SIGTERM with its stderr gone");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_nothing_left(tmp.path(), Duration::from_secs(5));
}
