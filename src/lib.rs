//! locklab: reproduce lock failures against real servers, and see which setting stops them.
//!
//! The roles are kept apart as in a Jepsen test: `env` (servers), `workload` (clients),
//! `fault` (what goes wrong), `history` (what happened), `check` (the verdict), `report`.

/// A line on stderr, whatever became of stderr. `eprintln!` panics when stderr is gone (its
/// reader died, or it was piped into `head`); in a signal handler or a teardown that panic
/// would leave servers behind. clippy.toml refuses `eprintln!`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod app;
pub mod bench;
pub mod check;
pub mod claims;
pub mod cli;
pub mod env;
pub mod error;
pub mod fault;
pub mod gauge;
pub mod history;
pub mod live;
pub mod observe;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod secret;
pub mod text;
pub mod trace;
pub mod workload;
