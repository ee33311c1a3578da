//! Helpers for driving the locklab binary against real servers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_locklab")
}

/// A locklab command whose temp files land in `tmp`, so a test can check nothing is left.
pub fn locklab(tmp: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env("TMPDIR", tmp)
        .env_remove("LOCKLAB_PG_URL")
        .env_remove("LOCKLAB_REDIS_URL");
    c
}

/// A temp dir for one test, RAM-backed where the machine has /dev/shm (as locklab's own).
pub fn tempdir() -> tempfile::TempDir {
    let mut b = tempfile::Builder::new();
    b.prefix("locklab-test-");
    match std::path::Path::new("/dev/shm").is_dir() {
        true => b.tempdir_in("/dev/shm"),
        false => b.tempdir(),
    }
    .expect("temp dir")
}

/// Runs `locklab run ... --format json` and returns (exit code, parsed report, stderr).
pub fn run_json(tmp: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = locklab(tmp)
        .arg("run")
        .args(args)
        .args(["--format", "json", "--no-results"])
        .output()
        .expect("run locklab");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code().unwrap_or(-1), json, stderr)
}

/// The variant named `name` of the first scenario in a report.
pub fn variant<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["scenarios"][0]["variants"]
        .as_array()
        .expect("variants")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no variant {name} in {report:#}"))
}

pub fn metric(v: &serde_json::Value, name: &str) -> f64 {
    v["metrics"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("metric {name} missing in {v:#}"))
}

/// Processes whose command line or environment mentions `needle`. Every process locklab
/// starts inherits its TMPDIR, so this finds the frozen holder and the guardian too.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    processes_mentioning_all(&[needle])
}

/// Processes whose command line, environment or working directory mentions every one of
/// `needles` (redis-server rewrites its command line as its title, and works in its data dir).
pub fn processes_mentioning_all(needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let read = |f: &str| {
            std::fs::read(entry.path().join(f))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default()
        };
        let cmd = read("cmdline");
        let cwd = std::fs::read_link(entry.path().join("cwd"))
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        let all = format!("{cmd} {} {cwd}", read("environ"));
        if needles.iter().all(|n| all.contains(n)) {
            found.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// The network namespaces a locklab process with this pid made that still exist.
pub fn namespaces_of(pid: u32) -> Vec<String> {
    let prefix = format!("locklab-{pid}-");
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Waits until the namespaces of locklab `pid` are gone; panics with what is left.
pub fn assert_no_namespace_left(pid: u32, within: Duration) {
    let until = Instant::now() + within;
    while !namespaces_of(pid).is_empty() {
        if Instant::now() > until {
            panic!("left behind: network namespaces {:?}", namespaces_of(pid));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether this process may make network namespaces (root). Where it may not, locklab skips
/// the network-fault variants with the reason, and that is what the tests check instead.
pub fn can_make_namespaces() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Waits until `tmp` is empty and no process mentions it; panics with what is left.
/// `locklab ARGS` in the background, its output discarded: a run a test will signal.
pub fn spawn_quiet(tmp: &Path, args: &[&str]) -> Child {
    locklab(tmp)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn locklab")
}

/// Waits (polling every 20 ms) until `ready`, failing the test with `what` after 30 s.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < until, "{what} within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn assert_nothing_left(tmp: &Path, within: Duration) {
    let needle = tmp.to_string_lossy().to_string();
    let until = Instant::now() + within;
    loop {
        let files: Vec<_> = std::fs::read_dir(tmp)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let procs = processes_mentioning(&needle);
        if files.is_empty() && procs.is_empty() {
            return;
        }
        if Instant::now() > until {
            panic!("left behind after {within:?}: files {files:?}, processes {procs:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling a child we spawned.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// A session on a test's server, and the runtime to drive it with `block_on`.
pub fn connect(url: &str) -> (tokio::runtime::Runtime, tokio_postgres::Client) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let c = rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test's server");
        tokio::spawn(conn);
        c
    });
    (rt, c)
}

/// `locklab env up` in the background; its URL; stopped with Ctrl-C (SIGINT) on drop.
pub struct EnvUp {
    pub child: Child,
    pub url: String,
    /// The throwaway PgBouncer (transaction pooling) in front of `url`.
    pub pooler_url: String,
    pub redis_url: String,
    /// What env up printed after the URLs, line by line.
    pub later: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl EnvUp {
    pub fn start(tmp: &Path, extra: &[&str]) -> EnvUp {
        let mut child = locklab(tmp)
            .args(["env", "up"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn env up");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| l.strip_prefix("PostgreSQL").map(|u| u.trim().to_string()))
            .expect("env up prints the PostgreSQL URL first");
        let pooler_url = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| {
                l.strip_prefix("PgBouncer")
                    .and_then(|u| u.split_whitespace().next().map(str::to_string))
            })
            .expect("env up prints the PgBouncer URL second");
        let redis_url = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| l.strip_prefix("Redis").map(|u| u.trim().to_string()))
            .expect("env up prints the Redis URL third");
        // Keep draining stdout so env up never blocks on a full pipe; keep what it says.
        let later = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = later.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(mut k) = keep.lock() {
                    k.push(line);
                }
            }
        });
        EnvUp {
            child,
            url,
            pooler_url,
            redis_url,
            later,
        }
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        signal(&self.child, libc::SIGINT);
        self.child.wait().expect("wait env up")
    }
}

impl Drop for EnvUp {
    fn drop(&mut self) {
        signal(&self.child, libc::SIGINT);
        let _ = self.child.wait();
    }
}
