//! The live view on a real terminal (tmux): the gauges under the progress bar while a variant
//! runs, and nothing of them when stderr is piped.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, locklab, tempdir};

/// A tmux of the test's own (its own socket), so nothing else's sessions are touched.
fn tmux(socket: &str) -> Command {
    let mut c = Command::new("tmux");
    c.args(["-L", socket]);
    c
}

#[test]
fn gauges_show_on_a_terminal_and_not_when_piped() {
    let tmp = tempdir();
    let socket = format!("locklab-live-{}", std::process::id());
    let shell = format!(
        "TMPDIR={} {} run orphan-lock --variant baseline --no-results; sleep 30",
        tmp.path().display(),
        bin()
    );
    let started = tmux(&socket)
        .args(["new-session", "-d", "-x", "160", "-y", "40", &shell])
        .status()
        .expect("tmux (Debian package tmux; scripts/setup installs it)");
    assert!(started.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut screen = String::new();
    while Instant::now() < deadline {
        let out = tmux(&socket)
            .args(["capture-pane", "-p"])
            .output()
            .expect("capture");
        screen = String::from_utf8_lossy(&out.stdout).to_string();
        if screen.contains("waiting on lock") && screen.contains("in flight") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = tmux(&socket).arg("kill-server").status();
    assert!(screen.contains("orphan-lock/baseline ["), "{screen}");
    for gauge in [
        "waiting on lock",
        "idle in transaction",
        "connections",
        "in flight",
    ] {
        assert!(screen.contains(gauge), "no `{gauge}` on\n{screen}");
    }
    assert!(screen.contains('█'), "no sparkline on\n{screen}");

    let piped = locklab(tmp.path())
        .args([
            "run",
            "orphan-lock",
            "--variant",
            "baseline",
            "--no-results",
        ])
        .output()
        .expect("run");
    assert_eq!(piped.status.code(), Some(0));
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !err.contains("waiting on lock") && !err.contains('█'),
        "{err}"
    );
}

#[test]
fn env_up_watch_shows_what_runs_against_the_server() {
    let tmp = tempdir();
    let env = common::EnvUp::start(tmp.path(), &["--watch"]);
    let run = locklab(tmp.path())
        .args([
            "run",
            "orphan-lock",
            "--variant",
            "baseline",
            "--no-results",
            "--pg-url",
        ])
        .arg(&env.url)
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(0));
    let later = env.later.lock().expect("lines").clone();
    drop(env);
    // Off a terminal, one plain line a second; while the holder sat frozen, the bookers
    // waited on its lock and its transaction sat idle.
    let during: Vec<&String> = later
        .iter()
        .filter(|l| l.contains("idle in transaction 1"))
        .collect();
    assert!(!during.is_empty(), "{later:#?}");
    assert!(
        during.iter().any(|l| l.contains("waiting on lock 2")),
        "{later:#?}"
    );
}
