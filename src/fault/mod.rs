//! Faults: what goes wrong with a lock holder in the middle of its work.

use crate::env::process;
use crate::env::worker::Worker;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGSTOP: the process is frozen, its socket stays open (a hung function, a GC pause).
    Freeze,
    /// SIGKILL: the kernel closes the socket, so the server notices at once.
    Kill,
    /// In-process: the task is aborted and its pooled connection goes back to the pool
    /// mid-transaction.
    Leak,
}

crate::scenario::spec::words!(pub FAULTS, FAULT_OF: Fault = {
    "freeze" => Fault::Freeze,
    "kill" => Fault::Kill,
    "leak" => Fault::Leak,
});

/// A lock holder a fault can be injected into.
pub enum Victim {
    Process(Box<Worker>),
    Task(tokio::task::JoinHandle<()>),
}

impl Victim {
    pub fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        match (self, fault) {
            (Victim::Process(worker), Fault::Freeze | Fault::Kill) => {
                let pid = worker
                    .pid()
                    .ok_or_else(|| anyhow::anyhow!("the holder process already exited"))?;
                let sig = if fault == Fault::Freeze {
                    libc::SIGSTOP
                } else {
                    libc::SIGKILL
                };
                if !process::signal(pid, sig) {
                    anyhow::bail!("could not signal the holder process {pid}");
                }
                Ok(())
            }
            (Victim::Task(handle), Fault::Leak) => {
                handle.abort();
                Ok(())
            }
            _ => anyhow::bail!("fault {fault:?} does not apply to this holder"),
        }
    }

    /// The frozen process, to resume later with [`resume`].
    pub fn pid(&self) -> Option<u32> {
        match self {
            Victim::Process(worker) => worker.pid(),
            Victim::Task(_) => None,
        }
    }

    /// The holder process itself, to read its events.
    pub fn worker(&mut self) -> Option<&mut Worker> {
        match self {
            Victim::Process(worker) => Some(worker),
            Victim::Task(_) => None,
        }
    }

    /// Ends the holder for good, whatever state the fault left it in.
    pub async fn end(self) {
        match self {
            Victim::Process(worker) => worker.end().await,
            Victim::Task(handle) => {
                handle.abort();
                let _ = handle.await;
            }
        }
    }
}

/// Lets a frozen process run again (SIGCONT): the end of a pause, as after a long GC.
pub fn resume(pid: u32) -> anyhow::Result<()> {
    match process::signal(pid, libc::SIGCONT) {
        true => Ok(()),
        false => anyhow::bail!("could not resume the paused process {pid}"),
    }
}
