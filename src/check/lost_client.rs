//! lost-client's checker: orphan-lock's view of the row and the bookings, plus when the server
//! itself ended the partitioned holder's backend, and when the variant's settings say it should.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Evaluation;
use super::orphan_lock::{self, Observations};
use super::stats::round1;
use crate::history::History;

/// What this checker adds to orphan-lock's.
const OWN_METRICS: &[&str] = &[
    "backend_gone_ms",
    "backend_outlived_cut_off",
    "expected_release_ms",
];

pub const METRICS: &[&str] = &super::extend_metrics::<
    { orphan_lock::METRICS.len() + OWN_METRICS.len() },
>(orphan_lock::METRICS, OWN_METRICS);

/// A kernel's keepalive settings for one socket, in whole seconds as the kernel takes them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Keepalive {
    pub idle_s: u64,
    pub interval_s: u64,
    pub count: u64,
}

impl Keepalive {
    /// What a new network namespace's kernel uses when the socket sets nothing
    /// (net.ipv4.tcp_keepalive_time, _intvl, _probes).
    pub const KERNEL_DEFAULT: Keepalive = Keepalive {
        idle_s: 7200,
        interval_s: 75,
        count: 9,
    };
}

/// The server-side settings that bound how long a silent client's backend lives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ServerSide {
    pub keepalive: Keepalive,
    /// tcp_user_timeout, if set (0 is off).
    pub user_timeout_ms: Option<u64>,
    /// idle_in_transaction_session_timeout, if set.
    pub idle_timeout_ms: Option<u64>,
}

/// When the server ends the backend of a client that went silent while idle in a transaction,
/// in ms after the client's last packet. Keepalive probes start `idle` after it and repeat
/// every `interval`; without tcp_user_timeout the kernel gives up after `count` unanswered
/// probes, with it at the first probe time at or past the user timeout (at least one probe
/// sent). tcp_user_timeout alone changes nothing on an idle connection: there is no
/// unacknowledged data for it to time, and no probe before the keepalive idle time. The idle
/// timeout ends the transaction on its own clock.
pub fn expected_release_ms(s: &ServerSide) -> f64 {
    let k = s.keepalive;
    let probes = match s.user_timeout_ms.filter(|u| *u > 0) {
        None => k.count.max(1),
        Some(u) => {
            let after_idle = u.saturating_sub(k.idle_s * 1000);
            after_idle.div_ceil(k.interval_s.max(1) * 1000).max(1)
        }
    };
    let keepalive_ms = ((k.idle_s + k.interval_s * probes) * 1000) as f64;
    match s.idle_timeout_ms {
        Some(t) => keepalive_ms.min(t as f64),
        None => keepalive_ms,
    }
}

/// What an independent session saw of the holder's backend in pg_stat_activity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    /// Server clock (epoch seconds) when the backend was first seen gone; `None` if it was
    /// still there at the cut-off.
    pub gone_at_epoch: Option<f64>,
}

pub fn evaluate(
    h: &History,
    obs: &Observations,
    backend: Backend,
    server: &ServerSide,
) -> Evaluation {
    let base = orphan_lock::evaluate(h, obs);
    let gone_ms = backend
        .gone_at_epoch
        .map(|t| ((t - obs.holder_paying_epoch) * 1000.0).max(0.0));
    let mut e = base;
    e.metrics.insert(
        "backend_gone_ms".into(),
        json!(round1(gone_ms.unwrap_or(obs.waited_ms))),
    );
    e.metrics.insert(
        "backend_outlived_cut_off".into(),
        json!(backend.gone_at_epoch.is_none()),
    );
    e.metrics.insert(
        "expected_release_ms".into(),
        json!(round1(expected_release_ms(server))),
    );
    e.lower_bound("backend_gone_ms", gone_ms.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::orphan_lock::{Payments, Probe};

    fn server(keepalive: Keepalive) -> ServerSide {
        ServerSide {
            keepalive,
            user_timeout_ms: None,
            idle_timeout_ms: None,
        }
    }

    const SEED: Keepalive = Keepalive {
        idle_s: 3,
        interval_s: 1,
        count: 3,
    };

    #[test]
    fn kernel_defaults_take_over_two_hours() {
        assert_eq!(
            expected_release_ms(&server(Keepalive::KERNEL_DEFAULT)),
            7_875_000.0
        );
    }

    #[test]
    fn server_keepalives_give_up_after_idle_plus_interval_times_count() {
        assert_eq!(expected_release_ms(&server(SEED)), 6000.0);
    }

    #[test]
    fn user_timeout_alone_waits_for_the_first_default_probe() {
        let mut s = server(Keepalive::KERNEL_DEFAULT);
        s.user_timeout_ms = Some(2000);
        assert_eq!(expected_release_ms(&s), 7_275_000.0);
    }

    #[test]
    fn user_timeout_with_keepalives_cuts_the_probes_short() {
        let mut s = server(SEED);
        s.user_timeout_ms = Some(4500);
        assert_eq!(expected_release_ms(&s), 5000.0);
        s.user_timeout_ms = Some(0);
        assert_eq!(expected_release_ms(&s), 6000.0);
    }

    #[test]
    fn idle_timeout_wins_when_it_is_sooner() {
        let mut s = server(Keepalive::KERNEL_DEFAULT);
        s.idle_timeout_ms = Some(2000);
        assert_eq!(expected_release_ms(&s), 2000.0);
    }

    fn obs() -> Observations {
        Observations {
            payments: Payments::default(),
            holder_paying_epoch: 1000.0,
            probe: Probe {
                locked_before_fault: true,
                free_at_epoch: Some(1006.01),
            },
            waited_ms: 10_000.0,
            cut_off: false,
            samples: vec![],
            bookings_committed: 5,
            next_user_in_leaked_tx: None,
        }
    }

    #[test]
    fn a_backend_seen_gone_is_timed_from_the_last_packet() {
        let e = evaluate(
            &History::default(),
            &obs(),
            Backend {
                gone_at_epoch: Some(1006.0),
            },
            &server(SEED),
        );
        assert_eq!(e.metrics["backend_gone_ms"], json!(6000.0));
        assert_eq!(e.metrics["backend_outlived_cut_off"], json!(false));
        assert_eq!(e.metrics["expected_release_ms"], json!(6000.0));
        assert!(!e.lower_bounds.contains("backend_gone_ms"));
        crate::check::assert_emits_exactly(&e, METRICS);
    }

    #[test]
    fn a_backend_still_there_at_the_cut_off_is_a_lower_bound() {
        let e = evaluate(
            &History::default(),
            &obs(),
            Backend {
                gone_at_epoch: None,
            },
            &server(Keepalive::KERNEL_DEFAULT),
        );
        assert_eq!(e.metrics["backend_gone_ms"], json!(10_000.0));
        assert_eq!(e.metrics["backend_outlived_cut_off"], json!(true));
        assert!(e.lower_bounds.contains("backend_gone_ms"));
    }
}
