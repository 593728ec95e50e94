//! Five-field cron schedules (UTC) of scheduled jobs, and the rule that
//! says which firing is due.
//!
//! Parsing and the calendar arithmetic are the `croner` crate's (POSIX /
//! Vixie cron semantics: when both day-of-month and day-of-week are
//! restricted, either one matching fires, as in crontab(5)). berth only
//! accepts exactly five fields: no seconds field, no year field.
//!
//! The due rule ([`Schedule::due`]): at any moment the only firing that may
//! run is the latest one at or before now, and only while it is less than
//! one period late (the gap between it and the firing before it). So a
//! berth that was down over several firings runs the last one once when it
//! comes back (if it is less than one period late) and never the older
//! ones. Whether that firing already ran is not decided here: the store's
//! unique index on (job, firing) is.

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use std::fmt;

/// A parsed `schedule`: five fields, evaluated in UTC.
#[derive(Clone, Debug)]
pub struct Schedule {
    text: String,
    cron: croner::Cron,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Why a schedule does not parse; one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("expected five fields (minute hour day-of-month month day-of-week), got {0}")]
    FieldCount(usize),
    #[error("{0}")]
    Invalid(String),
}

impl Schedule {
    /// Parses a five-field cron expression (`*/5 * * * *`, `0 3 * * MON`).
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let fields = text.split_whitespace().count();
        if fields != 5 {
            return Err(ScheduleError::FieldCount(fields));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(text).map_err(|e| {
            let msg = e.to_string();
            ScheduleError::Invalid(
                msg.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase(),
            )
        })?;
        // An expression that never fires (e.g. 30 February) is refused too.
        let start = DateTime::<Utc>::from_timestamp(0, 0).unwrap_or_default();
        if cron.find_next_occurrence(&start, false).is_err() {
            return Err(ScheduleError::Invalid("never fires".into()));
        }
        Ok(Schedule {
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
            cron,
        })
    }

    /// The expression as written (fields one space apart).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first firing strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }

    /// The latest firing at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&t, true).ok()
    }

    /// The firing that should run at `now`, if any: the latest firing at or
    /// before `now`, when it is less than one period late (the period being
    /// the gap between it and the firing before it) and not before
    /// `not_before` (when the job came to exist).
    pub fn due(
        &self,
        now: DateTime<Utc>,
        not_before: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let firing = self.latest_at_or_before(now)?;
        if not_before.is_some_and(|nb| firing < nb) {
            return None;
        }
        let previous = self.cron.find_previous_occurrence(&firing, false).ok()?;
        let period = firing - previous;
        (now - firing < period).then_some(firing)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_fields_only() {
        assert!(Schedule::parse("* * * * *").is_ok());
        assert!(Schedule::parse("0 3 * * MON").is_ok());
        assert_eq!(
            Schedule::parse("* * * *").unwrap_err(),
            ScheduleError::FieldCount(4)
        );
        assert_eq!(
            Schedule::parse("0 * * * * *").unwrap_err(),
            ScheduleError::FieldCount(6)
        );
        assert_eq!(
            Schedule::parse("@hourly").unwrap_err(),
            ScheduleError::FieldCount(1)
        );
        for bad in [
            "61 * * * *",
            "* 24 * * *",
            "x * * * *",
            "* * 0 * *",
            "0 0 30 2 *",
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(matches!(e, ScheduleError::Invalid(_)), "{bad}: {e:?}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn next_and_latest_are_utc_minutes() {
        let s = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(
            s.next_after(t("2026-01-01T10:07:30Z")),
            Some(t("2026-01-01T10:15:00Z"))
        );
        assert_eq!(
            s.next_after(t("2026-01-01T10:15:00Z")),
            Some(t("2026-01-01T10:30:00Z"))
        );
        assert_eq!(
            s.latest_at_or_before(t("2026-01-01T10:15:00Z")),
            Some(t("2026-01-01T10:15:00Z"))
        );
    }

    #[test]
    fn due_is_the_latest_firing_while_less_than_one_period_late() {
        let every_minute = Schedule::parse("* * * * *").unwrap();
        // On time and a little late: the firing of 10:01.
        for now in ["2026-01-01T10:01:00Z", "2026-01-01T10:01:59Z"] {
            assert_eq!(
                every_minute.due(t(now), None),
                Some(t("2026-01-01T10:01:00Z"))
            );
        }
        // Down from 09:50 to 10:01:30: only the last firing is due, once.
        assert_eq!(
            every_minute.due(t("2026-01-01T10:01:30Z"), Some(t("2026-01-01T09:00:00Z"))),
            Some(t("2026-01-01T10:01:00Z"))
        );
        // Weekdays at 09:00, down from Friday 08:00 to Monday 08:00: Friday's
        // firing is 71 h late, more than its period (24 h): not run.
        let weekdays = Schedule::parse("0 9 * * 1-5").unwrap();
        assert_eq!(weekdays.due(t("2026-01-05T08:00:00Z"), None), None);
        // Down from 08:00 to 09:30 on Friday: 30 min late, run.
        assert_eq!(
            weekdays.due(t("2026-01-02T09:30:00Z"), None),
            Some(t("2026-01-02T09:00:00Z"))
        );
    }

    #[test]
    fn nothing_is_due_from_before_the_job_existed() {
        let hourly = Schedule::parse("0 * * * *").unwrap();
        assert_eq!(
            hourly.due(t("2026-01-01T10:30:00Z"), Some(t("2026-01-01T10:20:00Z"))),
            None
        );
        assert_eq!(
            hourly.due(t("2026-01-01T11:00:05Z"), Some(t("2026-01-01T10:20:00Z"))),
            Some(t("2026-01-01T11:00:00Z"))
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_as_in_crontab() {
        // The 1st of the month or any Monday.
        let s = Schedule::parse("0 0 1 * MON").unwrap();
        // 2026-01-05 is a Monday.
        assert_eq!(
            s.next_after(t("2026-01-02T00:00:00Z")),
            Some(t("2026-01-05T00:00:00Z"))
        );
    }
}
