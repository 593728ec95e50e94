//! `berth logs`: print or follow the logs of one deployment, or the
//! runtime logs of a project's services.
//!
//! `--follow` reads the server-sent-event stream and, when it breaks,
//! reconnects from the last sequence number seen (`after=` and
//! `Last-Event-ID`), dropping anything at or below it: no line is lost or
//! printed twice.

use super::Ctx;
use crate::client::{ClientError, LogQuery, LogSource};
use crate::output::{emit, timestamp};
use berth_core::model::{LogLine, LogStream};
use berth_core::units::parse_since;
use chrono::Utc;
use clap::Args;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// A deployment or run id (or give --project).
    #[arg(required_unless_present = "project", conflicts_with = "project")]
    id: Option<String>,
    #[arg(long, env = "BERTH_PROJECT")]
    project: Option<String>,
    #[arg(long, requires = "project")]
    service: Option<String>,
    #[arg(long = "env", requires = "project")]
    environment: Option<String>,
    /// Keep printing new lines as they come.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Comma-separated streams: berth, build, stdout, stderr.
    #[arg(long, value_parser = parse_streams)]
    stream: Option<String>,
    /// Only lines since this long ago (10m, 2h) or since an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only lines after this sequence number: the `seq` of the last line a
    /// follower printed with --json, to resume without losing or repeating
    /// a line.
    #[arg(long, value_name = "SEQ")]
    after: Option<i64>,
}

fn parse_streams(s: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let st = LogStream::parse(part).ok_or_else(|| {
            format!("unknown stream {part:?}: expected berth, build, stdout or stderr")
        })?;
        out.push(st.as_str());
    }
    if out.is_empty() {
        return Err("no stream given".into());
    }
    Ok(out.join(","))
}

/// Lines asked per page when not following.
const PAGE: u32 = 1000;
/// Longest pause between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `2026-04-24T10:01:45Z [stdout]  text`
pub fn format_line(l: &LogLine) -> String {
    let tag = format!("[{}]", l.stream.as_str());
    format!(
        "{} {tag:<8} {}",
        timestamp(l.ts),
        l.text.trim_end_matches(['\r', '\n'])
    )
}

struct Printer {
    json: bool,
    last_seq: Option<i64>,
}

impl Printer {
    /// Print `line` unless already printed; its text as JSON when `json`.
    fn print(&mut self, line: &LogLine, raw: &str) {
        if self.last_seq.is_some_and(|s| line.seq <= s) {
            return;
        }
        self.last_seq = Some(line.seq);
        let mut text = if self.json {
            raw.trim().to_string()
        } else {
            format_line(line)
        };
        text.push('\n');
        emit(&text);
    }
}

pub async fn run(ctx: &Ctx, a: LogsArgs) -> anyhow::Result<()> {
    if let Some(id) = &a.id {
        // A one-off run's id: its output is kept with the run.
        match ctx.client.get_run(id).await {
            Ok(reply) => return super::run::logs(ctx, reply.parse()?, a.follow).await,
            Err(ClientError::Api { status: 404, .. } | ClientError::Status { status: 404, .. }) => {
            }
            Err(e) => return Err(e.into()),
        }
    }
    let src = match (a.id, a.project) {
        (Some(id), _) => LogSource::Deployment(id),
        (None, Some(project)) => LogSource::Runtime {
            project,
            service: a.service,
            environment: a.environment,
        },
        (None, None) => anyhow::bail!("give a deployment id or --project"),
    };
    let since = match &a.since {
        Some(s) => Some(timestamp(
            parse_since(s, Utc::now()).map_err(|e| anyhow::anyhow!("--since: {e}"))?,
        )),
        None => None,
    };
    let mut printer = Printer {
        json: ctx.json,
        last_seq: a.after,
    };
    let query = |after: Option<i64>, limit: Option<u32>| LogQuery {
        after,
        stream: a.stream.clone(),
        since: since.clone(),
        limit,
    };
    if !a.follow {
        return print_pages(ctx, &src, &mut printer, &query).await;
    }
    follow(ctx, &src, &mut printer, &query).await
}

type QueryFn<'a> = dyn Fn(Option<i64>, Option<u32>) -> LogQuery + 'a;

/// Print every stored line after the printer's cursor, page by page.
async fn print_pages(
    ctx: &Ctx,
    src: &LogSource,
    printer: &mut Printer,
    query: &QueryFn<'_>,
) -> anyhow::Result<()> {
    loop {
        let reply = ctx
            .client
            .logs(src, &query(printer.last_seq, Some(PAGE)))
            .await?;
        let raws = reply.elements()?;
        let before = printer.last_seq;
        for raw in &raws {
            let line: LogLine =
                serde_json::from_str(raw.get()).map_err(|e| ClientError::Decode(e.to_string()))?;
            printer.print(&line, raw.get());
        }
        if raws.is_empty() || printer.last_seq == before {
            return Ok(());
        }
    }
}

async fn follow(
    ctx: &Ctx,
    src: &LogSource,
    printer: &mut Printer,
    query: &QueryFn<'_>,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(200);
    let mut ever_connected = false;
    loop {
        let resp = ctx
            .client
            .follow_logs(src, &query(printer.last_seq, None))
            .await;
        let mut resp = match resp {
            Ok(r) => r,
            // Keep trying through a server restart once we were following;
            // a first failure or any answer (404, 401) is final.
            Err(e) if e.is_transient() && ever_connected => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        ever_connected = true;
        let mut parser = SseParser::default();
        let mut got_any = false;
        let is_sse = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let clean_end = if !is_sse {
            // A server answering with a plain page: poll it.
            let body = resp
                .bytes()
                .await
                .map_err(|e| ClientError::Decode(e.to_string()))?;
            let raws: Vec<Box<serde_json::value::RawValue>> =
                serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))?;
            for raw in &raws {
                if let Ok(line) = serde_json::from_str::<LogLine>(raw.get()) {
                    got_any = true;
                    printer.print(&line, raw.get());
                }
            }
            true
        } else {
            loop {
                match ctx.client.next_chunk(&mut resp).await {
                    Ok(Some(chunk)) => {
                        for ev in parser.feed(&chunk) {
                            match serde_json::from_str::<LogLine>(&ev.data) {
                                Ok(line) => {
                                    got_any = true;
                                    printer.print(&line, &ev.data);
                                }
                                // A non-log event (keep-alive, notice): skip it.
                                Err(_) => continue,
                            }
                        }
                    }
                    Ok(None) => break true,
                    Err(_) => break false,
                }
            }
        };
        if got_any {
            backoff = Duration::from_millis(200);
        }
        // A deployment whose container is gone will log no more.
        if clean_end {
            if let LogSource::Deployment(id) = src {
                if let Ok(d) = ctx.client.get_deployment(id).await {
                    if let Ok(d) = d.parse() {
                        if d.status.is_terminal() && !d.state().has_container() {
                            // Catch up on anything logged after the break.
                            return print_pages(ctx, src, printer, query).await;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One server-sent event.
#[derive(Debug, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub data: String,
}

/// Incremental parser of `text/event-stream` (fields `id` and `data`;
/// comments and other fields ignored; `\n`, `\r\n` line ends).
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    id: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(SseEvent {
                        id: self.id.take(),
                        data: self.data.join("\n"),
                    });
                }
                self.data.clear();
                self.id = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "data" => self.data.push(value.to_string()),
                "id" => self.id = Some(value.to_string()),
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nid: 1\nda").is_empty());
        let evs = p.feed(b"ta: {\"a\":1}\r\n\r\nid: 2\ndata: x\ndata: y\n\n");
        assert_eq!(
            evs,
            vec![
                SseEvent {
                    id: Some("1".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    id: Some("2".into()),
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn streams_are_validated() {
        assert_eq!(parse_streams("stdout, stderr"), Ok("stdout,stderr".into()));
        assert!(parse_streams("stdout,nope").is_err());
        assert!(parse_streams(",").is_err());
    }

    #[test]
    fn line_format_matches_003() {
        let line: LogLine = serde_json::from_value(serde_json::json!({
            "seq": 7, "ts": "2026-04-24T10:01:45Z", "deploymentId": "dep_1",
            "projectName": "shop", "serviceName": "web", "environmentName": "production",
            "sha": "abc1234", "stream": "stdout", "step": null, "text": "server listening on :3000\n"
        }))
        .unwrap();
        assert_eq!(
            format_line(&line),
            "2026-04-24T10:01:45Z [stdout] server listening on :3000"
        );
        let mut l2 = line.clone();
        l2.stream = LogStream::Berth;
        l2.text = "stage: building".into();
        assert_eq!(
            format_line(&l2),
            "2026-04-24T10:01:45Z [berth]  stage: building"
        );
    }

    #[test]
    fn printer_drops_repeats() {
        let mut p = Printer {
            json: true,
            last_seq: Some(5),
        };
        let line: LogLine = serde_json::from_value(serde_json::json!({
            "seq": 5, "ts": "2026-04-24T10:01:45Z", "deploymentId": "dep_1",
            "projectName": "shop", "serviceName": "web", "environmentName": "production",
            "sha": null, "stream": "stdout", "step": null, "text": "x"
        }))
        .unwrap();
        p.print(&line, "{}");
        assert_eq!(p.last_seq, Some(5));
    }
}
