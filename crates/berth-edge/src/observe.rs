//! What the edge tells about the requests it proxied, off the request
//! path: the access log (`--access-log`, JSON lines) and the spans exported
//! over OTLP (`otlp.rs`).
//!
//! A request that is logged or sampled carries a [`Record`] in its
//! in-flight guard (`target::InflightGuard`); the record is filled as the
//! request goes (status and upstream time when the response head arrives,
//! body bytes as they pass) and handed over when the guard drops, that is
//! when the response ended. Handing over is a `try_send` on a bounded
//! channel: when a consumer falls behind, records are dropped and counted
//! (`berth_edge_access_log_dropped_total`, `berth_edge_spans_dropped_total`),
//! the request never waits. With both off, no record exists: the request
//! path pays one branch.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::target::TargetInfo;
use crate::trace::TraceContext;

/// Records waiting for the access log writer before new ones are dropped.
const LOG_QUEUE: usize = 16 * 1024;

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output (`-`), never rotated.
    Stdout,
    /// A file, rotated by size.
    File(PathBuf),
}

/// Settings of the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub target: AccessLogTarget,
    /// A file reaching this size is renamed `<path>.1` (the older ones
    /// shift to `.2`, ...) and a new one started.
    pub max_bytes: u64,
    /// Rotated files kept beside the current one; older ones are deleted.
    pub keep: usize,
}

impl AccessLogConfig {
    /// `-` for standard output, else a file path; 100 MiB per file, 5
    /// rotated files kept (at most 600 MiB in all).
    pub fn parse(v: &str) -> AccessLogConfig {
        AccessLogConfig {
            target: if v == "-" {
                AccessLogTarget::Stdout
            } else {
                AccessLogTarget::File(PathBuf::from(v))
            },
            max_bytes: 100 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// One proxied request, as the access log and the span exporter see it.
#[derive(Debug)]
pub(crate) struct Record {
    /// Wall clock at the start.
    pub(crate) at: SystemTime,
    pub(crate) started: Instant,
    pub(crate) host: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) client: IpAddr,
    /// The route's target id (`None`: the edge answered before routing,
    /// e.g. 404 for an unknown host).
    pub(crate) target: Option<Box<str>>,
    pub(crate) who: Option<Arc<TargetInfo>>,
    pub(crate) trace: TraceContext,
    /// 0 until the status is known.
    pub(crate) status: u16,
    /// Until the response head arrived.
    pub(crate) upstream: Option<Duration>,
    /// Response body bytes sent to the client.
    pub(crate) bytes: u64,
    /// Until the response ended (set when handed over).
    pub(crate) duration: Duration,
    pub(crate) log: bool,
    pub(crate) span: bool,
    /// Where it goes (taken when handed over, so a queued record keeps
    /// nothing alive).
    pub(crate) to: Option<Arc<Observers>>,
}

/// What a record is made of when the request starts.
pub(crate) struct Start<'a> {
    pub(crate) started: Instant,
    pub(crate) host: &'a [u8],
    pub(crate) method: &'a str,
    pub(crate) path: &'a [u8],
    pub(crate) client: IpAddr,
    pub(crate) target: Option<&'a crate::target::TargetState>,
    pub(crate) trace: TraceContext,
}

impl Record {
    /// The record of a starting request, if the access log or the span
    /// export wants it.
    pub(crate) fn start(observers: &Arc<Observers>, s: Start<'_>) -> Option<Box<Record>> {
        let (log, span) = observers.wants(&s.trace);
        if !log && !span {
            return None;
        }
        Some(Box::new(Record {
            at: SystemTime::now(),
            started: s.started,
            host: String::from_utf8_lossy(s.host).into_owned(),
            method: s.method.to_string(),
            // the query may hold tokens: never logged
            path: String::from_utf8_lossy(s.path.split(|b| *b == b'?').next().unwrap_or_default())
                .into_owned(),
            client: s.client,
            target: s.target.map(|t| t.id.clone()),
            who: s.target.and_then(|t| t.info()),
            trace: s.trace,
            status: 0,
            upstream: None,
            bytes: 0,
            duration: Duration::ZERO,
            log,
            span,
            to: Some(observers.clone()),
        }))
    }

    /// The request moved to another target (a replica that refused it was
    /// left for a sibling, see `proxy::Attempt::retry`).
    pub(crate) fn retarget(&mut self, target: &crate::target::TargetState) {
        self.target = Some(target.id.clone());
        self.who = target.info();
    }

    /// Logs (or exports) a request the edge answered itself before
    /// routing it (`status`, a body of `bytes`).
    pub(crate) fn unrouted(observers: &Arc<Observers>, s: Start<'_>, status: u16, bytes: usize) {
        if let Some(mut r) = Record::start(observers, s) {
            r.status = status;
            r.bytes = bytes as u64;
            r.finish();
        }
    }

    /// The status and the upstream time, when the response head is known.
    pub(crate) fn answered(&mut self, status: u16, upstream: Duration) {
        self.status = status;
        self.upstream = Some(upstream);
    }

    /// Hands the record over (the response ended).
    pub(crate) fn finish(mut self: Box<Self>) {
        self.duration = self.started.elapsed();
        let Some(to) = self.to.take() else { return };
        let span = self.span;
        if self.log {
            if let Some(log) = &to.log {
                let line = self.json_line();
                if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                    log.tx.try_send(line)
                {
                    log.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if span {
            if let Some(spans) = &to.spans {
                spans.send(self);
            }
        }
    }

    /// The access log line (with its newline).
    pub(crate) fn json_line(&self) -> Vec<u8> {
        let who = self.who.as_deref();
        let time = humantime_rfc3339(self.at);
        let v = serde_json::json!({
            "time": time,
            "host": self.host,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "durationMs": self.duration.as_secs_f64() * 1000.0,
            "upstreamMs": self.upstream.map(|d| d.as_secs_f64() * 1000.0),
            "bytes": self.bytes,
            "client": self.client.to_string(),
            "deploymentId": who.and_then(|w| w.deployment_id.as_deref()),
            "commit": who.and_then(|w| w.short_sha.as_deref()),
            "traceId": std::str::from_utf8(&self.trace.trace_id).unwrap_or_default(),
        });
        let mut out = serde_json::to_vec(&v).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// `2026-11-29T06:04:37.123Z`.
fn humantime_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil date from days since 1970-01-01 (H. Hinnant's algorithm)
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The consumers of records; `None` fields are off.
#[derive(Debug, Default)]
pub(crate) struct Observers {
    pub(crate) log: Option<LogSink>,
    pub(crate) spans: Option<crate::otlp::SpanSink>,
}

impl Observers {
    pub(crate) fn is_off(&self) -> bool {
        self.log.is_none() && self.spans.is_none()
    }

    /// Whether a request with this trace context gets a record, and for
    /// what: (access log, span).
    pub(crate) fn wants(&self, trace: &TraceContext) -> (bool, bool) {
        (
            self.log.is_some(),
            self.spans.as_ref().is_some_and(|s| s.samples(trace)),
        )
    }

    pub(crate) fn dropped_lines(&self) -> Option<u64> {
        self.log.as_ref().map(|l| l.dropped.load(Ordering::Relaxed))
    }
}

/// The access log's end of the channel.
#[derive(Debug)]
pub(crate) struct LogSink {
    tx: SyncSender<Vec<u8>>,
    pub(crate) dropped: AtomicU64,
}

impl LogSink {
    /// Opens the log (the file is created now, so a bad path fails at
    /// start) and starts its writer thread.
    pub(crate) fn start(cfg: AccessLogConfig) -> std::io::Result<LogSink> {
        let out = Output::open(&cfg)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(LOG_QUEUE);
        std::thread::Builder::new()
            .name("berth-access-log".into())
            .spawn(move || write_loop(rx, out))?;
        Ok(LogSink {
            tx,
            dropped: AtomicU64::new(0),
        })
    }
}

enum Output {
    Stdout(std::io::Stdout),
    File {
        cfg: AccessLogConfig,
        path: PathBuf,
        file: std::io::BufWriter<std::fs::File>,
        size: u64,
    },
}

fn open_append(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

impl Output {
    fn open(cfg: &AccessLogConfig) -> std::io::Result<Output> {
        match &cfg.target {
            AccessLogTarget::Stdout => Ok(Output::Stdout(std::io::stdout())),
            AccessLogTarget::File(path) => {
                let (file, size) = open_append(path)?;
                Ok(Output::File {
                    cfg: cfg.clone(),
                    path: path.clone(),
                    file: std::io::BufWriter::with_capacity(64 * 1024, file),
                    size,
                })
            }
        }
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => s.lock().write_all(line),
            Output::File {
                cfg,
                path,
                file,
                size,
            } => {
                if *size > 0 && *size + line.len() as u64 > cfg.max_bytes {
                    file.flush()?;
                    rotate(path, cfg.keep)?;
                    let (f, s) = open_append(path)?;
                    *file = std::io::BufWriter::with_capacity(64 * 1024, f);
                    *size = s;
                }
                file.write_all(line)?;
                *size += line.len() as u64;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => s.lock().flush(),
            Output::File { file, .. } => file.flush(),
        }
    }
}

/// `path` becomes `path.1`, `path.1` becomes `path.2`, ... ; the file
/// beyond `keep` is deleted (`keep` = 0: the full file is deleted).
fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    let numbered = |i: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(keep));
    for i in (1..keep).rev() {
        let from = numbered(i);
        if from.exists() {
            std::fs::rename(&from, numbered(i + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))
}

fn write_loop(rx: Receiver<Vec<u8>>, mut out: Output) {
    let mut failed = false;
    while let Ok(line) = rx.recv() {
        let mut r = out.write(&line);
        // write what else is queued, then flush once
        while r.is_ok() {
            match rx.try_recv() {
                Ok(line) => r = out.write(&line),
                Err(_) => break,
            }
        }
        let r = r.and_then(|()| out.flush());
        match r {
            Err(e) if !failed => {
                tracing::warn!(error = %e, "access log write failed");
                failed = true;
            }
            Ok(()) => failed = false,
            Err(_) => {}
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_798_761_599_123);
        assert_eq!(humantime_rfc3339(t), "2026-12-31T23:59:59.123Z");
        assert_eq!(
            humantime_rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn files_rotate_by_size_and_old_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let cfg = AccessLogConfig {
            target: AccessLogTarget::File(path.clone()),
            max_bytes: 100,
            keep: 2,
        };
        let mut out = Output::open(&cfg).unwrap();
        for i in 0..20 {
            out.write(format!("{i:039}\n").as_bytes()).unwrap(); // 40 bytes
        }
        out.flush().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let mut p1 = path.as_os_str().to_owned();
        p1.push(".1");
        let mut p2 = path.as_os_str().to_owned();
        p2.push(".2");
        let mut p3 = path.as_os_str().to_owned();
        p3.push(".3");
        // two lines per file: 18,19 current; 16,17 in .1; 14,15 in .2
        assert_eq!(read(&path).lines().count(), 2);
        assert!(read(&path).starts_with(&format!("{:039}", 18)));
        assert!(read(Path::new(&p1)).starts_with(&format!("{:039}", 16)));
        assert!(read(Path::new(&p2)).starts_with(&format!("{:039}", 14)));
        assert!(!Path::new(&p3).exists());
    }
}
