//! What each checker was given, as data: a scenario hands its checker an [`Input`], the runner
//! saves it beside the history, and `locklab report` hands the same input to the same checker
//! again. A verdict in a results file can so be re-derived, never only believed.

use serde::{Deserialize, Serialize};

use super::{
    Evaluation, isolation, lock_watchdog, lost_client, orphan_lock, pool, pooler, redis_failover,
    setnx_race, shutdown, steps, storm,
};
use crate::history::History;

/// lost-client's checker reads orphan-lock's observations and two more things.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LostClientInput {
    pub observations: orphan_lock::Observations,
    pub backend: lost_client::Backend,
    pub server: lost_client::ServerSide,
}

/// One checker and its observations. The tag names the checker, not the scenario: a file of
/// the user's may reuse a built-in checker under a name of its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "checker", content = "observations", rename_all = "kebab-case")]
pub enum Input {
    OrphanLock(orphan_lock::Observations),
    LostClient(Box<LostClientInput>),
    ConnectionStorm(storm::Observations),
    Shutdown(shutdown::Observations),
    PoolBooking(pool::BookingObservations),
    PoolDeadlock(pool::DeadlockObservations),
    SetnxRace(setnx_race::Observations),
    /// lock-watchdog's: setnx-race's observations, judged on the renewed lease.
    LockWatchdog(setnx_race::Observations),
    RedisFailover(Box<redis_failover::Observations>),
    Pooler(pooler::PoolerObservations),
    Account(isolation::AccountObservations),
    /// A step file's sessions and steps.
    Steps(Box<steps::Observations>),
}

impl Input {
    /// Runs the checker this input belongs to.
    pub fn evaluate(&self, h: &History) -> Evaluation {
        match self {
            Input::OrphanLock(o) => orphan_lock::evaluate(h, o),
            Input::LostClient(i) => lost_client::evaluate(h, &i.observations, i.backend, &i.server),
            Input::ConnectionStorm(o) => storm::evaluate(h, o),
            Input::Shutdown(o) => shutdown::evaluate(h, o),
            Input::PoolBooking(o) => pool::evaluate_booking(h, o),
            Input::PoolDeadlock(o) => pool::evaluate_deadlock(h, o),
            Input::SetnxRace(o) => setnx_race::evaluate(h, o),
            Input::LockWatchdog(o) => lock_watchdog::evaluate(h, o),
            Input::RedisFailover(o) => redis_failover::evaluate(h, o),
            Input::Pooler(o) => pooler::evaluate(h, o),
            Input::Account(o) => isolation::evaluate_account(h, o),
            Input::Steps(o) => steps::evaluate(h, o),
        }
    }
}

/// Reads a saved checker input; one whose checker this version does not have (read-skew's
/// `reports`, from before it became a step file) reads as none, so its verdict is not
/// re-derived, instead of failing the whole results file.
pub fn or_retired<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Input>, D::Error> {
    let Some(value) = Option::<serde_json::Value>::deserialize(d)? else {
        return Ok(None);
    };
    let tag = value.get("checker").and_then(serde_json::Value::as_str);
    match (Input::deserialize(&value), tag) {
        (Ok(input), _) => Ok(Some(input)),
        // The checker's own name unknown, not something inside a known checker's input.
        (Err(e), Some(tag))
            if e.to_string()
                .starts_with(&format!("unknown variant `{tag}`")) =>
        {
            Ok(None)
        }
        (Err(e), _) => Err(serde::de::Error::custom(e)),
    }
}

/// Serialises a float that may be NaN (not measured) as `null`, and reads `null` back as NaN:
/// JSON has no NaN, and a results file must read back into what was checked.
pub mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match v.is_finite() {
            true => s.serialize_f64(*v),
            false => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_results_file_from_a_retired_checker_still_reads() {
        let old = r#"{"checker": "reports", "observations": {"invariant_total": 1000,
                      "seen": [[500, 500]], "cut_off": false}}"#;
        let mut d = serde_json::Deserializer::from_str(old);
        assert!(super::or_retired(&mut d).expect("reads").is_none());
        let mut d =
            serde_json::Deserializer::from_str(r#"{"checker": "steps", "observations": 7}"#);
        assert!(
            super::or_retired(&mut d).is_err(),
            "a known checker's bad input still fails"
        );
    }
}
