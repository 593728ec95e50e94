//! The edge's spans, exported over OTLP/HTTP (protobuf) to a collector.
//!
//! One span per sampled proxied request (kind `SERVER`, named after the
//! method): its trace and span ids are the ones the edge sent upstream in
//! `traceparent` (so the app's own spans are its children), its parent the
//! caller's span when the request came with a valid `traceparent`. Sampling
//! is parent-based: a continued trace is exported when its caller sampled
//! it (flag `01`), a new one when its trace id falls in the `--trace-sample`
//! ratio (the id's low 64 bits against the ratio, as OpenTelemetry's
//! `TraceIdRatioBased` does); a new trace it samples reaches the app
//! flagged sampled (`-01`), so the app's spans join it. Spans are grouped by the deployment that
//! answered: one resource each, `service.name` = `berth-edge`,
//! `service.version` = that deployment's full commit SHA,
//! `berth.deployment.id` its id.
//!
//! Off the request path: a finished request hands its record to a bounded
//! channel (`try_send`; full: dropped and counted); one thread with its own
//! runtime batches them (up to [`BATCH`] spans, or what came within
//! [`LINGER`]) and POSTs each batch to `<endpoint>/v1/traces`. A collector
//! that is down costs the failed batches only (counted, logged once).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message as _;

use crate::observe::Record;
use crate::trace::TraceContext;

/// Spans waiting to be exported before new ones are dropped.
const QUEUE: usize = 8192;
/// Most spans in one export request.
pub(crate) const BATCH: usize = 512;
/// Longest a span waits for its batch to fill.
pub(crate) const LINGER: Duration = Duration::from_secs(1);
/// An export request that takes longer is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the span export.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// `http://host:port` of an OTLP/HTTP collector (a path other than `/`
    /// is used as it is, else `/v1/traces`).
    pub endpoint: String,
    /// The share of new traces exported, from 0 to 1 (default 0.01).
    pub sample: f64,
}

/// Why the OTLP settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("--otlp-endpoint {0:?}: {1}")]
    Endpoint(String, &'static str),
    #[error("--trace-sample {0}: must be a number from 0 to 1")]
    Sample(f64),
}

/// Where batches go: the collector's address and the request target.
#[derive(Debug, Clone)]
struct Endpoint {
    authority: http::uri::Authority,
    path: String,
}

fn parse_endpoint(v: &str) -> Result<Endpoint, OtlpError> {
    let bad = |why| OtlpError::Endpoint(v.to_string(), why);
    let uri: http::Uri = v.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("only http:// is supported (run a local collector)")),
        _ => return Err(bad("expected http://host:port")),
    }
    let authority = uri.authority().cloned().ok_or(bad("no host"))?;
    if authority.port_u16().is_none() {
        return Err(bad("give the port (OTLP/HTTP listens on 4318)"));
    }
    let path = match uri.path() {
        "" | "/" => "/v1/traces".to_string(),
        p => p.to_string(),
    };
    Ok(Endpoint { authority, path })
}

/// The request path's end of the span export.
#[derive(Debug)]
pub(crate) struct SpanSink {
    tx: tokio::sync::mpsc::Sender<Box<Record>>,
    /// A new trace is sampled when its id's low 64 bits are below this.
    threshold: u64,
    always: bool,
    pub(crate) dropped: AtomicU64,
}

impl SpanSink {
    /// Checks the settings and starts the exporter thread.
    pub(crate) fn start(cfg: &OtlpConfig) -> Result<SpanSink, OtlpError> {
        if !(0.0..=1.0).contains(&cfg.sample) {
            return Err(OtlpError::Sample(cfg.sample));
        }
        let endpoint = parse_endpoint(&cfg.endpoint)?;
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("berth-otlp".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "span export cannot start");
                        return;
                    }
                };
                rt.block_on(export_loop(rx, endpoint));
            })
            .map_err(|_| OtlpError::Endpoint(cfg.endpoint.clone(), "cannot start the exporter"))?;
        Ok(SpanSink {
            tx,
            threshold: (cfg.sample * u64::MAX as f64) as u64,
            always: cfg.sample >= 1.0,
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether the request of this trace context is exported.
    pub(crate) fn samples(&self, trace: &TraceContext) -> bool {
        if trace.continued() {
            return trace.flags & 1 == 1;
        }
        self.always || low64(&trace.trace_id) < self.threshold
    }

    /// A new trace this export samples is flagged sampled, so the app's
    /// own (parent-based) sampler records its spans under the edge's.
    pub(crate) fn flag(&self, trace: &mut TraceContext) {
        if !trace.continued() && self.samples(trace) {
            trace.flags |= 1;
        }
    }

    pub(crate) fn send(&self, r: Box<Record>) {
        if self.tx.try_send(r).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The low 64 bits of a hex trace id.
fn low64(trace_id: &[u8; 32]) -> u64 {
    trace_id[16..].iter().fold(0u64, |acc, c| {
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => 0,
        };
        acc << 4 | u64::from(v)
    })
}

fn unhex(s: &[u8]) -> Vec<u8> {
    let v = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => 0,
    };
    s.chunks_exact(2).map(|p| v(p[0]) << 4 | v(p[1])).collect()
}

async fn export_loop(mut rx: tokio::sync::mpsc::Receiver<Box<Record>>, endpoint: Endpoint) {
    let mut failing = false;
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let until = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        let body = encode(&batch).encode_to_vec();
        let n = batch.len();
        batch.clear();
        match tokio::time::timeout(EXPORT_TIMEOUT, post(&endpoint, body)).await {
            Ok(Ok(())) => failing = false,
            Ok(Err(e)) if !failing => {
                tracing::warn!(error = %e, spans = n, "span export failed");
                failing = true;
            }
            Err(_) if !failing => {
                tracing::warn!(spans = n, "span export timed out");
                failing = true;
            }
            _ => {}
        }
    }
}

async fn post(endpoint: &Endpoint, body: Vec<u8>) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(endpoint.authority.as_str())
        .await
        .map_err(|e| format!("connect {}: {e}", endpoint.authority))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::post(endpoint.path.as_str())
        .header(http::header::HOST, endpoint.authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("collector answered {}", resp.status()))
    }
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn text(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.to_string()))
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One export request: a resource per deployment that answered.
pub(crate) fn encode(batch: &[Box<Record>]) -> ExportTraceServiceRequest {
    let mut by_version: BTreeMap<(Option<&str>, Option<&str>), Vec<Span>> = BTreeMap::new();
    for r in batch {
        let who = r.who.as_deref();
        let id = who.and_then(|w| w.deployment_id.as_deref());
        let sha = who.and_then(|w| w.sha.as_deref());
        let start = nanos(r.at);
        let mut attributes = vec![
            text("http.request.method", &r.method),
            text("url.path", &r.path),
            text("server.address", &r.host),
            text("client.address", &r.client.to_string()),
            kv(
                "http.response.status_code",
                any_value::Value::IntValue(i64::from(r.status)),
            ),
            kv(
                "berth.response_bytes",
                any_value::Value::IntValue(r.bytes as i64),
            ),
        ];
        if let Some(t) = &r.target {
            attributes.push(text("berth.target", t));
        }
        if let Some(u) = r.upstream {
            attributes.push(kv(
                "berth.upstream_time_ms",
                any_value::Value::DoubleValue(u.as_secs_f64() * 1000.0),
            ));
        }
        if let Some(id) = id {
            attributes.push(text("berth.deployment.id", id));
        }
        if let Some(sha) = sha {
            attributes.push(text("service.version", sha));
        }
        let span = Span {
            trace_id: unhex(&r.trace.trace_id),
            span_id: unhex(&r.trace.span_id),
            parent_span_id: r.trace.parent_id.map(|p| unhex(&p)).unwrap_or_default(),
            // sampled (bit 0); whether the parent is remote is known (0x100)
            // and, when there is a parent, it is (0x200)
            flags: if r.trace.parent_id.is_some() {
                0x301
            } else {
                0x101
            },
            name: r.method.clone(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + r.duration.as_nanos() as u64,
            attributes,
            status: Some(Status {
                code: if r.status >= 500 || r.status == 0 {
                    status::StatusCode::Error as i32
                } else {
                    status::StatusCode::Unset as i32
                },
                message: String::new(),
            }),
            ..Default::default()
        };
        by_version.entry((id, sha)).or_default().push(span);
    }
    let resource_spans = by_version
        .into_iter()
        .map(|((id, sha), spans)| {
            let mut attributes = vec![text("service.name", "berth-edge")];
            if let Some(sha) = sha {
                attributes.push(text("service.version", sha));
            }
            if let Some(id) = id {
                attributes.push(text("berth.deployment.id", id));
            }
            ResourceSpans {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "berth-edge".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        let e = parse_endpoint("http://127.0.0.1:4318").unwrap();
        assert_eq!(e.authority.as_str(), "127.0.0.1:4318");
        assert_eq!(e.path, "/v1/traces");
        assert_eq!(
            parse_endpoint("http://c:4318/custom/traces").unwrap().path,
            "/custom/traces"
        );
        for bad in ["https://c:4318", "c:4318", "http://c", "not a url"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sampling_follows_the_ratio_and_the_parent() {
        let sink = |sample: f64| {
            SpanSink::start(&OtlpConfig {
                endpoint: "http://127.0.0.1:9".into(),
                sample,
            })
            .unwrap()
        };
        let (none, all, tenth) = (sink(0.0), sink(1.0), sink(0.1));
        let mut n = 0;
        for _ in 0..10_000 {
            let t = TraceContext::for_request(None);
            assert!(!none.samples(&t));
            assert!(all.samples(&t));
            n += usize::from(tenth.samples(&t));
        }
        assert!((800..1200).contains(&n), "{n} of 10000 at 0.1");
        let sampled = TraceContext::for_request(Some(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        let unsampled = TraceContext::for_request(Some(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(none.samples(&sampled));
        assert!(!all.samples(&unsampled));
        assert!(SpanSink::start(&OtlpConfig {
            endpoint: "http://127.0.0.1:9".into(),
            sample: 1.5
        })
        .is_err());
    }
}
