//! The guardian: a small process (locklab itself, re-executed) that outlives a SIGKILLed
//! locklab just long enough to make sure its servers are gone and its temp dirs removed.
//!
//! locklab tells it what to watch over a pipe. When the pipe closes without a `done`
//! (locklab died), it gives the servers a moment to act on their own death signal, kills
//! what is left, and removes the directories and network namespaces. Servers get PDEATHSIG
//! too; the guardian is the part that can also delete files and namespaces.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{SigHandler, Signal};

use super::process::{group_alive, signal_group};

pub struct Guardian {
    pipe: Mutex<Option<ChildStdin>>,
    child: Mutex<Option<Child>>,
}

impl Guardian {
    pub fn start(exe: &Path) -> anyhow::Result<Guardian> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(exe);
        cmd.arg("__guardian")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own session: a terminal's Ctrl-C or a process-group kill aimed at locklab
        // must not take the guardian down with it.
        // SAFETY: setsid is an async-signal-safe system call.
        unsafe {
            cmd.pre_exec(|| {
                let _ = nix::unistd::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start the cleanup guardian ({})", exe.display()))?;
        let pipe = child.stdin.take();
        Ok(Guardian {
            pipe: Mutex::new(pipe),
            child: Mutex::new(Some(child)),
        })
    }

    fn say(&self, line: String) {
        if let Ok(mut pipe) = self.pipe.lock()
            && let Some(p) = pipe.as_mut()
        {
            let _ = writeln!(p, "{line}");
            let _ = p.flush();
        }
    }

    pub fn watch_dir(&self, dir: &Path) {
        self.say(format!("dir {}", dir.display()));
    }

    pub fn forget_dir(&self, dir: &Path) {
        self.say(format!("forget-dir {}", dir.display()));
    }

    pub fn watch_group(&self, pgid: u32) {
        self.say(format!("group {pgid}"));
    }

    pub fn forget_group(&self, pgid: u32) {
        self.say(format!("forget-group {pgid}"));
    }

    pub fn watch_netns(&self, name: &str) {
        self.say(format!("netns {name}"));
    }

    pub fn forget_netns(&self, name: &str) {
        self.say(format!("forget-netns {name}"));
    }

    /// Normal end: everything was cleaned by its owner; let the guardian go.
    pub fn finish(&self) {
        self.say("done".into());
        if let Ok(mut pipe) = self.pipe.lock() {
            pipe.take();
        }
        if let Ok(mut child) = self.child.lock()
            && let Some(mut c) = child.take()
        {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        // Closing the pipe without `done` makes the guardian clean up whatever is still listed.
        if let Ok(mut pipe) = self.pipe.lock() {
            pipe.take();
        }
    }
}

/// The guardian process's main loop (`locklab __guardian`).
pub fn guardian_main() -> i32 {
    // Only the pipe decides when to act: a terminal's Ctrl-C or hang-up does not.
    for sig in [Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler, so nothing runs in signal context.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigIgn) };
    }
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    let mut groups: BTreeSet<u32> = BTreeSet::new();
    let mut namespaces: BTreeSet<String> = BTreeSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.split_once(' ') {
            Some(("dir", p)) => {
                dirs.insert(PathBuf::from(p));
            }
            Some(("forget-dir", p)) => {
                dirs.remove(Path::new(p));
            }
            Some(("group", g)) => {
                if let Ok(g) = g.parse() {
                    groups.insert(g);
                }
            }
            Some(("forget-group", g)) => {
                if let Ok(g) = g.parse::<u32>() {
                    groups.remove(&g);
                }
            }
            Some(("netns", n)) => {
                namespaces.insert(n.to_string());
            }
            Some(("forget-netns", n)) => {
                namespaces.remove(n);
            }
            _ if line == "done" => return 0,
            _ => {}
        }
    }
    cleanup(&groups, &dirs, &namespaces);
    0
}

fn cleanup(groups: &BTreeSet<u32>, dirs: &BTreeSet<PathBuf>, namespaces: &BTreeSet<String>) {
    // Servers got their death signal from the kernel; give them a moment to shut down
    // cleanly (postgres removes its shared memory on SIGQUIT), then kill what is left.
    let deadline = Instant::now() + Duration::from_secs(3);
    while groups.iter().any(|g| group_alive(*g)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for g in groups {
        if group_alive(*g) {
            signal_group(*g, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while groups.iter().any(|g| group_alive(*g)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    // Last: its processes are gone, so the namespace (and its nftables rules) goes with its name.
    for n in namespaces {
        super::netns::delete_blocking(n);
    }
}
