//! Notifications (`berth notify add`): a signed JSON POST per deployment
//! event, through an outbox in the store.
//!
//! How it flows: the [`Notifier`] (one task, on the leader only) looks at
//! the recent deployments of every project that has an endpoint, once a
//! second. A deployment whose state is an event
//! ([`berth_core::notify::NotifyEvent::of`]) that an endpoint asked for is
//! queued as a delivery (`Store::queue_delivery`: at most one per endpoint,
//! deployment and event, whoever notices it first, so a restart or a new
//! leader never sends an event twice nor loses one: the deployments are the
//! source of truth). Due deliveries are then sent, each with a bounded
//! timeout, and their attempts recorded; a failure is retried with backoff
//! for an hour ([`berth_core::notify::next_attempt`]).
//!
//! Invariants: the deploy path never waits on an endpoint (nothing here is
//! called by the pipeline); an endpoint's URL is never logged or returned
//! in full, only `scheme://host/…`; the body of a delivery is fixed when
//! it is queued, so every retry sends and signs the same bytes.

use berth_core::model::Deployment;
use berth_core::notify::{self, Attempt, Delivery, DeliveryStatus, NotifyEvent};
use berth_store::{DeploymentQuery, NotifyTarget, Store};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use sha2::Sha256;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "x-berth-signature-256";
/// How long one attempt may take, connect to last byte.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the leader looks for events and due deliveries.
const TICK: Duration = Duration::from_secs(1);
/// Deployments per project looked at each tick (the newest).
const RECENT: u32 = 30;
/// Deliveries sent at once.
const PARALLEL: usize = 8;

/// `sha256=<hex>`: the value of [`SIGNATURE_HEADER`] for `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A new signing secret (printed once by `notify add`).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!("bnsec_{}", hex::encode(bytes))
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn client() -> anyhow::Result<Client> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
    )
}

/// An error's message with every cause, the endpoint's URL masked.
fn describe(e: &(dyn std::error::Error + 'static), url: &str, shown: &str) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        cur = s.source();
    }
    msg.replace(url, shown)
}

/// Sends one attempt of `d` to `target`; never longer than [`ATTEMPT_TIMEOUT`].
async fn attempt(client: &Client, target: &NotifyTarget, d: &Delivery) -> Attempt {
    let at = Utc::now();
    let started = std::time::Instant::now();
    let shown = notify::parse_url(&target.url)
        .map(|u| u.shown)
        .unwrap_or_else(|_| "(invalid url)".into());
    let result = async {
        let req = axum::http::Request::post(&target.url)
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .header(
                axum::http::header::USER_AGENT,
                concat!("berth/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-berth-event", d.event.as_str())
            .header("x-berth-delivery", &d.id)
            .header(
                SIGNATURE_HEADER,
                signature(&target.secret, d.body.as_bytes()),
            )
            .body(Full::new(Bytes::from(d.body.clone())))
            .map_err(|e| format!("bad request: {}", describe(&e, &target.url, &shown)))?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| describe(&e, &target.url, &shown))?;
        let status = resp.status().as_u16();
        // Read (and drop) the answer so the connection can be reused.
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        Ok::<u16, String>(status)
    };
    let (status_code, error) = match tokio::time::timeout(ATTEMPT_TIMEOUT, result).await {
        Ok(Ok(code)) => (Some(code), None),
        Ok(Err(e)) => (None, Some(e)),
        Err(_) => (
            None,
            Some(format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs())),
        ),
    };
    Attempt {
        at,
        status_code,
        error,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

/// Queues and sends deliveries; see the module doc.
pub struct Notifier {
    store: Arc<dyn Store>,
    client: Client,
    /// (endpoint, deployment, event) already queued by this process.
    queued: std::sync::Mutex<HashSet<(String, String, NotifyEvent)>>,
}

impl Notifier {
    pub fn new(store: Arc<dyn Store>) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Notifier {
            store,
            client: client()?,
            queued: Default::default(),
        }))
    }

    /// Runs for ever: each tick, when this server leads, queue new events
    /// and send what is due.
    pub async fn run(self: Arc<Self>, leadership: crate::cluster::Leadership) {
        loop {
            tokio::time::sleep(TICK).await;
            if !leadership.is_leader() {
                continue;
            }
            berth_store::cluster::fenced(leadership.fence(), async {
                if let Err(e) = self.queue_events(Utc::now()).await {
                    tracing::warn!(error = %e, "notifications: looking for events failed");
                }
                if let Err(e) = self.send_due(Utc::now()).await {
                    tracing::warn!(error = %e, "notifications: sending failed");
                }
            })
            .await;
        }
    }

    /// Queues a delivery for every recent deployment event an endpoint
    /// asked for; returns how many were queued.
    pub async fn queue_events(&self, now: DateTime<Utc>) -> anyhow::Result<usize> {
        let endpoints = self.store.list_notifications(None).await?;
        if endpoints.is_empty() {
            return Ok(0);
        }
        let mut by_project: HashMap<&str, Vec<&notify::Notification>> = HashMap::new();
        for n in &endpoints {
            by_project.entry(&n.project_name).or_default().push(n);
        }
        let horizon = now - chrono::Duration::seconds(notify::RETRY_FOR_SECS);
        let mut queued = 0;
        for (project, ns) in by_project {
            let recent = self
                .store
                .list_deployments(&DeploymentQuery {
                    project: Some(project.to_string()),
                    limit: Some(RECENT),
                    ..Default::default()
                })
                .await?;
            for d in &recent {
                let Some(event) = NotifyEvent::of(d) else {
                    continue;
                };
                let last = d.completed_at.unwrap_or(d.created_at).max(d.created_at);
                if last < horizon {
                    continue;
                }
                for n in ns.iter().filter(|n| n.events.contains(&event)) {
                    if last < n.created_at {
                        continue;
                    }
                    if self.queue_one(n, d, event, now).await? {
                        queued += 1;
                    }
                }
            }
        }
        Ok(queued)
    }

    async fn queue_one(
        &self,
        n: &notify::Notification,
        d: &Deployment,
        event: NotifyEvent,
        now: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        let key = (n.id.clone(), d.id.clone(), event);
        if self.queued.lock().unwrap().contains(&key) {
            return Ok(false);
        }
        let delivery = Delivery {
            id: crate::ids::new_id(),
            notification_id: n.id.clone(),
            project_name: d.project_name.clone(),
            deployment_id: d.id.clone(),
            event,
            status: DeliveryStatus::Pending,
            attempts: Vec::new(),
            next_attempt_at: Some(now),
            created_at: now,
            body: notify::body(d, event, now).to_string(),
        };
        let fresh = self.store.queue_delivery(&delivery).await?;
        if fresh {
            tracing::info!(
                notification = n.id,
                deployment = d.id,
                event = event.as_str(),
                endpoint = n.url,
                "notification queued"
            );
        }
        let mut seen = self.queued.lock().unwrap();
        if seen.len() > 50_000 {
            seen.clear();
        }
        seen.insert(key);
        Ok(fresh)
    }

    /// Sends every delivery due at `now` (up to [`PARALLEL`] at once) and
    /// records each attempt; returns how many were tried.
    pub async fn send_due(&self, now: DateTime<Utc>) -> anyhow::Result<usize> {
        let due = self.store.due_deliveries(now, 64).await?;
        let n = due.len();
        let mut targets: HashMap<String, Option<NotifyTarget>> = HashMap::new();
        for d in &due {
            if !targets.contains_key(&d.notification_id) {
                let t = match self.store.notification_target(&d.notification_id).await {
                    Ok(t) => Some(t),
                    Err(berth_store::StoreError::NotFound { .. }) => None,
                    Err(e) => return Err(e.into()),
                };
                targets.insert(d.notification_id.clone(), t);
            }
        }
        let targets = &targets;
        futures::stream::iter(due)
            .for_each_concurrent(PARALLEL, |mut d| async move {
                let Some(Some(target)) = targets.get(&d.notification_id) else {
                    return;
                };
                let a = attempt(&self.client, target, &d).await;
                let what = match (&a.status_code, &a.error) {
                    (Some(c), _) => format!("HTTP {c}"),
                    (None, Some(e)) => e.clone(),
                    (None, None) => "no answer".into(),
                };
                d.record(a);
                match d.status {
                    DeliveryStatus::Delivered => tracing::info!(
                        delivery = d.id,
                        deployment = d.deployment_id,
                        event = d.event.as_str(),
                        "notification delivered ({what})"
                    ),
                    DeliveryStatus::Pending => tracing::warn!(
                        delivery = d.id,
                        deployment = d.deployment_id,
                        event = d.event.as_str(),
                        next = ?d.next_attempt_at,
                        "notification not delivered ({what}), will retry"
                    ),
                    DeliveryStatus::Failed => tracing::warn!(
                        delivery = d.id,
                        deployment = d.deployment_id,
                        event = d.event.as_str(),
                        "notification given up after {} attempt(s) ({what})",
                        d.attempts.len()
                    ),
                }
                match self.store.save_delivery(&d).await {
                    Ok(()) | Err(berth_store::StoreError::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(delivery = d.id, error = %e, "cannot record a delivery")
                    }
                }
            })
            .await;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(new_secret().starts_with("bnsec_"));
        assert_ne!(new_secret(), new_secret());
    }
}
