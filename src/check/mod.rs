//! Checkers: pure functions from a history and server observations to metrics and verdicts.

pub mod expect;
pub mod orphan_lock;
pub mod pool;
pub mod setnx_race;
pub mod stats;
