//! Outcome words more than one checker uses, named once: a table or a CI filter that looks for
//! `stuck` finds the same word whichever scenario said it.

/// Something was still waiting at the cut-off: the failure did not end by itself.
pub const STUCK: &str = "stuck";
/// A probe got what the faulted session held: the failure ended.
pub const RELEASED: &str = "released";
/// Sessions waited on each other until something broke the cycle (or nothing did).
pub const DEADLOCKED: &str = "deadlocked";
