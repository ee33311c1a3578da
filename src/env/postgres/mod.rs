//! PostgreSQL: the target every scenario talks to, and the throwaway server behind it when the
//! user gives no URL.

mod cancel;
mod server;
pub mod sql;
mod target;
mod wire;

pub use cancel::Canceller;
pub use server::{
    Binaries, PgServer, SUPPORTED_MAJORS, data_version, find_binaries, time_initdb, use_bin_dir,
};
pub use sql::{Param, Sql, begin, end_sessions_named, like_prefix};
pub use target::{Capacity, PgTarget, external, parse_url, redact};
pub use wire::{Wire, WireError};
