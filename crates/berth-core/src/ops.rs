//! Operations beside deployments: one-off runs (`berth run`) and, with the
//! same record, runs of scheduled jobs. The records the store keeps and the
//! API returns (JSON in camelCase).

use crate::model::LogStream;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Output lines a run record keeps (the last ones win).
pub const RUN_OUTPUT_LINES: usize = 1000;

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Recorded, its instance starting or running.
    Running,
    /// Exited with code 0.
    Succeeded,
    /// Exited non-zero, was killed (out of memory, timeout), or never
    /// started (`error` says why).
    Failed,
    /// A scheduled firing that did not run because the previous run of the
    /// job was still going.
    Skipped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Skipped,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        self != RunStatus::Running
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a run's output (secrets already redacted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunLine {
    pub ts: DateTime<Utc>,
    pub stream: LogStream,
    pub line: String,
}

/// A one-off command (`berth run`) or a scheduled job's run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: String,
    pub project_name: String,
    pub environment_name: String,
    pub service_name: String,
    /// The job's name for a scheduled (or `jobs run`) run; `None` for
    /// `berth run`.
    pub job: Option<String>,
    /// argv as given (never holds a secret value: variables are passed as
    /// the instance's environment).
    pub command: Vec<String>,
    /// Who asked: the API token's name, or `scheduler`.
    pub requested_by: String,
    /// The deployment whose image and settings it ran with.
    pub deployment_id: Option<String>,
    /// The berth server that runs it (its `dev.berth.instance`); a run it
    /// left unfinished when it restarted is marked failed by that server.
    #[serde(default)]
    pub server: Option<String>,
    /// The firing a scheduled run belongs to (one run per job and firing).
    pub scheduled_for: Option<DateTime<Utc>>,
    pub status: RunStatus,
    pub exit_code: Option<i64>,
    /// The kernel killed it for exceeding the service's memory limit.
    #[serde(default)]
    pub oom_killed: bool,
    /// Why it failed without an exit code, or was skipped.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The last [`RUN_OUTPUT_LINES`] lines, stdout and stderr in order.
    #[serde(default)]
    pub output: Vec<RunLine>,
    /// Lines dropped from the front to respect the bound.
    #[serde(default)]
    pub dropped_lines: u64,
}

impl Run {
    /// Keeps `line`, dropping the oldest beyond [`RUN_OUTPUT_LINES`].
    pub fn push_line(&mut self, line: RunLine) {
        if self.output.len() >= RUN_OUTPUT_LINES {
            let extra = self.output.len() + 1 - RUN_OUTPUT_LINES;
            self.output.drain(..extra);
            self.dropped_lines += extra as u64;
        }
        self.output.push(line);
    }

    /// The one-line outcome shown to a user: `exited with code 3`,
    /// `exited with code 137 (out of memory)`, or the error.
    pub fn outcome(&self) -> String {
        match (self.status, self.exit_code) {
            (RunStatus::Running, _) => "running".into(),
            (RunStatus::Skipped, _) => format!(
                "skipped: {}",
                self.error.as_deref().unwrap_or("previous run still going")
            ),
            (_, Some(code)) => format!(
                "exited with code {code}{}",
                if self.oom_killed {
                    " (out of memory)"
                } else {
                    ""
                }
            ),
            (_, None) => self.error.clone().unwrap_or_else(|| "failed".into()),
        }
    }
}

/// `POST /api/v1/projects/{name}/runs`: a detached run. The attached form
/// (`POST .../runs/attach`) takes the same fields as query parameters,
/// `command` as a JSON array, and its body is the process's stdin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRun {
    pub service: Option<String>,
    pub environment: Option<String>,
    pub command: Vec<String>,
}

/// One line of the NDJSON answer of `POST .../runs/attach`: `started`
/// first, then the output (`line`s, or with a terminal `output`), then
/// `exit` with the finished record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunStreamEvent {
    Started {
        run: Box<Run>,
    },
    Line(RunLine),
    /// With a terminal (`tty=true`): the terminal's bytes as they came,
    /// base64 (standard alphabet, padded), secrets redacted.
    Output {
        data: String,
    },
    Exit {
        run: Box<Run>,
    },
}

/// The request body of an attached run with a terminal (`tty=true`): a
/// sequence of frames, each a kind byte, a big-endian u32 length and that
/// many bytes: [`TtyFrame::STDIN`] carries input bytes,
/// [`TtyFrame::RESIZE`] four bytes (columns then rows, big-endian u16).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TtyFrame {
    Stdin(Vec<u8>),
    Resize { cols: u16, rows: u16 },
}

/// A malformed [`TtyFrame`] stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TtyFrameError {
    #[error("unknown terminal frame kind {0}")]
    UnknownKind(u8),
    #[error("terminal frame of {0} bytes is too large")]
    TooLarge(u32),
    #[error("resize frame of {0} bytes, want 4")]
    BadResize(u32),
}

impl TtyFrame {
    pub const STDIN: u8 = 0;
    pub const RESIZE: u8 = 1;
    /// Largest payload accepted.
    pub const MAX_LEN: u32 = 1 << 20;

    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = match self {
            TtyFrame::Stdin(b) => (Self::STDIN, b.clone()),
            TtyFrame::Resize { cols, rows } => {
                let mut p = cols.to_be_bytes().to_vec();
                p.extend_from_slice(&rows.to_be_bytes());
                (Self::RESIZE, p)
            }
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Takes the first whole frame off `buf`; `Ok(None)` while it is
    /// incomplete.
    pub fn decode(buf: &mut Vec<u8>) -> Result<Option<TtyFrame>, TtyFrameError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let kind = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if kind != Self::STDIN && kind != Self::RESIZE {
            return Err(TtyFrameError::UnknownKind(kind));
        }
        if len > Self::MAX_LEN {
            return Err(TtyFrameError::TooLarge(len));
        }
        if kind == Self::RESIZE && len != 4 {
            return Err(TtyFrameError::BadResize(len));
        }
        let end = 5 + len as usize;
        if buf.len() < end {
            return Ok(None);
        }
        let payload = buf[5..end].to_vec();
        buf.drain(..end);
        Ok(Some(if kind == Self::STDIN {
            TtyFrame::Stdin(payload)
        } else {
            TtyFrame::Resize {
                cols: u16::from_be_bytes([payload[0], payload[1]]),
                rows: u16::from_be_bytes([payload[2], payload[3]]),
            }
        }))
    }
}

/// A scheduled job (`[jobs.<name>]`) of an environment, as defined by the
/// berth.toml of its service's active deployment (`GET
/// /api/v1/projects/{name}/jobs`, `berth jobs list`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub name: String,
    pub project_name: String,
    pub environment_name: String,
    pub service_name: String,
    /// Five-field cron expression, UTC.
    pub schedule: String,
    pub command: String,
    pub timeout_seconds: u64,
    /// The active deployment whose image and settings its runs get.
    pub deployment_id: String,
    pub next_run_at: Option<DateTime<Utc>>,
    /// The newest runs first, without their output.
    #[serde(default)]
    pub last_runs: Vec<Run>,
}

/// `POST /api/v1/projects/{name}/jobs/{job}/runs`: run a job now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunJob {
    pub environment: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Run {
        Run {
            id: "r1".into(),
            project_name: "shop".into(),
            environment_name: "production".into(),
            service_name: "web".into(),
            job: None,
            command: vec!["true".into()],
            requested_by: "admin".into(),
            deployment_id: None,
            server: None,
            scheduled_for: None,
            status: RunStatus::Running,
            exit_code: None,
            oom_killed: false,
            error: None,
            created_at: Utc::now(),
            started_at: None,
            completed_at: None,
            output: Vec::new(),
            dropped_lines: 0,
        }
    }

    #[test]
    fn tty_frames_round_trip_in_pieces_and_refuse_garbage() {
        let frames = [
            TtyFrame::Stdin(b"echo hi\r".to_vec()),
            TtyFrame::Resize {
                cols: 132,
                rows: 50,
            },
            TtyFrame::Stdin(Vec::new()),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode()).collect();
        // Fed one byte at a time, the same frames come out.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for b in wire {
            buf.push(b);
            while let Some(f) = TtyFrame::decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
        let mut bad = vec![7, 0, 0, 0, 0];
        assert_eq!(
            TtyFrame::decode(&mut bad),
            Err(TtyFrameError::UnknownKind(7))
        );
        let mut bad = vec![1, 0, 0, 0, 2, 0, 0];
        assert_eq!(TtyFrame::decode(&mut bad), Err(TtyFrameError::BadResize(2)));
        let mut bad = vec![0, 0xff, 0, 0, 0];
        assert!(matches!(
            TtyFrame::decode(&mut bad),
            Err(TtyFrameError::TooLarge(_))
        ));
    }

    #[test]
    fn output_is_bounded_and_keeps_the_last_lines() {
        let mut r = run();
        for i in 0..RUN_OUTPUT_LINES + 5 {
            r.push_line(RunLine {
                ts: Utc::now(),
                stream: LogStream::Stdout,
                line: i.to_string(),
            });
        }
        assert_eq!(r.output.len(), RUN_OUTPUT_LINES);
        assert_eq!(r.dropped_lines, 5);
        assert_eq!(r.output[0].line, "5");
        assert_eq!(
            r.output.last().unwrap().line,
            (RUN_OUTPUT_LINES + 4).to_string()
        );
    }

    #[test]
    fn outcome_names_the_code_and_oom() {
        let mut r = run();
        r.status = RunStatus::Failed;
        r.exit_code = Some(137);
        r.oom_killed = true;
        assert_eq!(r.outcome(), "exited with code 137 (out of memory)");
        r.oom_killed = false;
        r.exit_code = Some(3);
        assert_eq!(r.outcome(), "exited with code 3");
        r.exit_code = None;
        r.error = Some("no such image".into());
        assert_eq!(r.outcome(), "no such image");
    }

    #[test]
    fn status_words_round_trip() {
        for s in [
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Skipped,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(RunStatus::parse("done"), None);
    }
}
