//! Errors callers branch on, and the documented exit codes.

/// Bad usage or input: unknown scenario, malformed scenario file, bad flag value (exit 2).
/// Everything else that stops a run is the environment or the harness (exit 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub mod exit {
    /// Every expectation held.
    pub const OK: i32 = 0;
    /// At least one expectation did not hold (or could not be decided).
    pub const EXPECTATION_FAILED: i32 = 1;
    /// Bad usage or input.
    pub const USAGE: i32 = 2;
    /// The environment could not be set up, or the harness failed.
    pub const ENVIRONMENT: i32 = 3;
    /// Interrupted by Ctrl-C or SIGTERM (servers stopped, partial results written).
    pub const INTERRUPTED: i32 = 130;
}

/// The exit code for an error that ended a run.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err
        .chain()
        .any(|c| c.downcast_ref::<UsageError>().is_some())
    {
        exit::USAGE
    } else {
        exit::ENVIRONMENT
    }
}
