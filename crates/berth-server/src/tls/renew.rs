//! When to obtain, renew or retry a certificate: pure decisions over a
//! certificate record and the clock, so they are tested without a CA.

use berth_core::model::CertState;
use chrono::{DateTime, Duration, Utc};

/// A certificate is renewed this long before it expires.
pub fn renew_before() -> Duration {
    Duration::days(30)
}

/// First retry delay after a failure; doubled per failure in a row.
pub fn first_retry() -> Duration {
    Duration::seconds(30)
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
        CertState::Issued => match rec.not_after {
            Some(end) => end - renew_before(),
            None => return Action::Obtain,
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
    let exp = failures.saturating_sub(1).min(20);
    let d = first_retry() * 2i32.pow(exp.min(30));
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
    fn a_certificate_is_served_until_it_expires() {
        assert!(servable(t0(), Some(t0() + Duration::seconds(1))));
        assert!(!servable(t0(), Some(t0())));
        assert!(!servable(t0(), None));
    }
}
