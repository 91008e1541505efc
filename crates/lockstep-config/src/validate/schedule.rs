//! `[syncs.NAME.schedule]`: when the daemon runs a sync: a `cron` expression or an `every`
//! interval (exactly one), a time zone, jitter, catch-up and a timeout.
//!
//! Invariant: cron expressions are checked with the parser the daemon's scheduler uses, and
//! time zones against the tz database it uses.

use std::time::Duration;

use croner::errors::CronError;
use lockstep_expr::did_you_mean;

use super::reader::{Reader, Tbl};
use crate::diagnostic::ErrorKind;
use crate::model::{CatchUp, Schedule, Trigger};

/// The keys accepted in `[syncs.NAME.schedule]`.
pub(super) const SCHEDULE_KEYS: &[&str] =
    &["cron", "every", "timezone", "jitter", "catch_up", "timeout"];

/// The accepted values of `catch_up`.
pub(super) const CATCH_UPS: &[(&str, CatchUp)] =
    &[("skip", CatchUp::Skip), ("run-once", CatchUp::RunOnce)];

impl Reader<'_> {
    pub(super) fn schedule(&mut self, t: &Tbl<'_, '_>) -> Option<Schedule> {
        let st = self.table(t, "schedule")?;
        self.check_keys(&st, SCHEDULE_KEYS);
        let trigger = match (st.key_span("cron"), st.key_span("every")) {
            (Some(cron_at), Some(every_at)) => {
                let later = if cron_at.start > every_at.start {
                    ("cron", cron_at)
                } else {
                    ("every", every_at)
                };
                self.error(
                    ErrorKind::ScheduleTrigger,
                    later.1,
                    format!("`{}` has both `cron` and `every`", st.path),
                    format!("second trigger `{}`", later.0),
                    "keep one: `cron` for times on the calendar, `every` for a fixed interval",
                );
                None
            }
            (None, None) => {
                self.error(
                    ErrorKind::ScheduleTrigger,
                    st.span.clone(),
                    format!("`{}` has neither `cron` nor `every`", st.path),
                    "no trigger",
                    "add cron = \"*/5 * * * *\" (times on the calendar) or every = \"5m\" (a fixed \
                     interval)",
                );
                None
            }
            (Some(_), None) => self.cron(&st),
            (None, Some(_)) => self
                .duration(&st, "every", true)
                .map(|(d, _)| Trigger::Every(d)),
        };
        let timezone = self.timezone(&st);
        let jitter = self
            .duration(&st, "jitter", false)
            .map_or(Duration::ZERO, |(d, _)| d);
        let catch_up = self
            .enumerated(&st, "catch_up", CATCH_UPS)
            .unwrap_or_default();
        let timeout = self.duration(&st, "timeout", true).map(|(d, _)| d);
        Some(Schedule {
            trigger: trigger?,
            timezone: timezone.unwrap_or_else(|| "UTC".to_owned()),
            jitter,
            catch_up,
            timeout,
            location: self.loc(&st.span),
        })
    }

    pub(super) fn cron(&mut self, st: &Tbl<'_, '_>) -> Option<Trigger> {
        self.cron_key(st, "cron").map(Trigger::Cron)
    }

    /// The cron expression under `key` of `st` (`cron` of a schedule, a sync's
    /// `verify_schedule`), checked with the daemon's parser.
    pub(super) fn cron_key(&mut self, st: &Tbl<'_, '_>, key: &str) -> Option<String> {
        let s = self.string(st, key)?;
        let parser = croner::parser::CronParser::builder()
            .year(croner::parser::Year::Disallowed)
            .build();
        match parser.parse(s.value) {
            Ok(_) => Some(s.value.trim().to_owned()),
            Err(e) => {
                let reason = match e {
                    CronError::InvalidPattern(reason) | CronError::ComponentError(reason) => reason,
                    other => other.to_string(),
                };
                self.error(
                    ErrorKind::InvalidCron,
                    s.span,
                    format!(
                        "invalid cron expression `{}` in `{}`: {}",
                        s.value,
                        st.child(key),
                        reason.trim_end_matches('.')
                    ),
                    "invalid cron",
                    "write 5 fields (minute hour day-of-month month day-of-week), or 6 with \
                     seconds first; e.g. \"*/5 * * * *\" runs every five minutes",
                );
                None
            }
        }
    }

    pub(super) fn timezone(&mut self, st: &Tbl<'_, '_>) -> Option<String> {
        let s = self.string(st, "timezone")?;
        if s.value.parse::<chrono_tz::Tz>().is_ok() {
            return Some(s.value.to_owned());
        }
        let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
        let hint = match did_you_mean(s.value, names) {
            Some(suggestion) => format!("did you mean `{suggestion}`?"),
            None => "use an IANA time zone name, e.g. \"UTC\" or \"Europe/Paris\"".to_owned(),
        };
        self.error(
            ErrorKind::UnknownTimezone,
            s.span,
            format!(
                "unknown time zone `{}` in `{}`",
                s.value,
                st.child("timezone")
            ),
            "unknown time zone",
            hint,
        );
        None
    }
}
