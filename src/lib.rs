//! locklab: reproduce lock failures against real servers, and see which setting stops them.
//!
//! The roles are kept apart as in a Jepsen test: `env` (servers), `workload` (clients),
//! `fault` (what goes wrong), `history` (what happened), `check` (the verdict), `report`.

pub mod app;
pub mod check;
pub mod cli;
pub mod env;
pub mod error;
pub mod fault;
pub mod history;
pub mod observe;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod text;
pub mod workload;
