//! Network namespaces of locklab's own, for faults that need a network between a client and
//! its server: a connection that goes silent without a FIN or an RST, as when a host vanishes
//! or a network splits.
//!
//! The design stays on loopback and never touches the machine's own network: the throwaway
//! server runs inside a namespace the run creates, locklab's sessions reach it through its
//! unix socket (a file, so it works across namespaces), and a client that is to be cut off
//! connects over TCP loopback inside the namespace. Cutting it off is an nftables rule in that
//! namespace, dropping the connection's packets both ways. Deleting the namespace takes its
//! rules with it; the guardian deletes it if locklab dies first.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

use super::guardian::Guardian;
use super::process::RunAs;

/// Where iproute2 keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Every namespace locklab makes is named with this prefix (and its pid), so a leak shows in
/// `ip netns list` and the cleanup tests can look for it.
pub const PREFIX: &str = "locklab-";

/// What to install for the namespace tools.
pub const PACKAGES: &str = "iproute2 nftables";

fn find_tool(name: &str) -> Option<PathBuf> {
    super::process::find_program(name, &[], &["/usr/sbin", "/sbin", "/usr/bin"])
}

/// Why this process cannot make a network fault, if it cannot: it needs root (CAP_NET_ADMIN and
/// CAP_SYS_ADMIN, to create a namespace and enter it), `ip` and `nft`.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "its fault is a network partition, made in a network namespace of locklab's own, \
             which needs root: run locklab as root (or with sudo)"
                .into(),
        );
    }
    for tool in ["ip", "nft"] {
        if find_tool(tool).is_none() {
            return Some(format!(
                "its fault is a network partition, which needs `{tool}`: install {PACKAGES} \
                 (scripts/setup does)"
            ));
        }
    }
    None
}

/// A network namespace of the run's own, with its loopback up. Deleted when dropped.
pub struct Netns {
    name: String,
    guardian: Arc<Guardian>,
    deleted: bool,
}

impl Netns {
    pub async fn create(guardian: Arc<Guardian>) -> anyhow::Result<Netns> {
        if let Some(why) = unavailable() {
            bail!("cannot create a network namespace: {why}");
        }
        let name = format!(
            "{PREFIX}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        // Watched before it exists: a SIGKILL between the two must not leak it.
        guardian.watch_netns(&name);
        let ns = Netns {
            name,
            guardian,
            deleted: false,
        };
        run(tool("ip")?.args(["netns", "add", &ns.name]), None)
            .await
            .context("could not create a network namespace")?;
        run(
            tool("ip")?.args(["-n", &ns.name, "link", "set", "lo", "up"]),
            None,
        )
        .await
        .context("could not bring up the namespace's loopback")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle to enter the namespace with, for a child about to be spawned.
    pub fn handle(&self) -> anyhow::Result<NetnsHandle> {
        let path = Path::new(NETNS_DIR).join(&self.name);
        let file = File::open(&path)
            .with_context(|| format!("could not open the namespace {}", path.display()))?;
        Ok(NetnsHandle(Arc::new(file)))
    }

    /// Drops every packet of the TCP connection whose client end is `client_port`, both ways,
    /// from now on: the peer neither answers nor hangs up. Local only: the rule lives in this
    /// namespace.
    pub async fn partition(&self, client_port: u16) -> anyhow::Result<()> {
        let rules = format!(
            "table inet locklab_partition {{\n\
               chain input {{\n\
                 type filter hook input priority 0; policy accept;\n\
                 tcp sport {client_port} drop\n\
                 tcp dport {client_port} drop\n\
               }}\n\
             }}\n"
        );
        let mut cmd = tool("nft")?;
        cmd.args(["-f", "-"]);
        self.handle()?.enter_before_exec(&mut cmd, None);
        run(&mut cmd, Some(rules))
            .await
            .context("could not add the partition's nftables rule")
    }

    /// Deletes the namespace (and with it its rules). Processes still inside keep it alive
    /// until they exit; the caller stops them.
    pub async fn delete(&mut self) {
        if self.deleted {
            return;
        }
        self.deleted = true;
        if let Ok(mut cmd) = tool("ip") {
            let _ = run(cmd.args(["netns", "delete", &self.name]), None).await;
        }
        self.guardian.forget_netns(&self.name);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted {
            // Reached on an unwind or an early return: delete without waiting on tokio.
            delete_blocking(&self.name);
            self.guardian.forget_netns(&self.name);
        }
    }
}

/// An open namespace file: a child spawned with it joins the namespace before it runs.
#[derive(Clone)]
pub struct NetnsHandle(Arc<File>);

impl NetnsHandle {
    /// Makes `cmd`'s child join the namespace, then (if `run_as`) drop root, before exec. Any
    /// other pre-exec step added later runs after these: the parent-death signal must be set
    /// after the change of user, which clears it.
    pub fn enter_before_exec(&self, cmd: &mut tokio::process::Command, run_as: Option<RunAs>) {
        let file = self.0.clone();
        // SAFETY: between fork and exec only setns, setgroups, setgid and setuid run:
        // async-signal-safe system calls, no allocation.
        unsafe {
            cmd.pre_exec(move || {
                use nix::unistd::{Gid, Uid};
                nix::sched::setns(&*file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                if let Some(who) = run_as {
                    nix::unistd::setgroups(&[])?;
                    nix::unistd::setgid(Gid::from_raw(who.gid))?;
                    nix::unistd::setuid(Uid::from_raw(who.uid))?;
                }
                Ok(())
            });
        }
    }
}

fn tool(name: &str) -> anyhow::Result<tokio::process::Command> {
    let path = find_tool(name)
        .with_context(|| format!("`{name}` not found: install {PACKAGES} (scripts/setup does)"))?;
    Ok(tokio::process::Command::new(path))
}

async fn run(cmd: &mut tokio::process::Command, stdin: Option<String>) -> anyhow::Result<()> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().context("could not start it")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
        drop(pipe);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait_with_output())
        .await
        .context("it did not finish within 10 s")??;
    if !out.status.success() {
        bail!(
            "it failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes a namespace of locklab's without a runtime: the guardian's way after a SIGKILLed
/// locklab, and a dropped [`Netns`]'s.
pub fn delete_blocking(name: &str) {
    if !name.starts_with(PREFIX) {
        return;
    }
    if let Some(ip) = find_tool("ip") {
        let _ = std::process::Command::new(ip)
            .args(["netns", "delete", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
