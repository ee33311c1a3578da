//! Child processes that cannot outlive locklab.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. So
//! every tied child is forked by one spawner thread that lives as long as locklab itself; forking
//! from a tokio blocking-pool thread would kill the server when that thread idles out.

use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::Signal;
use nix::unistd::{AccessFlags, Pid};
use tokio::process::{Child, Command};

type Job = (
    Command,
    libc::c_int,
    tokio::runtime::Handle,
    tokio::sync::oneshot::Sender<io::Result<Child>>,
);

fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        // Detached on purpose: it must live until the process exits.
        std::thread::Builder::new()
            .name("locklab-spawner".into())
            .spawn(move || {
                for (mut cmd, sig, handle, reply) in rx {
                    let _rt = handle.enter();
                    let _ = reply.send(spawn_with_deathsig(&mut cmd, sig));
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| crate::say!("locklab: could not start the spawner thread: {e}"));
        Mutex::new(tx)
    })
}

fn spawn_with_deathsig(cmd: &mut Command, sig: libc::c_int) -> io::Result<Child> {
    let parent = nix::unistd::getpid();
    let sig = Signal::try_from(sig).map_err(io::Error::from)?;
    // SAFETY: between fork and exec only prctl and getppid run: async-signal-safe system calls,
    // no allocation (the error built on failure is a raw OS error).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(sig).map_err(io::Error::from)?;
            // The parent may have died before prctl took effect.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Spawns `cmd` so that it receives `deathsig` the moment locklab dies, however it dies.
/// The child is put in its own process group, so a terminal's Ctrl-C reaches only locklab,
/// which then stops its children in order.
pub async fn spawn_tied(mut cmd: Command, deathsig: libc::c_int) -> anyhow::Result<Child> {
    cmd.process_group(0);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = (cmd, deathsig, tokio::runtime::Handle::current(), tx);
    spawner()
        .lock()
        .map_err(|_| anyhow::anyhow!("the spawner thread is gone"))?
        .send(job)
        .map_err(|_| anyhow::anyhow!("the spawner thread is gone"))?;
    rx.await
        .context("the spawner thread did not answer")?
        .context("could not start a child process")
}

/// Sends `sig` to process `pid` (0 only asks whether it exists); false where it failed, e.g.
/// a process that is gone (ESRCH).
pub fn signal(pid: u32, sig: libc::c_int) -> bool {
    send(pid as libc::pid_t, sig)
}

/// As [`signal`], to every process of the group `pgid` leads.
pub fn signal_group(pgid: u32, sig: libc::c_int) -> bool {
    send(-(pgid as libc::pid_t), sig)
}

fn send(pid: libc::pid_t, sig: libc::c_int) -> bool {
    let sig = match sig {
        0 => None,
        n => match Signal::try_from(n) {
            Ok(s) => Some(s),
            Err(_) => return false,
        },
    };
    nix::sys::signal::kill(Pid::from_raw(pid), sig).is_ok()
}

pub fn group_alive(pgid: u32) -> bool {
    signal_group(pgid, 0)
}

/// Stops a child that leads its own process group: `first` (e.g. SIGQUIT for postgres), a
/// grace period, then SIGKILL for the whole group. Always reaps the child.
pub async fn stop_group(child: &mut Child, first: libc::c_int, grace: Duration) {
    let Some(pid) = child.id() else {
        return; // already reaped
    };
    signal(pid, first);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
    // Stragglers in the group (a postgres backend, say) must not outlive the leader.
    let deadline = tokio::time::Instant::now() + grace;
    while group_alive(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if group_alive(pid) {
        signal_group(pid, libc::SIGKILL);
    }
}

/// The unprivileged account to run a server as when locklab runs as root.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// `postgres` where that account exists, else `nobody`; `None` when not root.
pub fn unprivileged_account() -> Option<RunAs> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    // getpwnam_r underneath: safe from the several lanes that set up servers at once.
    for name in ["postgres", "nobody"] {
        if let Ok(Some(user)) = nix::unistd::User::from_name(name) {
            return Some(RunAs {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            });
        }
    }
    Some(RunAs {
        uid: 65534,
        gid: 65534,
    })
}

pub fn chown_tree(path: &std::path::Path, who: RunAs) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(who.uid), Some(who.gid))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), who)?;
        }
    }
    Ok(())
}

/// Copies a directory tree, keeping file modes.
pub fn copy_tree(src: &std::path::Path, dst: &std::path::Path) -> io::Result<()> {
    std::fs::create_dir_all(dst)?;
    std::fs::set_permissions(dst, std::fs::metadata(src)?.permissions())?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

/// Where throwaway data dirs go: `$TMPDIR` when set, else RAM-backed `/dev/shm` where it is
/// writable (a throwaway server has no reason to wait on a disk), else the temp dir.
pub fn scratch_root() -> std::path::PathBuf {
    if std::env::var_os("TMPDIR").is_none() {
        let shm = std::path::Path::new("/dev/shm");
        let writable = nix::unistd::access(shm, AccessFlags::W_OK | AccessFlags::X_OK).is_ok();
        if shm.is_dir() && writable {
            return shm.to_path_buf();
        }
    }
    std::env::temp_dir()
}

/// A fresh, uniquely named directory under [`scratch_root`].
pub fn make_temp_dir(prefix: &str) -> io::Result<std::path::PathBuf> {
    let root = scratch_root();
    for _ in 0..16 {
        let p = root.join(format!(
            "{prefix}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("could not create a unique temp dir"))
}

/// The program `name` in the first directory that has it: `before`, then PATH, then `after`
/// (where distributions keep programs off a user's PATH, e.g. /usr/sbin).
pub fn find_program(
    name: &str,
    before: &[std::path::PathBuf],
    after: &[&str],
) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    before
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .chain(after.iter().map(std::path::PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

/// Makes sure the process may have `need` files open at once (each connection is one), raising
/// its soft limit up to the hard one where needed. The error says what to do instead.
pub fn ensure_open_files(need: u64) -> Result<(), String> {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok(()); // unknown: let the connections say so if it is too low
    };
    if soft >= need || (hard >= need && setrlimit(Resource::RLIMIT_NOFILE, need, hard).is_ok()) {
        return Ok(());
    }
    Err(format!(
        "the run needs {need} open files (one per connection) and this process may open {soft} \
         (hard limit {hard}): raise it with `ulimit -n {need}`, or run against a server with fewer \
         connection slots"
    ))
}
