//! Every parameter point holds or is refused: points drawn at random (seeded, so a run can be
//! repeated) from what each scenario declares, each run as a user would run it, and every
//! variant's expectations required to hold, or the point refused before anything starts
//! (exit 2, with the reason). A point that fails is shrunk toward the defaults, as
//! property-based testing tools do, and printed as the command that reproduces it.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::scenario::Scenario;
use crate::scenario::spec::{Accepts, Param};

/// Time scales a point may run at: the default, faster and slower.
pub const SCALES: &[f64] = &[0.05, 0.1, 0.2];

/// One parameter point of one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub scenario: String,
    /// Parameters set off their defaults, in the scenario's order.
    pub params: Vec<(String, Param)>,
    pub time_scale: f64,
}

impl Point {
    /// The `locklab run` arguments that run this point.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["run".to_string(), self.scenario.clone()];
        for (k, v) in &self.params {
            a.push("--param".into());
            a.push(format!("{k}={v}"));
        }
        a.push("--time-scale".into());
        a.push(self.time_scale.to_string());
        a
    }

    /// The command, as a person would type it.
    pub fn command(&self) -> String {
        format!("locklab {}", self.args().join(" "))
    }
}

/// What a run of a point came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every expectation held (exit 0).
    Held,
    /// Refused before anything started (exit 2), for this reason.
    Refused(String),
    /// A false verdict or a harness failure: the exit code and what it said.
    Failed(i32, String),
}

/// A seeded source of points.
pub struct Sampler {
    rng: StdRng,
}

impl Sampler {
    pub fn new(seed: u64) -> Sampler {
        Sampler {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// A point of `s`: each of its sizes, counts and durations, with even odds, drawn from a
    /// quarter to four times its default (log-uniform, within what it accepts); the time scale
    /// one of [`SCALES`]. Words and flags, and whatever a variant sets itself, say which
    /// variant a run is (`order=ordered` is the mitigation), so they are left as they are.
    pub fn draw(&mut self, s: &Scenario) -> Point {
        let time_scale = SCALES[self.rng.random_range(0..SCALES.len())];
        let mut params = Vec::new();
        for spec in s.kind.params {
            let Some(default) = s.params.get(spec.name) else {
                continue;
            };
            let sized = matches!(
                spec.accepts,
                Accepts::Count { .. } | Accepts::Duration { .. }
            );
            if !sized || s.variants.iter().any(|v| v.params.contains_key(spec.name)) {
                continue;
            }
            let drawn = match self.rng.random_bool(0.5) {
                true => self.value(spec.accepts, default),
                false => None,
            };
            let mut v = drawn.unwrap_or_else(|| default.clone());
            // A value the kernel takes in whole seconds, default or drawn, is put on the
            // nearest whole second after the time scale: any other is refused up front, and
            // a sample that is always refused tests nothing.
            if spec.whole_seconds {
                v = whole_seconds(&v, time_scale, spec.accepts);
            }
            if v != *default {
                params.push((spec.name.to_string(), v));
            }
        }
        Point {
            scenario: s.name.clone(),
            params,
            time_scale,
        }
    }

    fn value(&mut self, accepts: Accepts, default: &Param) -> Option<Param> {
        // Counts from a quarter to four times the default; durations from a quarter to twice
        // it (a run lasts as long as its cut-off: four times would make soaks four times as
        // long for little more to find).
        let factor = 4f64.powf(self.rng.random_range(-1.0..1.0));
        match (accepts, default) {
            (Accepts::Count { min, max }, Param::Int(d)) => {
                let v = ((*d as f64) * factor).round() as i64;
                Some(Param::Int(v.clamp(min, max)))
            }
            (Accepts::Duration { min, max }, Param::Duration(d)) if !d.is_zero() => {
                // Whole milliseconds: what a person writes, and what parses back the same.
                let factor = factor.min(2.0);
                let ms = (d.as_secs_f64() * 1000.0 * factor).round().max(1.0) as u64;
                let v = std::time::Duration::from_millis(ms);
                Some(Param::Duration(v.clamp(min, max)))
            }
            _ => None,
        }
    }
}

/// `v` on the nearest whole second (at least one) after `time_scale`, written back at the
/// write-up's speed and kept within what the parameter accepts.
fn whole_seconds(v: &Param, time_scale: f64, accepts: Accepts) -> Param {
    let (Param::Duration(d), Accepts::Duration { min, max }) = (v, accepts) else {
        return v.clone();
    };
    let secs = (d.as_secs_f64() * time_scale).round().max(1.0);
    let ms = (secs * 1000.0 / time_scale).round() as u64;
    Param::Duration(std::time::Duration::from_millis(ms).clamp(min, max))
}

/// The smallest change from the defaults that still fails: each parameter put back to its
/// default in turn (kept back where the point still fails), then the time scale back to 0.1.
/// `check` runs a point. At most `budget` runs.
pub fn shrink(failing: &Point, mut check: impl FnMut(&Point) -> Verdict, budget: usize) -> Point {
    let mut best = failing.clone();
    let mut runs = 0;
    let fails = |v: &Verdict| matches!(v, Verdict::Failed(..));
    let mut i = 0;
    while i < best.params.len() && runs < budget {
        let mut candidate = best.clone();
        candidate.params.remove(i);
        runs += 1;
        match fails(&check(&candidate)) {
            true => best = candidate,
            false => i += 1,
        }
    }
    if best.time_scale != 0.1 && runs < budget {
        let candidate = Point {
            time_scale: 0.1,
            ..best.clone()
        };
        if fails(&check(&candidate)) {
            best = candidate;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_points() {
        let s = crate::scenario::load("orphan-lock").expect("built-in");
        let (mut a, mut b) = (Sampler::new(7), Sampler::new(7));
        let pa: Vec<Point> = (0..20).map(|_| a.draw(&s)).collect();
        let pb: Vec<Point> = (0..20).map(|_| b.draw(&s)).collect();
        assert_eq!(pa, pb);
        assert!(pa.iter().any(|p| !p.params.is_empty()), "{pa:?}");
        for p in &pa {
            for (k, v) in &p.params {
                let spec = s.kind.param(k).expect("declared");
                assert_eq!(
                    spec.check(v),
                    Ok(()),
                    "{k}={v} drawn outside what it accepts"
                );
            }
        }
    }

    #[test]
    fn keepalives_are_drawn_on_whole_seconds_at_every_time_scale() {
        let s = crate::scenario::load("lost-client").expect("built-in");
        let mut sampler = Sampler::new(3);
        for _ in 0..60 {
            let p = sampler.draw(&s);
            for name in ["keepalives_idle", "keepalives_interval"] {
                let set = p.params.iter().find(|(k, _)| k == name).map(|(_, v)| v);
                let Some(Param::Duration(d)) = set.or_else(|| s.params.get(name)) else {
                    panic!("{name} is a duration");
                };
                let secs = d.as_secs_f64() * p.time_scale;
                assert!(
                    secs >= 0.999 && (secs - secs.round()).abs() < 1e-6,
                    "{} gives {name} {secs} s",
                    p.command()
                );
            }
        }
    }

    #[test]
    fn a_failing_point_shrinks_to_what_makes_it_fail() {
        let p = Point {
            scenario: "s".into(),
            params: vec![
                ("a".into(), Param::Int(1)),
                ("stock".into(), Param::Int(5)),
                ("b".into(), Param::Int(2)),
            ],
            time_scale: 0.05,
        };
        // Fails whenever stock=5 is set, whatever else.
        let check = |q: &Point| match q.params.iter().any(|(k, _)| k == "stock") {
            true => Verdict::Failed(1, "REGRESSED".into()),
            false => Verdict::Held,
        };
        let small = shrink(&p, check, 20);
        assert_eq!(small.params, vec![("stock".to_string(), Param::Int(5))]);
        assert_eq!(small.time_scale, 0.1);
        assert_eq!(
            small.command(),
            "locklab run s --param stock=5 --time-scale 0.1"
        );
    }
}
