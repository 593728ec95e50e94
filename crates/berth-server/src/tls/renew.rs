//! When to obtain, renew or retry a certificate: pure decisions over a
//! certificate record and the clock, so they are tested without a CA.

use berth_core::model::CertState;
use chrono::{DateTime, Duration, Utc};

/// A certificate is renewed at the latest this long before it expires.
pub fn renew_before() -> Duration {
    Duration::days(30)
}

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// with a third of its lifetime left (day 60 of Let's Encrypt's 90), and
/// at the latest [`renew_before`] its end. Short-lived certificates are so
/// renewed well before they end, whatever their lifetime.
pub fn renew_at(not_before: DateTime<Utc>, not_after: DateTime<Utc>) -> DateTime<Utc> {
    let third = (not_after - not_before).max(Duration::zero()) / 3;
    not_after - third.min(renew_before())
}

/// First retry delay after a failure; doubled per failure in a row.
pub fn first_retry() -> Duration {
    Duration::seconds(30)
}

/// First retry delay after an attempt that failed on a transient error
/// (its order is resumed); doubled per failure in a row as well.
pub fn first_transient_retry() -> Duration {
    Duration::seconds(5)
}

/// When the next attempt is due after `failures` failures in a row: the
/// backoff, and never before the CA's `Retry-After`.
pub fn next_attempt(
    now: DateTime<Utc>,
    failures: u32,
    transient: bool,
    retry_after: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let first = if transient {
        first_transient_retry()
    } else {
        first_retry()
    };
    let t = now + backoff_from(first, failures);
    retry_after.map_or(t, |r| r.max(t))
}

/// Longest delay between two attempts.
pub fn max_retry() -> Duration {
    Duration::hours(12)
}

/// What the manager does about one hostname now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask the CA now (first issue, renewal, or a retry that is due).
    Obtain,
    /// Nothing until then (renewal time, or the next retry).
    WaitUntil(DateTime<Utc>),
}

/// The facts of a record the decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub state: CertState,
    pub not_after: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// `None`: no record yet.
pub fn decide(now: DateTime<Utc>, rec: Option<Facts>) -> Action {
    let Some(rec) = rec else {
        return Action::Obtain;
    };
    let due = match rec.state {
        // A pending record is an attempt a restart interrupted.
        CertState::None | CertState::Pending => return Action::Obtain,
        // The renewal time set at issue, else 30 days before the end.
        CertState::Issued => match (rec.next_attempt_at, rec.not_after) {
            (Some(t), Some(end)) => t.min(end),
            (None, Some(end)) => end - renew_before(),
            (_, None) => return Action::Obtain,
        },
        CertState::Failed => match rec.next_attempt_at {
            Some(t) => t,
            None => return Action::Obtain,
        },
    };
    if now >= due {
        Action::Obtain
    } else {
        Action::WaitUntil(due)
    }
}

/// Delay before the next attempt after `failures` failures in a row (≥ 1).
pub fn backoff(failures: u32) -> Duration {
    backoff_from(first_retry(), failures)
}

fn backoff_from(first: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let d = first * 2i32.pow(exp);
    d.min(max_retry())
}

/// Whether a certificate can still be served at `now`.
pub fn servable(now: DateTime<Utc>, not_after: Option<DateTime<Utc>>) -> bool {
    not_after.is_some_and(|end| now < end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn facts(state: CertState, not_after: Option<i64>, next: Option<i64>) -> Option<Facts> {
        Some(Facts {
            state,
            not_after: not_after.map(|d| t0() + Duration::days(d)),
            next_attempt_at: next.map(|s| t0() + Duration::seconds(s)),
        })
    }

    #[test]
    fn a_host_without_a_record_or_with_an_interrupted_attempt_is_obtained_now() {
        assert_eq!(decide(t0(), None), Action::Obtain);
        assert_eq!(
            decide(t0(), facts(CertState::Pending, None, None)),
            Action::Obtain
        );
        assert_eq!(
            decide(t0(), facts(CertState::None, None, None)),
            Action::Obtain
        );
    }

    #[test]
    fn an_issued_certificate_is_renewed_30_days_before_it_expires() {
        // 90 days left: wait until day 60.
        assert_eq!(
            decide(t0(), facts(CertState::Issued, Some(90), None)),
            Action::WaitUntil(t0() + Duration::days(60))
        );
        // 31 days left: still waits one day; 30 or fewer: renew now.
        assert_eq!(
            decide(t0(), facts(CertState::Issued, Some(31), None)),
            Action::WaitUntil(t0() + Duration::days(1))
        );
        assert_eq!(
            decide(t0(), facts(CertState::Issued, Some(30), None)),
            Action::Obtain
        );
        assert_eq!(
            decide(t0(), facts(CertState::Issued, Some(-1), None)),
            Action::Obtain
        );
        // An issued record without a validity end is re-obtained.
        assert_eq!(
            decide(t0(), facts(CertState::Issued, None, None)),
            Action::Obtain
        );
    }

    #[test]
    fn a_failure_is_retried_when_its_backoff_ends() {
        assert_eq!(
            decide(t0(), facts(CertState::Failed, None, Some(60))),
            Action::WaitUntil(t0() + Duration::seconds(60))
        );
        assert_eq!(
            decide(t0(), facts(CertState::Failed, None, Some(0))),
            Action::Obtain
        );
        // A failed renewal waits for its retry too, not for the renewal date.
        assert_eq!(
            decide(t0(), facts(CertState::Failed, Some(10), Some(120))),
            Action::WaitUntil(t0() + Duration::seconds(120))
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::seconds(30));
        assert_eq!(backoff(2), Duration::seconds(60));
        assert_eq!(backoff(3), Duration::seconds(120));
        assert_eq!(backoff(12), max_retry());
        assert_eq!(backoff(u32::MAX), max_retry());
    }

    #[test]
    fn renewal_comes_with_a_third_of_the_lifetime_left_and_30_days_at_the_latest() {
        // Let's Encrypt's 90 days: day 60.
        assert_eq!(
            renew_at(t0(), t0() + Duration::days(90)),
            t0() + Duration::days(60)
        );
        // A year: 30 days before the end.
        assert_eq!(
            renew_at(t0(), t0() + Duration::days(365)),
            t0() + Duration::days(335)
        );
        // Three minutes: after two.
        assert_eq!(
            renew_at(t0(), t0() + Duration::minutes(3)),
            t0() + Duration::minutes(2)
        );
        // The decision follows the renewal time stored at issue.
        assert_eq!(
            decide(
                t0() + Duration::seconds(119),
                facts(CertState::Issued, Some(1), Some(120))
            ),
            Action::WaitUntil(t0() + Duration::seconds(120))
        );
        assert_eq!(
            decide(
                t0() + Duration::seconds(120),
                facts(CertState::Issued, Some(1), Some(120))
            ),
            Action::Obtain
        );
    }

    #[test]
    fn a_certificate_valid_for_seconds_waits_for_its_renewal_time() {
        // 45 s of validity, renewal stored at 30 s: nothing at 2 s.
        let f = Facts {
            state: CertState::Issued,
            not_after: Some(t0() + Duration::seconds(45)),
            next_attempt_at: Some(t0() + Duration::seconds(30)),
        };
        assert_eq!(
            decide(t0() + Duration::seconds(2), Some(f)),
            Action::WaitUntil(t0() + Duration::seconds(30))
        );
        // A renewal time past the end is never later than the end.
        let f = Facts {
            next_attempt_at: Some(t0() + Duration::seconds(90)),
            ..f
        };
        assert_eq!(
            decide(t0(), Some(f)),
            Action::WaitUntil(t0() + Duration::seconds(45))
        );
    }

    #[test]
    fn the_next_attempt_honours_retry_after_and_transient_errors_come_back_sooner() {
        let now = t0();
        assert_eq!(
            next_attempt(now, 1, false, None),
            now + Duration::seconds(30)
        );
        assert_eq!(
            next_attempt(now, 2, false, None),
            now + Duration::seconds(60)
        );
        assert_eq!(next_attempt(now, 1, true, None), now + Duration::seconds(5));
        assert_eq!(
            next_attempt(now, 3, true, None),
            now + Duration::seconds(20)
        );
        // A rate limit's Retry-After later than the backoff wins...
        let later = now + Duration::hours(1);
        assert_eq!(next_attempt(now, 1, false, Some(later)), later);
        // ...an earlier one does not shorten the backoff.
        let sooner = now + Duration::seconds(1);
        assert_eq!(
            next_attempt(now, 1, false, Some(sooner)),
            now + Duration::seconds(30)
        );
    }

    #[test]
    fn a_certificate_is_served_until_it_expires() {
        assert!(servable(t0(), Some(t0() + Duration::seconds(1))));
        assert!(!servable(t0(), Some(t0())));
        assert!(!servable(t0(), None));
    }
}
