//! Notifications: a signed JSON POST per deployment event to a URL a user
//! registered (`berth notify add`). The records the store keeps and the API
//! returns (JSON in camelCase), and the pure rules: which event a
//! deployment's state is, the body sent, the retry schedule, and how a URL
//! is shown (never in full: a Slack webhook's path is its secret).

use crate::model::Deployment;
use crate::state::{Stage, Status};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// How long a delivery is retried before it is given up.
pub const RETRY_FOR_SECS: i64 = 3600;
/// The first retry's delay; each next one doubles, up to [`MAX_DELAY_SECS`].
pub const FIRST_DELAY_SECS: i64 = 10;
pub const MAX_DELAY_SECS: i64 = 15 * 60;

/// What happened to a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// A deployment became active (deploy, promote, redeploy).
    Succeeded,
    /// A deployment failed; the previous one keeps serving.
    Failed,
    /// A rollback made the previous version serve again (`berth rollback`,
    /// or berth itself after a bake-window regression).
    RolledBack,
    /// A canary stage or the bake window judged the new deployment worse
    /// than the previous one (or saw too little traffic): berth put the
    /// traffic back and failed it.
    Regressed,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 4] = [
        NotifyEvent::Succeeded,
        NotifyEvent::Failed,
        NotifyEvent::RolledBack,
        NotifyEvent::Regressed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Succeeded => "succeeded",
            NotifyEvent::Failed => "failed",
            NotifyEvent::RolledBack => "rolled_back",
            NotifyEvent::Regressed => "regressed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// The event a deployment's current state stands for, if any: only
    /// ended deployments have one (cancelled ones none).
    pub fn of(d: &Deployment) -> Option<Self> {
        match d.status {
            Status::Succeeded if d.trigger == crate::model::Trigger::Rollback => {
                Some(NotifyEvent::RolledBack)
            }
            Status::Succeeded => Some(NotifyEvent::Succeeded),
            Status::Failed
                if d.promotion_stage == Stage::RolledBack
                    || d.promotion_stage == Stage::Canary
                    || d.failure_message
                        .as_deref()
                        .is_some_and(|m| m.contains("canary at ")) =>
            {
                Some(NotifyEvent::Regressed)
            }
            Status::Failed => Some(NotifyEvent::Failed),
            _ => None,
        }
    }
}

impl std::fmt::Display for NotifyEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    #[error("unknown event {0:?} (expected one of succeeded, failed, rolled_back, regressed)")]
    UnknownEvent(String),
    #[error("--events names no event")]
    NoEvents,
    #[error("url {0}")]
    BadUrl(String),
}

/// `--events a,b,c`: each known, at least one, no repeats, in [`NotifyEvent::ALL`] order.
pub fn parse_events(list: &str) -> Result<Vec<NotifyEvent>, NotifyError> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let e = NotifyEvent::parse(part).ok_or_else(|| NotifyError::UnknownEvent(part.into()))?;
        if !out.contains(&e) {
            out.push(e);
        }
    }
    if out.is_empty() {
        return Err(NotifyError::NoEvents);
    }
    out.sort_by_key(|e| NotifyEvent::ALL.iter().position(|a| a == e));
    Ok(out)
}

/// A URL accepted as a notification endpoint: `http` or `https`, a host,
/// no whitespace. `shown` is what berth prints: `scheme://host[:port]/…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointUrl {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub shown: String,
}

/// Checks a notification URL. The error never repeats the URL's path or
/// credentials (they may be its secret).
pub fn parse_url(url: &str) -> Result<EndpointUrl, NotifyError> {
    let bad = |why: &str| NotifyError::BadUrl(why.to_string());
    if url.trim().is_empty() {
        return Err(bad("is empty"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain spaces or control characters"));
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(bad("must start with http:// or https://")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("has an unclosed [ in its host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("has a bad host")),
        };
        (format!("[{h}]"), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("has no host"));
    }
    if !host.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err(bad("has a bad host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad("has a bad port (1-65535)")),
        },
    };
    let host = host.to_ascii_lowercase();
    let hp = if port == default_port {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let has_more = rest.len() > authority.len() && &rest[authority.len()..] != "/";
    let shown = format!("{scheme}://{hp}/{}", if has_more { "…" } else { "" });
    Ok(EndpointUrl {
        scheme,
        host,
        port,
        shown,
    })
}

/// A registered endpoint, as shown: never its full URL nor its secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub id: String,
    pub project_name: String,
    /// `scheme://host[:port]/…`.
    pub url: String,
    pub events: Vec<NotifyEvent>,
    pub created_at: DateTime<Utc>,
}

/// `POST /api/v1/projects/{p}/notifications`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddNotification {
    pub url: String,
    /// Event names; every event when absent.
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

/// The answer to `notify add`: the record and its signing secret, which
/// is never shown again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationCreated {
    #[serde(flatten)]
    pub notification: Notification,
    pub secret: String,
}

/// An endpoint with its latest deliveries (`notify list`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationStatus {
    #[serde(flatten)]
    pub notification: Notification,
    /// Newest first, without their bodies.
    pub deliveries: Vec<Delivery>,
}

/// Where a delivery is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not sent yet, or to be retried at `nextAttemptAt`.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up: refused by the endpoint (a 4xx other than 408/429), or
    /// still failing an hour after the event.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// One try at sending a delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub at: DateTime<Utc>,
    /// The endpoint's answer, when it answered.
    pub status_code: Option<u16>,
    /// Why there was no answer (connect error, timeout).
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// One event for one endpoint (the outbox row): the exact body is fixed
/// when it is queued, so every retry sends (and signs) the same bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub id: String,
    pub notification_id: String,
    pub project_name: String,
    pub deployment_id: String,
    pub event: NotifyEvent,
    pub status: DeliveryStatus,
    pub attempts: Vec<Attempt>,
    /// When it is tried next (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The JSON body sent (left out of listings).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

/// What an attempt's result means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub enum Outcome {
    Delivered,
    Retry,
    GiveUp,
}

/// 2xx: delivered; 408, 429, 5xx or no answer: retried; another 4xx: the
/// endpoint refuses it, given up.
pub fn outcome(status_code: Option<u16>) -> Outcome {
    match status_code {
        Some(c) if (200..300).contains(&c) => Outcome::Delivered,
        Some(408 | 429) | None => Outcome::Retry,
        Some(c) if (400..500).contains(&c) => Outcome::GiveUp,
        Some(_) => Outcome::Retry,
    }
}

/// When to try again after `failed` failed attempts, or `None` when the
/// hour since `created_at` is over: 10 s, then doubling, at most 15 min.
pub fn next_attempt(
    created_at: DateTime<Utc>,
    failed: u32,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let shift = failed.saturating_sub(1).min(16);
    let delay = (FIRST_DELAY_SECS << shift).min(MAX_DELAY_SECS);
    let at = now + Duration::seconds(delay);
    let end = created_at + Duration::seconds(RETRY_FOR_SECS);
    (at <= end).then_some(at)
}

impl Delivery {
    /// Records an attempt's result: delivered, given up, or the next retry.
    pub fn record(&mut self, attempt: Attempt) {
        let now = attempt.at;
        let result = outcome(attempt.status_code);
        self.attempts.push(attempt);
        match result {
            Outcome::Delivered => {
                self.status = DeliveryStatus::Delivered;
                self.next_attempt_at = None;
            }
            Outcome::GiveUp => {
                self.status = DeliveryStatus::Failed;
                self.next_attempt_at = None;
            }
            Outcome::Retry => {
                match next_attempt(self.created_at, self.attempts.len() as u32, now) {
                    Some(at) => self.next_attempt_at = Some(at),
                    None => {
                        self.status = DeliveryStatus::Failed;
                        self.next_attempt_at = None;
                    }
                }
            }
        }
    }
}

/// The one-line, Slack-compatible summary (`text`).
pub fn text(d: &Deployment, event: NotifyEvent) -> String {
    let slot = if d.environment_name == "production" {
        format!("{}/{}", d.project_name, d.service_name)
    } else {
        format!(
            "{}/{} ({})",
            d.project_name, d.service_name, d.environment_name
        )
    };
    let sha = d
        .commit
        .as_ref()
        .map(|c| format!(" {}", &c.sha[..c.sha.len().min(7)]))
        .unwrap_or_default();
    let reason = d.failure_message.as_deref().unwrap_or("no reason given");
    match event {
        NotifyEvent::Succeeded => format!(
            ":white_check_mark: {slot}: deployment {}{sha} is live{}",
            d.id,
            d.route_url
                .as_deref()
                .map(|u| format!(" at {u}"))
                .unwrap_or_default()
        ),
        NotifyEvent::RolledBack => format!(
            ":rewind: {slot}: rolled back to {}{sha}{}",
            d.source_deployment_id.as_deref().unwrap_or(&d.id),
            d.failure_message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ),
        NotifyEvent::Failed => format!(":x: {slot}: deployment {}{sha} failed: {reason}", d.id),
        NotifyEvent::Regressed => format!(
            ":warning: {slot}: deployment {}{sha} regressed and was rolled back: {reason}",
            d.id
        ),
    }
}

/// The JSON body of a delivery: `event`, `deploymentId`, `deployment` (a
/// summary object), `project`, `environment`, `service`, `reason`, `text`.
pub fn body(d: &Deployment, event: NotifyEvent, at: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "event": event.as_str(),
        "at": at,
        "project": d.project_name,
        "environment": d.environment_name,
        "service": d.service_name,
        "deploymentId": d.id,
        "deployment": {
            "id": d.id,
            "status": d.status.as_str(),
            "promotionStage": d.promotion_stage.as_str(),
            "trigger": d.trigger.as_str(),
            "commit": d.commit,
            "routeUrl": d.route_url,
            "previewUrl": d.preview_url,
            "failureMessage": d.failure_message,
            "sourceDeploymentId": d.source_deployment_id,
            "createdAt": d.created_at,
            "completedAt": d.completed_at,
        },
        "reason": d.failure_message,
        "text": text(d, event),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Trigger;

    #[test]
    fn urls_are_checked_and_shown_without_their_path() {
        let u = parse_url("https://hooks.slack.com/services/T0/B0/secretpath").unwrap();
        assert_eq!(u.shown, "https://hooks.slack.com/…");
        assert_eq!(u.port, 443);
        let u = parse_url("http://user:pw@127.0.0.1:8080/hook?k=v").unwrap();
        assert_eq!(u.shown, "http://127.0.0.1:8080/…");
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8080));
        assert_eq!(
            parse_url("http://[::1]:9/").unwrap().shown,
            "http://[::1]:9/"
        );
        assert_eq!(
            parse_url("http://Example.COM").unwrap().shown,
            "http://example.com/"
        );
        for (bad, why) in [
            ("", "is empty"),
            ("ftp://x/y", "must start with http"),
            ("hooks.slack.com/x", "must start with http"),
            ("http:///path", "has no host"),
            ("http://h:0/", "bad port"),
            ("http://h:99999/", "bad port"),
            ("http://h st/", "spaces"),
            ("http://h$x/", "bad host"),
        ] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("/y") && !e.contains("path"), "{e}");
        }
    }

    #[test]
    fn events_parse_in_a_fixed_order() {
        assert_eq!(
            parse_events("failed, succeeded,failed").unwrap(),
            vec![NotifyEvent::Succeeded, NotifyEvent::Failed]
        );
        assert_eq!(parse_events(" , ").unwrap_err(), NotifyError::NoEvents);
        let e = parse_events("failed,deployed").unwrap_err().to_string();
        assert!(e.contains("\"deployed\""), "{e}");
    }

    #[test]
    fn answers_decide_delivered_retry_or_give_up() {
        assert_eq!(outcome(Some(200)), Outcome::Delivered);
        assert_eq!(outcome(Some(204)), Outcome::Delivered);
        assert_eq!(outcome(None), Outcome::Retry);
        assert_eq!(outcome(Some(503)), Outcome::Retry);
        assert_eq!(outcome(Some(429)), Outcome::Retry);
        assert_eq!(outcome(Some(404)), Outcome::GiveUp);
        assert_eq!(outcome(Some(301)), Outcome::Retry);
    }

    #[test]
    fn retries_back_off_and_stop_after_an_hour() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut now = t0;
        let mut delays = Vec::new();
        let mut failed = 0;
        while let Some(at) = next_attempt(t0, failed + 1, now) {
            delays.push((at - now).num_seconds());
            now = at;
            failed += 1;
        }
        assert_eq!(&delays[..5], &[10, 20, 40, 80, 160]);
        assert!(delays.iter().all(|d| *d <= MAX_DELAY_SECS));
        assert!(now <= t0 + Duration::seconds(RETRY_FOR_SECS));
        assert!(now > t0 + Duration::seconds(RETRY_FOR_SECS - MAX_DELAY_SECS));
        assert!(delays.len() >= 8, "{delays:?}");
    }

    fn deployment(status: Status, stage: Stage, trigger: Trigger) -> Deployment {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "id": "d1", "projectName": "shop", "serviceName": "web",
            "environmentName": "production", "status": "queued",
            "promotionStage": "pending", "health": "pending", "isActive": false,
            "routeUrl": null, "previewUrl": null, "failureMessage": null,
            "createdAt": "2026-01-01T00:00:00Z", "ref": "main",
            "commit": null, "trigger": "manual", "image": null, "steps": [],
            "build": {"provider": null, "framework": null, "runtime": null, "port": null, "startCommand": null, "cacheHit": false}
        }))
        .unwrap();
        d.status = status;
        d.promotion_stage = stage;
        d.trigger = trigger;
        d
    }

    #[test]
    fn a_deployment_state_names_one_event() {
        use NotifyEvent::*;
        let cases = [
            (
                Status::Succeeded,
                Stage::Active,
                Trigger::Manual,
                Some(Succeeded),
            ),
            (
                Status::Succeeded,
                Stage::Superseded,
                Trigger::Promote,
                Some(Succeeded),
            ),
            (
                Status::Succeeded,
                Stage::Active,
                Trigger::Rollback,
                Some(RolledBack),
            ),
            (
                Status::Failed,
                Stage::CheckingReadiness,
                Trigger::Manual,
                Some(Failed),
            ),
            (
                Status::Failed,
                Stage::RolledBack,
                Trigger::Manual,
                Some(Regressed),
            ),
            (Status::Cancelled, Stage::Building, Trigger::Manual, None),
            (Status::Running, Stage::Building, Trigger::Manual, None),
        ];
        for (status, stage, trigger, want) in cases {
            assert_eq!(
                NotifyEvent::of(&deployment(status, stage, trigger)),
                want,
                "{status:?} {stage:?} {trigger:?}"
            );
        }
        let mut d = deployment(Status::Failed, Stage::Canary, Trigger::Manual);
        d.failure_message = Some("health_check: canary at 5% regressed".into());
        assert_eq!(NotifyEvent::of(&d), Some(Regressed));
    }

    #[test]
    fn the_body_carries_the_reason_and_a_slack_text() {
        let mut d = deployment(Status::Failed, Stage::CheckingReadiness, Trigger::Manual);
        d.failure_message = Some("health_check: the app exited with code 3".into());
        let at = d.created_at;
        let b = body(&d, NotifyEvent::Failed, at);
        assert_eq!(b["event"], "failed");
        assert_eq!(b["deploymentId"], "d1");
        assert_eq!(b["deployment"]["id"], "d1");
        assert_eq!(b["reason"], "health_check: the app exited with code 3");
        let text = b["text"].as_str().unwrap();
        assert!(
            text.contains("shop/web") && text.contains("exited with code 3"),
            "{text}"
        );
    }
}
