//! The deployment state machine: one pure function, [`transition`].
//!
//! A deployment carries three tracks (003): a runtime [`Status`], a
//! [`Stage`] of promotion, and a [`Health`]. Every change to them goes
//! through [`transition`], which either returns the next state or a
//! [`TransitionError`]; it never panics. Terminal states (succeeded, failed,
//! cancelled) only move along the post-activation edges
//! (active → superseded / rolled_back / stopped) and never back to running.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Runtime status (003): the overall execution state of a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted, waiting for a pipeline slot.
    Queued,
    /// Progressing through its promotion stages.
    Running,
    /// Reached `active`; stays succeeded when later superseded.
    Succeeded,
    /// Stopped progressing: build error, readiness failure, crash, restart.
    Failed,
    /// Stopped on request (`berth cancel`) or replaced while queued.
    Cancelled,
}

/// Promotion stage (003, extended with what queueing, releases, canary
/// rollout, supersession and teardown need).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Not started yet (status queued).
    Pending,
    /// Clone, analyze, build and push of the image.
    Building,
    /// The release command runs in a one-off container of the new image.
    Releasing,
    /// The candidate container is being started beside the active one.
    StartingCandidate,
    /// Polling the candidate's readiness endpoint.
    CheckingReadiness,
    /// The route flips to the candidate (or starts a canary split).
    SwitchingRoute,
    /// The candidate serves a weighted share of traffic, being observed.
    Canary,
    /// Waiting for in-flight requests on the previous deployment.
    DrainingPrevious,
    /// Live and serving all traffic.
    Active,
    /// Was active; a newer deployment took over. Image retained for rollback.
    Superseded,
    /// Was active and replaced by a rollback, or (status failed) regressed:
    /// a canary that failed or berth's own rollback in the bake window.
    RolledBack,
    /// Was active; its environment or service was torn down.
    Stopped,
}

/// Health of the deployment's container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Pending,
    Healthy,
    Unhealthy,
}

/// The three tracks together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    pub stage: Stage,
    pub health: Health,
}

/// Something that happened to a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A pipeline slot was given: pending → building.
    Start,
    /// The image exists; its release command starts: building → releasing.
    ReleaseStarted,
    /// The candidate container is being created: building | releasing → starting_candidate.
    CandidateStarting,
    /// The candidate runs; readiness polling begins.
    CandidateStarted,
    /// Readiness passed: checking_readiness → switching_route, health healthy.
    Ready,
    /// A canary split was installed: switching_route → canary.
    CanaryStarted,
    /// All traffic goes to the candidate: switching_route | canary → draining_previous.
    RouteSwitched,
    /// The previous deployment is drained: draining_previous → active, succeeded.
    Drained,
    /// A health observation (probe result, crash) while the container runs.
    HealthChanged(Health),
    /// The pipeline failed (any cause, including "interrupted by restart"):
    /// failed at the stage it reached, but a canary (its traffic put back
    /// on the previous deployment) ends rolled_back.
    Fail,
    /// Cancel requested, or a newer trigger replaced this one.
    Cancel,
    /// A newer deployment became active: active → superseded.
    Supersede,
    /// A rollback replaced this active deployment: active → rolled_back.
    RollBack,
    /// It regressed in its bake window and berth rolled it back by itself:
    /// succeeded, active → failed, rolled_back.
    Regress,
    /// The service or environment was torn down: active → stopped.
    Stop,
}

/// An illegal (state, event) pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply {event:?} to a deployment that is {} at stage {}", state.status, state.stage)]
pub struct TransitionError {
    pub state: State,
    pub event: Event,
}

impl State {
    /// The state of a freshly created deployment.
    pub const fn new() -> Self {
        State {
            status: Status::Queued,
            stage: Stage::Pending,
            health: Health::Pending,
        }
    }

    /// No further pipeline work will happen.
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// Whether the container of this deployment is (or should be) running.
    pub fn has_container(&self) -> bool {
        !self.is_terminal()
            && matches!(
                self.stage,
                Stage::StartingCandidate
                    | Stage::CheckingReadiness
                    | Stage::SwitchingRoute
                    | Stage::Canary
                    | Stage::DrainingPrevious
            )
            || self.stage == Stage::Active
    }
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        ALL_STATUSES.iter().copied().find(|v| v.as_str() == s)
    }
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Pending => "pending",
            Stage::Building => "building",
            Stage::Releasing => "releasing",
            Stage::StartingCandidate => "starting_candidate",
            Stage::CheckingReadiness => "checking_readiness",
            Stage::SwitchingRoute => "switching_route",
            Stage::Canary => "canary",
            Stage::DrainingPrevious => "draining_previous",
            Stage::Active => "active",
            Stage::Superseded => "superseded",
            Stage::RolledBack => "rolled_back",
            Stage::Stopped => "stopped",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        ALL_STAGES.iter().copied().find(|v| v.as_str() == s)
    }
    /// Stages before the route switch, where a cancel or failure leaves the
    /// previous deployment untouched.
    pub fn before_switch(self) -> bool {
        matches!(
            self,
            Stage::Pending
                | Stage::Building
                | Stage::Releasing
                | Stage::StartingCandidate
                | Stage::CheckingReadiness
        )
    }
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Pending => "pending",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        ALL_HEALTHS.iter().copied().find(|v| v.as_str() == s)
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Status, Stage, Health);

pub const ALL_STATUSES: [Status; 5] = [
    Status::Queued,
    Status::Running,
    Status::Succeeded,
    Status::Failed,
    Status::Cancelled,
];
pub const ALL_STAGES: [Stage; 12] = [
    Stage::Pending,
    Stage::Building,
    Stage::Releasing,
    Stage::StartingCandidate,
    Stage::CheckingReadiness,
    Stage::SwitchingRoute,
    Stage::Canary,
    Stage::DrainingPrevious,
    Stage::Active,
    Stage::Superseded,
    Stage::RolledBack,
    Stage::Stopped,
];
pub const ALL_HEALTHS: [Health; 3] = [Health::Pending, Health::Healthy, Health::Unhealthy];

/// Apply `event` to `state`. The only place deployment state changes.
pub fn transition(state: State, event: Event) -> Result<State, TransitionError> {
    use Stage as S;
    use Status as St;
    let err = Err(TransitionError { state, event });
    let State {
        status,
        stage,
        health,
    } = state;
    let to = |status, stage, health| {
        Ok(State {
            status,
            stage,
            health,
        })
    };
    match (status, stage, event) {
        (St::Queued, S::Pending, Event::Start) => to(St::Running, S::Building, health),
        (St::Running, S::Building, Event::ReleaseStarted) => to(St::Running, S::Releasing, health),
        (St::Running, S::Building | S::Releasing, Event::CandidateStarting) => {
            to(St::Running, S::StartingCandidate, Health::Pending)
        }
        (St::Running, S::StartingCandidate, Event::CandidateStarted) => {
            to(St::Running, S::CheckingReadiness, health)
        }
        (St::Running, S::CheckingReadiness, Event::Ready) => {
            to(St::Running, S::SwitchingRoute, Health::Healthy)
        }
        (St::Running, S::SwitchingRoute, Event::CanaryStarted) => {
            to(St::Running, S::Canary, health)
        }
        (St::Running, S::SwitchingRoute | S::Canary, Event::RouteSwitched) => {
            to(St::Running, S::DrainingPrevious, health)
        }
        (St::Running, S::DrainingPrevious, Event::Drained) => to(St::Succeeded, S::Active, health),
        (
            St::Running,
            S::StartingCandidate
            | S::CheckingReadiness
            | S::SwitchingRoute
            | S::Canary
            | S::DrainingPrevious,
            Event::HealthChanged(h),
        )
        | (St::Succeeded, S::Active, Event::HealthChanged(h)) => to(status, stage, h),
        // A canary that fails has had its traffic put back on the
        // previous deployment: it ends rolled back.
        (St::Running, S::Canary, Event::Fail) => to(St::Failed, S::RolledBack, health),
        (St::Queued | St::Running, _, Event::Fail) => to(St::Failed, stage, health),
        (St::Queued, S::Pending, Event::Cancel) => to(St::Cancelled, stage, health),
        (
            St::Running,
            S::Building | S::Releasing | S::StartingCandidate | S::CheckingReadiness | S::Canary,
            Event::Cancel,
        ) => to(St::Cancelled, stage, health),
        (St::Succeeded, S::Active, Event::Supersede) => to(St::Succeeded, S::Superseded, health),
        (St::Succeeded, S::Active, Event::RollBack) => to(St::Succeeded, S::RolledBack, health),
        (St::Succeeded, S::Active, Event::Regress) => to(St::Failed, S::RolledBack, health),
        (St::Succeeded, S::Active, Event::Stop) => to(St::Succeeded, S::Stopped, health),
        _ => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The legal transitions, written independently of [`transition`]:
    /// `status stage event -> status stage health`, where `*` as a stage
    /// means any stage (kept as it is) and `=` keeps the health.
    const TABLE: &str = "
        queued   pending            start     -> running   building           =
        running  building           release   -> running   releasing          =
        running  building           starting  -> running   starting_candidate pending
        running  releasing          starting  -> running   starting_candidate pending
        running  starting_candidate started   -> running   checking_readiness =
        running  checking_readiness ready     -> running   switching_route    healthy
        running  switching_route    canary    -> running   canary             =
        running  switching_route    switched  -> running   draining_previous  =
        running  canary             switched  -> running   draining_previous  =
        running  draining_previous  drained   -> succeeded active             =
        running  starting_candidate health    -> running   starting_candidate H
        running  checking_readiness health    -> running   checking_readiness H
        running  switching_route    health    -> running   switching_route    H
        running  canary             health    -> running   canary             H
        running  draining_previous  health    -> running   draining_previous  H
        succeeded active            health    -> succeeded active             H
        queued   *                  fail      -> failed    *                  =
        running  canary             fail      -> failed    rolled_back        =
        running  *                  fail      -> failed    *                  =
        queued   pending            cancel    -> cancelled pending            =
        running  building           cancel    -> cancelled building           =
        running  releasing          cancel    -> cancelled releasing          =
        running  starting_candidate cancel    -> cancelled starting_candidate =
        running  checking_readiness cancel    -> cancelled checking_readiness =
        running  canary             cancel    -> cancelled canary             =
        succeeded active            supersede -> succeeded superseded         =
        succeeded active            rollback  -> succeeded rolled_back        =
        succeeded active            regress   -> failed    rolled_back        =
        succeeded active            stop      -> succeeded stopped            =
    ";

    fn events() -> Vec<(&'static str, Event)> {
        let mut v = vec![
            ("start", Event::Start),
            ("release", Event::ReleaseStarted),
            ("starting", Event::CandidateStarting),
            ("started", Event::CandidateStarted),
            ("ready", Event::Ready),
            ("canary", Event::CanaryStarted),
            ("switched", Event::RouteSwitched),
            ("drained", Event::Drained),
            ("fail", Event::Fail),
            ("cancel", Event::Cancel),
            ("supersede", Event::Supersede),
            ("rollback", Event::RollBack),
            ("regress", Event::Regress),
            ("stop", Event::Stop),
        ];
        for h in ALL_HEALTHS {
            v.push(("health", Event::HealthChanged(h)));
        }
        v
    }

    /// Look `(state, event)` up in [`TABLE`].
    fn expected(state: State, name: &str, event: Event) -> Option<State> {
        for line in TABLE.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let w: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(w.len(), 7, "bad table line {line}");
            let from_stage_any = w[1] == "*";
            if Status::parse(w[0]) != Some(state.status)
                || (!from_stage_any && Stage::parse(w[1]) != Some(state.stage))
                || w[2] != name
            {
                continue;
            }
            let stage = if w[5] == "*" {
                state.stage
            } else {
                Stage::parse(w[5]).expect("stage word")
            };
            let health = match (w[6], event) {
                ("=", _) => state.health,
                ("H", Event::HealthChanged(h)) => h,
                (word, _) => Health::parse(word).expect("health word"),
            };
            return Some(State {
                status: Status::parse(w[4]).expect("status word"),
                stage,
                health,
            });
        }
        None
    }

    #[test]
    fn every_state_event_pair_matches_the_table() {
        let mut legal = 0;
        let mut pairs = 0;
        for status in ALL_STATUSES {
            for stage in ALL_STAGES {
                for health in ALL_HEALTHS {
                    let state = State {
                        status,
                        stage,
                        health,
                    };
                    for (name, event) in events() {
                        pairs += 1;
                        let got = transition(state, event);
                        match expected(state, name, event) {
                            Some(want) => {
                                legal += 1;
                                assert_eq!(got, Ok(want), "{state:?} + {event:?}");
                            }
                            None => assert_eq!(
                                got,
                                Err(TransitionError { state, event }),
                                "{state:?} + {event:?} should be refused"
                            ),
                        }
                    }
                }
            }
        }
        assert_eq!(pairs, 5 * 12 * 3 * 17);
        assert!(legal > 100, "only {legal} legal pairs");
    }

    #[test]
    fn happy_path_reaches_active_and_terminal_states_stay_put() {
        let mut s = State::new();
        for e in [
            Event::Start,
            Event::CandidateStarting,
            Event::CandidateStarted,
            Event::Ready,
            Event::RouteSwitched,
            Event::Drained,
        ] {
            s = transition(s, e).unwrap();
        }
        assert_eq!(s.status, Status::Succeeded);
        assert_eq!(s.stage, Stage::Active);
        assert_eq!(s.health, Health::Healthy);
        assert!(s.has_container());
        let failed = transition(State::new(), Event::Fail).unwrap();
        assert!(failed.is_terminal());
        assert!(transition(failed, Event::Start).is_err());
        assert!(!failed.has_container());
    }

    #[test]
    fn error_message_names_state_and_event() {
        let e = transition(State::new(), Event::Drained).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot apply Drained to a deployment that is queued at stage pending"
        );
    }

    #[test]
    fn words_round_trip() {
        for s in ALL_STAGES {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for s in ALL_STATUSES {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        for h in ALL_HEALTHS {
            assert_eq!(Health::parse(h.as_str()), Some(h));
        }
    }
}
