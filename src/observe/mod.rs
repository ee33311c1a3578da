//! Watching the servers themselves while a variant runs: what PostgreSQL's sessions are doing,
//! what a Redis key holds, what a connection pool counts. Observers only sample; checkers decide.

pub mod cpu;
pub mod pg_activity;
pub mod pg_slots;
pub mod pool;
pub mod redis_key;
pub mod sampler;

pub use pg_activity::{Observer, Sample};
