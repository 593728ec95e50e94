//! BuildKit's progress as log lines, in the shape of `docker build
//! --progress=plain`: every step (vertex) gets a number when it starts, and
//! each line of its output is prefixed with it, so a line is attributed to
//! the step that printed it.
//!
//! ```text
//! #3 [2/3] RUN sh -c 'echo ok; echo ok > /proof'
//! #3 ok
//! #3 DONE 0.3s
//! #4 exporting to image
//! #4 writing image sha256:... done
//! ```

use std::collections::{HashMap, HashSet};

use bollard_buildkit_proto::google::protobuf::Timestamp;
use bollard_buildkit_proto::moby::buildkit::v1::StatusResponse;

/// Turns BuildKit status updates into lines; keeps the state that spans
/// updates (step numbers, partial output lines).
#[derive(Default)]
pub(crate) struct Progress {
    steps: HashMap<String, Step>,
    next: u32,
    statuses_done: HashSet<(String, String)>,
}

#[derive(Default)]
struct Step {
    n: u32,
    announced: bool,
    finished: bool,
    partial: Vec<u8>,
}

impl Progress {
    /// The lines that `update` adds, in order.
    pub(crate) fn apply(&mut self, update: &StatusResponse, out: &mut Vec<String>) {
        // Starts first, then the steps' statuses and output, then their ends,
        // as BuildKit's plain progress prints them.
        for v in &update.vertexes {
            let step = self.step(&v.digest);
            if !step.announced && (v.started.is_some() || v.cached || v.completed.is_some()) {
                step.announced = true;
                out.push(format!("#{} {}", step.n, v.name));
            }
        }
        for s in &update.statuses {
            if s.completed.is_none() || !self.statuses_done.insert((s.vertex.clone(), s.id.clone()))
            {
                continue;
            }
            let n = self.step(&s.vertex).n;
            out.push(format!("#{n} {} done", s.id));
        }
        for l in &update.logs {
            let step = self.step(&l.vertex);
            step.partial.extend_from_slice(&l.msg);
            while let Some(i) = step.partial.iter().position(|b| *b == b'\n' || *b == b'\r') {
                let line: Vec<u8> = step.partial.drain(..=i).collect();
                push_line(step.n, &line[..i], out);
            }
        }
        for v in &update.vertexes {
            let step = self.step(&v.digest);
            let n = step.n;
            if step.finished {
                continue;
            }
            if !v.error.is_empty() {
                step.finished = true;
                flush(step, out);
                out.push(format!("#{n} ERROR: {}", v.error));
            } else if v.cached {
                step.finished = true;
                out.push(format!("#{n} CACHED"));
            } else if let Some(done) = &v.completed {
                step.finished = true;
                flush(step, out);
                match &v.started {
                    Some(start) => out.push(format!("#{n} DONE {:.1}s", seconds(start, done))),
                    None => out.push(format!("#{n} DONE")),
                }
            }
        }
    }

    /// Lines still held (output without a final newline).
    pub(crate) fn finish(&mut self, out: &mut Vec<String>) {
        let mut steps: Vec<&mut Step> = self.steps.values_mut().collect();
        steps.sort_by_key(|s| s.n);
        for step in steps {
            flush(step, out);
        }
    }

    fn step(&mut self, digest: &str) -> &mut Step {
        let next = &mut self.next;
        self.steps.entry(digest.to_string()).or_insert_with(|| {
            *next += 1;
            Step {
                n: *next,
                ..Default::default()
            }
        })
    }
}

fn flush(step: &mut Step, out: &mut Vec<String>) {
    let rest = std::mem::take(&mut step.partial);
    push_line(step.n, &rest, out);
}

fn push_line(n: u32, bytes: &[u8], out: &mut Vec<String>) {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    if !text.trim().is_empty() {
        out.push(format!("#{n} {text}"));
    }
}

fn seconds(start: &Timestamp, end: &Timestamp) -> f64 {
    let s = start.seconds as f64 + f64::from(start.nanos) / 1e9;
    let e = end.seconds as f64 + f64::from(end.nanos) / 1e9;
    (e - s).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard_buildkit_proto::moby::buildkit::v1::{Vertex, VertexLog, VertexStatus};

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    fn vertex(digest: &str, name: &str) -> Vertex {
        Vertex {
            digest: digest.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn log(digest: &str, msg: &str) -> VertexLog {
        VertexLog {
            vertex: digest.into(),
            msg: msg.as_bytes().to_vec(),
            stream: 1,
            ..Default::default()
        }
    }

    fn lines(p: &mut Progress, update: StatusResponse) -> Vec<String> {
        let mut out = Vec::new();
        p.apply(&update, &mut out);
        out
    }

    #[test]
    fn steps_are_numbered_and_output_attributed() {
        let mut p = Progress::default();
        // Pending: not shown yet.
        let pending = vertex("a", "[1/2] COPY busybox /bin/busybox");
        assert!(lines(
            &mut p,
            StatusResponse {
                vertexes: vec![pending.clone()],
                ..Default::default()
            }
        )
        .is_empty());
        let started = Vertex {
            started: ts(10, 0),
            ..pending.clone()
        };
        let run = Vertex {
            started: ts(11, 0),
            ..vertex("b", "[2/2] RUN echo ok")
        };
        assert_eq!(
            lines(
                &mut p,
                StatusResponse {
                    vertexes: vec![started.clone(), run.clone()],
                    ..Default::default()
                }
            ),
            ["#1 [1/2] COPY busybox /bin/busybox", "#2 [2/2] RUN echo ok"]
        );
        // Output split across updates, with a carriage return and a blank line.
        assert_eq!(
            lines(
                &mut p,
                StatusResponse {
                    logs: vec![log("b", "o"), log("b", "k\nnext\r\n\npart")],
                    ..Default::default()
                }
            ),
            ["#2 ok", "#2 next"]
        );
        // Completion flushes the partial line, then DONE with the duration.
        let run_done = Vertex {
            completed: ts(12, 500_000_000),
            ..run
        };
        assert_eq!(
            lines(
                &mut p,
                StatusResponse {
                    vertexes: vec![run_done.clone()],
                    ..Default::default()
                }
            ),
            ["#2 part", "#2 DONE 1.5s"]
        );
        // Repeated updates of a finished step add nothing.
        assert!(lines(
            &mut p,
            StatusResponse {
                vertexes: vec![run_done],
                ..Default::default()
            }
        )
        .is_empty());
    }

    #[test]
    fn cached_errors_and_statuses() {
        let mut p = Progress::default();
        let cached = Vertex {
            cached: true,
            ..vertex("a", "[1/2] COPY x /x")
        };
        let failed = Vertex {
            started: ts(1, 0),
            completed: ts(2, 0),
            error: "executor failed running [/bin/sh -c false]: exit code: 1".into(),
            ..vertex("b", "[2/2] RUN false")
        };
        let status = VertexStatus {
            id: "writing image sha256:abc".into(),
            vertex: "c".into(),
            completed: ts(3, 0),
            ..Default::default()
        };
        assert_eq!(
            lines(
                &mut p,
                StatusResponse {
                    vertexes: vec![cached, failed],
                    statuses: vec![status.clone(), status],
                    logs: vec![log("b", "no newline")],
                    ..Default::default()
                }
            ),
            [
                "#1 [1/2] COPY x /x",
                "#2 [2/2] RUN false",
                "#3 writing image sha256:abc done",
                "#1 CACHED",
                "#2 no newline",
                "#2 ERROR: executor failed running [/bin/sh -c false]: exit code: 1",
            ]
        );
        let mut out = Vec::new();
        p.finish(&mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
