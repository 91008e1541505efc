//! When a sync runs: the ticks of its schedule, and jitter.
//!
//! A cron expression is evaluated in the schedule's time zone (so `0 2 * * *` in
//! `Europe/Paris` is 02:00 Paris time, summer and winter). An interval (`every = "5m"`) is
//! aligned to the Unix epoch: `every = "1h"` ticks on the hour, and the ticks do not depend on
//! when the daemon started, so a restart neither delays nor doubles a run.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use lockstep_config::{Schedule, Trigger};

/// A schedule ready to compute ticks.
#[derive(Clone, Debug)]
pub struct Plan {
    trigger: PlanTrigger,
    tz: Tz,
    text: String,
}

#[derive(Clone, Debug)]
enum PlanTrigger {
    Cron(Box<croner::Cron>),
    Every(Duration),
}

impl Plan {
    /// The plan of `schedule`. Fails only for a schedule the config's validation would have
    /// refused (a bad cron expression, an unknown time zone, a zero interval).
    pub fn new(schedule: &Schedule) -> Result<Plan, String> {
        let tz: Tz = schedule
            .timezone
            .parse()
            .map_err(|_| format!("unknown time zone `{}`", schedule.timezone))?;
        let (trigger, text) = match &schedule.trigger {
            Trigger::Cron(expr) => {
                let cron = croner::parser::CronParser::builder()
                    .year(croner::parser::Year::Disallowed)
                    .build()
                    .parse(expr)
                    .map_err(|e| format!("invalid cron expression `{expr}`: {e}"))?;
                let text = if schedule.timezone == "UTC" {
                    format!("cron {expr}")
                } else {
                    format!("cron {expr} ({})", schedule.timezone)
                };
                (PlanTrigger::Cron(Box::new(cron)), text)
            }
            Trigger::Every(every) => {
                if every.is_zero() {
                    return Err("the interval `every` must be greater than zero".to_owned());
                }
                (
                    PlanTrigger::Every(*every),
                    format!("every {}", human(*every)),
                )
            }
        };
        Ok(Plan { trigger, tz, text })
    }

    /// The first tick strictly after `after`, if there is one.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.trigger {
            PlanTrigger::Every(every) => {
                let step = every.as_millis().max(1) as i64;
                let now = after.timestamp_millis();
                let next = (now.div_euclid(step) + 1).checked_mul(step)?;
                Utc.timestamp_millis_opt(next).single()
            }
            PlanTrigger::Cron(cron) => {
                let local = after.with_timezone(&self.tz);
                cron.find_next_occurrence(&local, false)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
        }
    }

    /// How many ticks fell in `(since, until]`, counting up to `cap`.
    pub fn ticks_between(&self, since: DateTime<Utc>, until: DateTime<Utc>, cap: u32) -> u32 {
        let mut count = 0;
        let mut t = since;
        while count < cap {
            match self.next_after(t) {
                Some(next) if next <= until => {
                    count += 1;
                    t = next;
                }
                _ => break,
            }
        }
        count
    }

    /// The schedule for people: `every 5m`, `cron 0 2 * * * (Europe/Paris)`.
    pub fn describe(&self) -> &str {
        &self.text
    }
}

/// A random delay in `[0, jitter)`.
pub fn jitter(jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return Duration::ZERO;
    }
    // A fresh RandomState is seeded randomly by the standard library: enough for spreading
    // runs, with no extra dependency.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let nanos = jitter.as_nanos().min(u64::MAX as u128) as u64;
    Duration::from_nanos(random % nanos.max(1))
}

/// A duration as the config file writes it: `500ms`, `30s`, `5m`, `1h30m`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_config::CatchUp;

    fn schedule(trigger: Trigger, tz: &str) -> Schedule {
        Schedule {
            trigger,
            timezone: tz.to_owned(),
            jitter: Duration::ZERO,
            catch_up: CatchUp::Skip,
            timeout: None,
            location: Default::default(),
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn intervals_are_aligned_to_the_epoch() {
        let plan = Plan::new(&schedule(Trigger::Every(Duration::from_secs(300)), "UTC")).unwrap();
        assert_eq!(plan.describe(), "every 5m");
        assert_eq!(
            plan.next_after(at("2026-03-01T10:02:17Z")),
            Some(at("2026-03-01T10:05:00Z"))
        );
        assert_eq!(
            plan.next_after(at("2026-03-01T10:05:00Z")),
            Some(at("2026-03-01T10:10:00Z"))
        );
        assert_eq!(
            plan.ticks_between(at("2026-03-01T10:00:00Z"), at("2026-03-01T10:20:00Z"), 100),
            4
        );
    }

    #[test]
    fn cron_runs_in_its_time_zone_with_optional_seconds() {
        let plan = Plan::new(&schedule(Trigger::Cron("0 2 * * *".into()), "Europe/Paris")).unwrap();
        assert_eq!(plan.describe(), "cron 0 2 * * * (Europe/Paris)");
        // Winter: Paris is UTC+1; summer: UTC+2.
        assert_eq!(
            plan.next_after(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-11T01:00:00Z"))
        );
        assert_eq!(
            plan.next_after(at("2026-07-10T12:00:00Z")),
            Some(at("2026-07-11T00:00:00Z"))
        );

        let seconds = Plan::new(&schedule(Trigger::Cron("*/2 * * * * *".into()), "UTC")).unwrap();
        assert_eq!(
            seconds.next_after(at("2026-01-01T00:00:01Z")),
            Some(at("2026-01-01T00:00:02Z"))
        );
        assert_eq!(
            seconds.next_after(at("2026-01-01T00:00:02Z")),
            Some(at("2026-01-01T00:00:04Z"))
        );
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(10)) < Duration::from_millis(10));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        assert_eq!(human(Duration::from_millis(5_400_500)), "1h30m500ms");
    }
}
