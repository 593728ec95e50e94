//! The access log and the OTLP span export (issue 17), on real sockets:
//! an OTLP/HTTP receiver on 127.0.0.1 decodes what the edge sends with the
//! `opentelemetry-proto` definitions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_edge::{AccessLogConfig, AccessLogTarget, EdgeConfig, OtlpConfig, TargetSpec};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message as _;
use tokio::net::TcpListener;

use crate::support::*;

const SHA1: &str = "1111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA2: &str = "2222222bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn version(id: &str, sha: &str, addr: SocketAddr, weight: u32) -> TargetSpec {
    TargetSpec {
        deployment_id: Some(id.into()),
        sha: Some(sha.into()),
        ..target(id, addr, weight)
    }
}

/// A span as the receiver saw it: its resource's attributes and its own.
#[derive(Debug, Clone)]
struct Got {
    resource: Vec<KeyValue>,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attributes: Vec<KeyValue>,
}

fn attr<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    kvs.iter()
        .find(|k| k.key == key)
        .and_then(|k| k.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(kvs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

/// A small OTLP/HTTP receiver: decodes every POST /v1/traces body.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Got>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let g = g.clone();
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let g = g.clone();
                async move {
                    assert_eq!(req.uri().path(), "/v1/traces");
                    assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let export = ExportTraceServiceRequest::decode(body).unwrap();
                    for rs in export.resource_spans {
                        let resource = rs.resource.unwrap_or_default().attributes;
                        for ss in rs.scope_spans {
                            for s in ss.spans {
                                g.lock().unwrap().push(Got {
                                    resource: resource.clone(),
                                    trace_id: s.trace_id,
                                    span_id: s.span_id,
                                    parent: s.parent_span_id,
                                    attributes: s.attributes,
                                });
                            }
                        }
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// GET (front path) or POST (hyper path) `/headers`; the body is the
/// request headers the app received.
async fn call(addr: SocketAddr, post: bool, traceparent: Option<&str>) -> serde_json::Value {
    let mut c = Conn::open(addr).await;
    let mut req = Request::builder()
        .method(if post { "POST" } else { "GET" })
        .uri("/headers?token=secret")
        .header("host", "shop.localhost");
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let resp = c
        .send(req.body(body(if post { "x" } else { "" })).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&b).unwrap()
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_request_is_logged_as_one_json_line() {
    let (v1, v2) = (upstream("v1").await, upstream("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let e = edge_with(EdgeConfig {
        access_log: Some(AccessLogConfig {
            target: AccessLogTarget::File(path.clone()),
            ..AccessLogConfig::parse("-")
        }),
        ..EdgeConfig::default()
    })
    .await;
    e.edge
        .apply(vec![upsert(
            "shop.localhost",
            vec![
                version("d1", SHA1, v1.addr, 1),
                version("d2", SHA2, v2.addr, 1),
            ],
        )])
        .unwrap();
    let mut sent = Vec::new();
    for i in 0..20 {
        let headers = call(e.addr, i % 2 == 1, None).await;
        sent.push(headers["traceparent"].as_str().unwrap()[3..35].to_string());
    }
    let lines = wait_for("20 access log lines", || {
        let text = std::fs::read_to_string(&path).ok()?;
        (text.lines().count() >= 20).then_some(text)
    })
    .await;
    let mut ids = std::collections::BTreeSet::new();
    for (i, line) in lines.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["host"], "shop.localhost", "{v}");
        assert_eq!(v["method"], if i % 2 == 1 { "POST" } else { "GET" }, "{v}");
        assert_eq!(v["path"], "/headers", "the query is never logged: {v}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["client"], "127.0.0.1");
        assert!(v["bytes"].as_u64().unwrap() > 50, "{v}");
        assert!(v["durationMs"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["time"].as_str().unwrap().ends_with('Z'), "{v}");
        let id = v["deploymentId"].as_str().unwrap();
        let commit = v["commit"].as_str().unwrap();
        assert_eq!(commit, if id == "d1" { &SHA1[..7] } else { &SHA2[..7] });
        ids.insert(id.to_string());
        assert_eq!(v["traceId"], sent[i], "the trace the app got: {v}");
    }
    assert_eq!(ids.len(), 2, "both versions logged");

    // the edge's own answers before routing are logged too
    let mut c = Conn::open(e.addr).await;
    assert_eq!(
        c.get("nobody.localhost", "/x?q=1").await.0,
        StatusCode::NOT_FOUND
    );
    let req = Request::post("/y")
        .header("host", "nobody.localhost")
        .body(body("x"))
        .unwrap();
    assert_eq!(c.send(req).await.unwrap().status(), StatusCode::NOT_FOUND);
    let lines = wait_for("22 access log lines", || {
        let text = std::fs::read_to_string(&path).ok()?;
        (text.lines().count() >= 22).then_some(text)
    })
    .await;
    for (line, (method, path)) in lines.lines().skip(20).zip([("GET", "/x"), ("POST", "/y")]) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["status"], 404, "{v}");
        assert_eq!(v["host"], "nobody.localhost", "{v}");
        assert_eq!(
            (v["method"].as_str(), v["path"].as_str()),
            (Some(method), Some(path))
        );
        assert!(
            v["deploymentId"].is_null() && v["upstreamMs"].is_null(),
            "{v}"
        );
        assert!(v["bytes"].as_u64().unwrap() > 10, "{v}");
    }
    assert!(e
        .edge
        .metrics_text()
        .contains("berth_edge_access_log_dropped_total 0"));
}

#[tokio::test]
async fn sampled_requests_are_exported_as_spans_with_the_sha_that_answered() {
    let (v1, v2) = (upstream("v1").await, upstream("v2").await);
    let (collector, got) = receiver().await;
    let e = edge_with(EdgeConfig {
        otlp: Some(OtlpConfig {
            endpoint: format!("http://{collector}"),
            sample: 1.0,
        }),
        ..EdgeConfig::default()
    })
    .await;
    // a canary: both versions answer
    e.edge
        .apply(vec![upsert(
            "shop.localhost",
            vec![
                version("d1", SHA1, v1.addr, 3),
                version("d2", SHA2, v2.addr, 1),
            ],
        )])
        .unwrap();
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut upstream_saw = Vec::new();
    for i in 0..40 {
        let tp = (i == 7).then_some(caller);
        let h = call(e.addr, i % 2 == 1, tp).await;
        upstream_saw.push(h["traceparent"].as_str().unwrap().to_string());
    }
    let spans = wait_for("40 spans", || {
        let g = got.lock().unwrap();
        (g.len() >= 40).then(|| g.clone())
    })
    .await;
    assert_eq!(spans.len(), 40);
    let mut shas = std::collections::BTreeMap::new();
    for tp in &upstream_saw {
        // the span is the app's parent: same trace, its span id
        let s = spans
            .iter()
            .find(|s| hex(&s.trace_id) == tp[3..35])
            .unwrap_or_else(|| panic!("no span for {tp}"));
        assert_eq!(hex(&s.span_id), tp[36..52]);
        assert!(
            tp.ends_with("-01"),
            "an exported trace reaches the app sampled: {tp}"
        );
        let version = text(&s.resource, "service.version").unwrap();
        let id = text(&s.resource, "berth.deployment.id").unwrap();
        assert_eq!(version, if id == "d1" { SHA1 } else { SHA2 });
        assert_eq!(text(&s.attributes, "service.version"), Some(version));
        assert_eq!(text(&s.attributes, "berth.deployment.id"), Some(id));
        assert_eq!(
            text(&s.attributes, "server.address"),
            Some("shop.localhost")
        );
        assert_eq!(text(&s.attributes, "url.path"), Some("/headers"));
        assert!(matches!(
            attr(&s.attributes, "http.response.status_code"),
            Some(any_value::Value::IntValue(200))
        ));
        assert!(matches!(
            attr(&s.attributes, "berth.upstream_time_ms"),
            Some(any_value::Value::DoubleValue(ms)) if *ms > 0.0
        ));
        *shas.entry(version.to_string()).or_insert(0) += 1;
    }
    assert_eq!(shas.get(SHA1), Some(&30), "{shas:?}");
    assert_eq!(shas.get(SHA2), Some(&10), "{shas:?}");
    // the caller's span is the parent of the continued one
    let continued = spans
        .iter()
        .find(|s| hex(&s.trace_id) == caller[3..35])
        .unwrap();
    assert_eq!(hex(&continued.parent), "00f067aa0ba902b7");
}

#[tokio::test]
async fn at_a_zero_rate_only_sampled_callers_are_exported() {
    let v1 = upstream("v1").await;
    let (collector, got) = receiver().await;
    let e = edge_with(EdgeConfig {
        otlp: Some(OtlpConfig {
            endpoint: format!("http://{collector}"),
            sample: 0.0,
        }),
        ..EdgeConfig::default()
    })
    .await;
    e.edge
        .apply(vec![upsert(
            "shop.localhost",
            vec![version("d1", SHA1, v1.addr, 1)],
        )])
        .unwrap();
    for post in [false, true] {
        for _ in 0..10 {
            let h = call(e.addr, post, None).await;
            let tp = h["traceparent"].as_str().unwrap();
            assert!(tp.ends_with("-00"), "not sampled, not flagged: {tp}");
        }
    }
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    call(e.addr, false, Some(sampled)).await;
    let spans = wait_for("one span", || {
        let g = got.lock().unwrap();
        (!g.is_empty()).then(|| g.clone())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(got.lock().unwrap().len(), 1, "{spans:?}");
    assert_eq!(hex(&spans[0].trace_id), sampled[3..35]);
}

#[test]
fn bad_settings_are_refused_at_start() {
    let err = berth_edge::Edge::new(EdgeConfig {
        otlp: Some(OtlpConfig {
            endpoint: "https://collector:4318".into(),
            sample: 0.01,
        }),
        ..EdgeConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("--otlp-endpoint"), "{err}");
    let err = berth_edge::Edge::new(EdgeConfig {
        access_log: Some(AccessLogConfig::parse("/nonexistent-dir/x/access.log")),
        ..EdgeConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("access log"), "{err}");
}
