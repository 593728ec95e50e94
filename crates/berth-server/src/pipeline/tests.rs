//! The deploy algorithm in process, without Docker: a real store (SQLite in
//! a temp dir) and a real edge, with recording fakes of the runtime
//! ([`FakeRuntime`]) and the builder ([`FakeBuilder`]). Every test checks
//! the invariants at the end: at most one active deployment per slot,
//! every deployment terminal, the edge's routes equal to the store's.

use crate::deployer::{Backends, Deployer, NewDeployment};
use crate::ServerConfig;
use berth_build::{
    AnalyzeOptions, BuildError, BuildPlan, BuildRequest, Builder, BuiltImage, Checkout,
    CloneRequest, CommitInfo, ImageFacts, LogSink, Manifest, ManifestOptions, PushedImage,
};
use berth_core::config::ServiceConfig;
use berth_core::model::{Deployment, StepName, StepStatus, Trigger};
use berth_core::state::{Stage, Status};
use berth_edge::{Edge, EdgeConfig};
use berth_runtime::fake::{Behaviour, FakeRuntime};
use berth_runtime::Images;
use berth_store::{Cipher, DeploymentQuery, NewProject, SqliteStore, Store};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Scheduled jobs in process: the scheduler driven by a clock of the test.
mod jobs;
/// A deploy records the commit its ref names when it is asked (real git).
mod pinned;

const TOML: &str = "[services.web]\nport = 3000\n\n[services.web.readiness]\ndeadline = \"2s\"\n";

/// A builder that writes `berth.toml` as the "checkout", builds instantly
/// (adding the image to the fake runtime's store) and records its calls.
#[derive(Default)]
struct FakeBuilder {
    rt: FakeRuntime,
    toml: Mutex<String>,
    /// The next builds fail with this message.
    fail: Mutex<Option<String>>,
    /// How instances of the next built image behave.
    behaviour: Mutex<Behaviour>,
    /// Time a build takes.
    build_time: Mutex<Duration>,
    commits: AtomicU32,
    calls: Mutex<Vec<String>>,
    /// Clone and resolve refs with real git (`berth_build::clone`,
    /// `resolve_ref`) instead of inventing commits.
    real_git: std::sync::atomic::AtomicBool,
}

impl FakeBuilder {
    fn call(&self, c: String) {
        self.calls.lock().unwrap().push(c);
    }
}

#[async_trait::async_trait]
impl Builder for FakeBuilder {
    async fn clone_repo(&self, req: &CloneRequest, sink: LogSink) -> Result<Checkout, BuildError> {
        self.call(format!("clone {}", req.reference));
        if self.real_git.load(Ordering::SeqCst) {
            return berth_build::clone(req, sink).await;
        }
        std::fs::create_dir_all(&req.dest).map_err(|e| BuildError::Io(e.to_string()))?;
        let toml = self.toml.lock().unwrap().clone();
        std::fs::write(req.dest.join("berth.toml"), toml)
            .map_err(|e| BuildError::Io(e.to_string()))?;
        // A branch moves on at every clone; a commit is itself.
        let r = &req.reference;
        let sha = if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) {
            r.clone()
        } else {
            format!("{:040x}", self.commits.fetch_add(1, Ordering::SeqCst) + 1)
        };
        Ok(Checkout {
            dir: req.dest.clone(),
            commit: CommitInfo {
                sha: sha.clone(),
                branch: Some("main".into()),
                message: format!("commit {sha}"),
                author: "t <t@example.com>".into(),
            },
            tree: format!("tree-{sha}"),
        })
    }

    async fn resolve_ref(
        &self,
        repo: &str,
        reference: &str,
        key: Option<&Path>,
        timeout: Duration,
    ) -> Option<(String, Option<String>)> {
        if self.real_git.load(Ordering::SeqCst) {
            return berth_build::resolve_ref(repo, reference, key, timeout).await;
        }
        None
    }

    async fn analyze(
        &self,
        _: &Path,
        service: &ServiceConfig,
        _: &AnalyzeOptions,
    ) -> Result<BuildPlan, BuildError> {
        self.call("analyze".into());
        Ok(BuildPlan {
            provider: "dockerfile".into(),
            framework: None,
            runtime: None,
            port: service.port,
            start_command: None,
            dockerfile: "FROM scratch\n".into(),
            dockerfile_path: Some("Dockerfile".into()),
            generated: false,
        })
    }

    async fn build(
        &self,
        req: &BuildRequest,
        _: LogSink,
        cancel: CancellationToken,
    ) -> Result<BuiltImage, BuildError> {
        self.call(format!("build {}", req.tag));
        let wait = *self.build_time.lock().unwrap();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return Err(BuildError::Cancelled),
        }
        if let Some(msg) = self.fail.lock().unwrap().clone() {
            return Err(BuildError::BuildFailed(msg));
        }
        self.rt.add_image(&req.tag);
        self.rt
            .set_behaviour(&req.tag, self.behaviour.lock().unwrap().clone());
        Ok(BuiltImage {
            id: format!("sha256:{:064x}", self.commits.load(Ordering::SeqCst)),
            tag: req.tag.clone(),
        })
    }

    async fn inspect(&self, image: &str) -> Result<Option<ImageFacts>, BuildError> {
        let there = self
            .rt
            .exists(image)
            .await
            .map_err(|e| BuildError::Docker(e.to_string()))?;
        Ok(there.then(ImageFacts::default))
    }

    async fn push(
        &self,
        image: &str,
        registry: &str,
        _: LogSink,
    ) -> Result<PushedImage, BuildError> {
        Ok(PushedImage {
            reference: format!("{registry}/{image}"),
            digest: format!("sha256:{:064x}", 1),
        })
    }

    async fn manifest(&self, _: &str, _: &ManifestOptions) -> Result<Manifest, BuildError> {
        Ok(Manifest {
            entries: vec![],
            skipped: 0,
        })
    }
}

struct Harness {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    rt: FakeRuntime,
    builder: Arc<FakeBuilder>,
    edge: Edge,
    deployer: Arc<Deployer>,
}

fn config(dir: &Path) -> ServerConfig {
    let mut cfg = ServerConfig::new(dir.to_path_buf());
    cfg.drain_timeout = Duration::from_secs(5);
    cfg
}

fn edge(dir: &Path) -> Edge {
    Edge::new(EdgeConfig {
        routes_file: Some(dir.join("routes.json")),
        ..EdgeConfig::default()
    })
    .expect("edge")
}

/// A deployer over `store`, `rt` and `builder`: a fresh berth process.
fn deployer(
    dir: &Path,
    store: Arc<dyn Store>,
    rt: &FakeRuntime,
    builder: Arc<FakeBuilder>,
    edge: Edge,
) -> Arc<Deployer> {
    deployer_with(store, rt, builder, edge, config(dir))
}

/// [`deployer`] with a server configuration of its own.
fn deployer_with(
    store: Arc<dyn Store>,
    rt: &FakeRuntime,
    builder: Arc<FakeBuilder>,
    edge: Edge,
    cfg: ServerConfig,
) -> Arc<Deployer> {
    Deployer::new(
        Backends {
            store: store.clone(),
            runtime: Arc::new(rt.clone()),
            images: Arc::new(rt.clone()),
            builder,
            engine_connected: true,
            edge,
        },
        crate::logs::LogHub::start(store),
        Arc::new(cfg),
        "test".into(),
    )
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

/// A harness whose server configuration `tune` adjusts.
async fn harness_with(tune: impl FnOnce(&mut ServerConfig)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.path(), Cipher::from_key([7; 32])).unwrap());
    store
        .create_project(NewProject {
            name: "shop".into(),
            repo: "/srv/shop".into(),
            default_branch: "main".into(),
            retain_images: 3,
            webhook_secret: None,
            deploy_key: None,
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let rt = FakeRuntime::new();
    let builder = Arc::new(FakeBuilder {
        rt: rt.clone(),
        toml: Mutex::new(TOML.into()),
        ..FakeBuilder::default()
    });
    let edge = edge(dir.path());
    let mut cfg = config(dir.path());
    tune(&mut cfg);
    let deployer = deployer_with(store.clone(), &rt, builder.clone(), edge.clone(), cfg);
    Harness {
        dir,
        store,
        rt,
        builder,
        edge,
        deployer,
    }
}

fn new_deployment(trigger: Trigger) -> NewDeployment {
    NewDeployment {
        project: "shop".into(),
        service: Some("web".into()),
        environment: None,
        reference: Some("main".into()),
        trigger,
        source: None,
        source_repo: None,
    }
}

impl Harness {
    async fn deploy(&self) -> Deployment {
        let d = self
            .deployer
            .create(new_deployment(Trigger::Manual))
            .await
            .expect("create");
        self.finished(&d.id).await
    }

    /// Waits (bounded) until `id` is terminal.
    async fn finished(&self, id: &str) -> Deployment {
        for _ in 0..400 {
            let d = self.store.get_deployment(id).await.unwrap();
            if d.status.is_terminal() && !self.deployer.is_running(id) {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("deployment {id} did not finish");
    }

    /// A crash of this berth and a new process on the same store, runtime
    /// and data dir, reconciled.
    async fn restart(self) -> Harness {
        self.deployer.abort_all_for_tests();
        let edge = edge(self.dir.path());
        let deployer = deployer(
            self.dir.path(),
            self.store.clone(),
            &self.rt,
            self.builder.clone(),
            edge.clone(),
        );
        deployer.reconcile().await.expect("reconcile");
        Harness {
            edge,
            deployer,
            ..self
        }
    }

    fn starts(&self) -> usize {
        self.rt
            .calls()
            .iter()
            .filter(|c| matches!(c, berth_runtime::fake::Call::Start(_)))
            .count()
    }

    /// Waits (bounded, 5 s) until a line of `id`'s log contains `needle`.
    async fn log_has(&self, id: &str, needle: &str) -> bool {
        for _ in 0..100 {
            let lines = self
                .store
                .read_logs(&berth_store::LogQuery {
                    deployment_id: Some(id.to_string()),
                    ..Default::default()
                })
                .await
                .unwrap();
            if lines.iter().any(|l| l.text.contains(needle)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn all(&self) -> Vec<Deployment> {
        self.store
            .list_deployments(&DeploymentQuery::default())
            .await
            .unwrap()
    }

    /// At most one active deployment per slot; every deployment terminal;
    /// the edge serves exactly the routes the store implies; every running
    /// instance belongs to an active deployment. The records tell the
    /// truth (issue 16): a succeeded deployment has every step finished
    /// (finalize included); no ended deployment keeps a canary weight; a
    /// failed canary ended rolled_back; only active and warm deployments
    /// record instances, and every instance recorded exists.
    async fn check_invariants(&self) {
        let all = self.all().await;
        let mut active: HashMap<(String, String, String), usize> = HashMap::new();
        let existing = self.rt.instance_ids();
        for d in &all {
            assert!(d.status.is_terminal(), "{} is {:?}", d.id, d.status);
            assert_eq!(d.canary_weight, None, "{} ended with a weight", d.id);
            assert!(
                d.steps.iter().all(|s| s.status != StepStatus::Running),
                "{} ended with a step running: {:?}",
                d.id,
                d.steps
            );
            if d.status == Status::Succeeded {
                assert!(
                    d.steps.iter().all(|s| s.status.is_finished()),
                    "{} succeeded with a step not done: {:?}",
                    d.id,
                    d.steps
                );
            }
            assert!(
                !(d.status == Status::Failed && d.promotion_stage == Stage::Canary),
                "{}: a failed canary ends rolled_back",
                d.id
            );
            if !d.is_active && !crate::pipeline::is_warm(d) {
                assert!(
                    !crate::pipeline::has_instances(d),
                    "{} ({}) still records instances: {:?} {:?}",
                    d.id,
                    d.promotion_stage,
                    d.runtime,
                    d.instances
                );
            }
            for id in super::replicas::instance_ids(d) {
                assert!(
                    existing.contains(&id),
                    "{} records instance {id}, which is gone",
                    d.id
                );
            }
            if d.is_active {
                *active
                    .entry((
                        d.project_name.clone(),
                        d.environment_name.clone(),
                        d.service_name.clone(),
                    ))
                    .or_default() += 1;
                assert_eq!(d.promotion_stage, Stage::Active, "{}", d.id);
            }
        }
        assert!(active.values().all(|n| *n == 1), "{active:?}");
        let want = self.deployer.desired_routes().await.unwrap();
        let got: BTreeMap<_, _> = self.edge.routes().into_iter().collect();
        assert_eq!(got, want, "edge routes differ from the store's");
        // Instances run for active deployments and warm ones (bake window).
        let active_ids: Vec<String> = all
            .iter()
            .filter(|d| d.is_active || crate::pipeline::is_warm(d))
            .flat_map(super::replicas::instance_ids)
            .collect();
        for d in all.iter().filter(|d| crate::pipeline::is_warm(d)) {
            assert!(
                matches!(d.promotion_stage, Stage::Superseded | Stage::RolledBack),
                "warm {} is {}",
                d.id,
                d.promotion_stage
            );
        }
        let mut owners = active_ids.clone();
        owners.sort();
        owners.dedup();
        assert_eq!(owners.len(), active_ids.len(), "an instance has two owners");
        // A replaced instance is stopped in the background: give it a moment.
        for _ in 0..100 {
            if self
                .rt
                .instance_ids()
                .iter()
                .all(|id| active_ids.contains(id))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let running: Vec<String> = self.rt.instance_ids().into_iter().collect();
        for id in &running {
            assert!(
                active_ids.contains(id),
                "instance {id} left behind: {running:?} / {active_ids:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_deploy_goes_live_and_routes_to_its_instance() {
    let h = harness().await;
    let d = h.deploy().await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", d.failure_message);
    assert!(d.is_active);
    let addr = d
        .runtime
        .as_ref()
        .and_then(|r| r.address.clone())
        .expect("address");
    let routes = h.edge.routes();
    assert!(
        routes
            .iter()
            .any(|(_, r)| r.targets.iter().any(|t| t.upstream == addr && t.id == d.id)),
        "{routes:?}"
    );
    h.check_invariants().await;
}

#[tokio::test]
async fn replicas_start_together_are_all_routed_and_retire_together() {
    let h = harness().await;
    *h.builder.toml.lock().unwrap() = format!("{TOML}\n").replace(
        "[services.web]\n",
        "[services.web]\nreplicas = 3\nbake = \"0\"\n",
    );
    *h.builder.behaviour.lock().unwrap() = Behaviour {
        output: vec!["hello from a replica".into()],
        ..Behaviour::default()
    };
    let first = h.deploy().await;
    // Every replica's output reaches the deployment, tagged with its name.
    let mut tagged = Vec::new();
    for _ in 0..100 {
        tagged = h
            .store
            .read_logs(&berth_store::LogQuery {
                deployment_id: Some(first.id.clone()),
                streams: vec![berth_core::model::LogStream::Stdout],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.text)
            .collect::<Vec<_>>();
        if tagged.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tagged.sort();
    let mut want: Vec<String> = first
        .instances
        .iter()
        .map(|i| format!("[{}] hello from a replica", i.name))
        .collect();
    want.sort();
    assert_eq!(tagged, want);
    *h.builder.behaviour.lock().unwrap() = Behaviour::default();
    assert_eq!(
        first.status,
        Status::Succeeded,
        "{:?}",
        first.failure_message
    );
    assert_eq!(first.replicas, 3);
    assert_eq!(first.instances.len(), 3, "{:?}", first.instances);
    let mut ids: Vec<&str> = first.instances.iter().map(|i| i.id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert!(first
        .instances
        .iter()
        .all(|i| i.health == berth_core::state::Health::Healthy && i.address.is_some()));
    let host = h.deployer.route_host(&first);
    let route = h
        .edge
        .routes()
        .into_iter()
        .find(|(hst, _)| *hst == host)
        .expect("route")
        .1;
    let mut upstreams: Vec<String> = route.targets.iter().map(|t| t.upstream.clone()).collect();
    upstreams.sort();
    let mut want: Vec<String> = first
        .instances
        .iter()
        .filter_map(|i| i.address.clone())
        .collect();
    want.sort();
    assert_eq!(upstreams, want, "the route holds every instance");
    assert!(route
        .targets
        .iter()
        .all(|t| t.deployment_id.as_deref() == Some(first.id.as_str())));
    let json = serde_json::to_value(&first).unwrap();
    assert_eq!(json["replicas"], 3);
    assert_eq!(json["instances"].as_array().map(Vec::len), Some(3));
    assert!(json["instances"][0].get("node").is_some());
    assert_eq!(json["instances"][0]["health"], "healthy");

    // The next deploy replaces all three; the old ones are all stopped.
    let second = h.deploy().await;
    assert_eq!(second.status, Status::Succeeded);
    let running = h.rt.instance_ids();
    assert_eq!(running.len(), 3, "{running:?}");
    for i in &first.instances {
        assert!(!running.contains(&i.id), "{} left running", i.id);
    }
    let first = h.store.get_deployment(&first.id).await.unwrap();
    assert!(first.instances.is_empty() && first.runtime.is_none());
    h.check_invariants().await;

    // One replica never healthy fails the deploy and removes all three.
    *h.builder.behaviour.lock().unwrap() = Behaviour {
        http_status: 503,
        ..Behaviour::default()
    };
    let third = h.deploy().await;
    assert_eq!(third.status, Status::Failed);
    assert!(h.store.get_deployment(&second.id).await.unwrap().is_active);
    assert_eq!(h.rt.instance_ids().len(), 3);
    h.check_invariants().await;
}

/// The upstreams the edge routes the slot's hostname to, sorted.
fn upstreams(h: &Harness, d: &Deployment) -> Vec<String> {
    let host = h.deployer.route_host(d);
    let mut u: Vec<String> = h
        .edge
        .routes()
        .into_iter()
        .find(|(hst, _)| *hst == host)
        .map(|(_, r)| r.targets.into_iter().map(|t| t.upstream).collect())
        .unwrap_or_default();
    u.sort();
    u
}

#[tokio::test]
async fn a_failing_replica_leaves_the_rotation_and_a_dead_one_is_replaced() {
    let h = harness().await;
    *h.builder.toml.lock().unwrap() =
        TOML.replace("[services.web]\n", "[services.web]\nreplicas = 3\n") + "interval = \"1s\"\n";
    let d = h.deploy().await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", d.failure_message);
    assert_eq!(upstreams(&h, &d).len(), 3);
    let sick = d.instances[1].clone();
    h.rt.set_http_status(&sick.id, 503);
    // Out of the rotation within one probe interval (1 s), the others stay.
    let wait = |want: usize, why: &'static str| {
        let h = &h;
        let d = &d;
        async move {
            for _ in 0..100 {
                if upstreams(h, d).len() == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{why}: routes {:?}", upstreams(h, d));
        }
    };
    wait(2, "the failing replica left the rotation").await;
    assert!(!upstreams(&h, &d).contains(sick.address.as_ref().unwrap()));
    let rec = h.store.get_deployment(&d.id).await.unwrap();
    assert_eq!(
        rec.instances[1].health,
        berth_core::state::Health::Unhealthy
    );
    assert_eq!(
        rec.health,
        berth_core::state::Health::Healthy,
        "two still serve"
    );
    h.rt.set_http_status(&sick.id, 200);
    wait(3, "the recovered replica is back").await;

    // A replica that stops for good is replaced by a new instance.
    let dead = d.instances[2].clone();
    h.rt.crash(&dead.id, 137);
    let mut replaced = None;
    for _ in 0..100 {
        let rec = h.store.get_deployment(&d.id).await.unwrap();
        if rec.instances.len() == 3
            && !rec.instances.iter().any(|i| i.id == dead.id)
            && upstreams(&h, &d).len() == 3
        {
            replaced = Some(rec);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rec = replaced.expect("the dead replica was replaced");
    assert!(
        !h.rt.instance_ids().contains(&dead.id),
        "the dead one is removed"
    );
    let want: Vec<String> = {
        let mut w: Vec<String> = rec
            .instances
            .iter()
            .filter_map(|i| i.address.clone())
            .collect();
        w.sort();
        w
    };
    assert_eq!(upstreams(&h, &d), want);
    h.deployer.monitors.stop_all();
    h.check_invariants().await;
}

#[tokio::test]
async fn bad_replicas_fail_at_analyze_and_keep_the_previous_serving() {
    let h = harness().await;
    let live = h.deploy().await;
    for (value, why) in [
        ("0", "must be between 1 and 50, got 0"),
        ("51", "must be between 1 and 50, got 51"),
        ("\"two\"", "expected an integer, got string"),
    ] {
        *h.builder.toml.lock().unwrap() = TOML.replace(
            "[services.web]\n",
            &format!("[services.web]\nreplicas = {value}\n"),
        );
        let d = h.deploy().await;
        assert_eq!(d.status, Status::Failed);
        let msg = d.failure_message.unwrap_or_default();
        assert!(
            msg.starts_with("analyze: berth.toml: services.web.replicas: ") && msg.contains(why),
            "{msg}"
        );
        assert!(h.store.get_deployment(&live.id).await.unwrap().is_active);
    }
    h.check_invariants().await;
}

#[tokio::test]
async fn a_failed_build_leaves_nothing_and_names_the_step() {
    let h = harness().await;
    let live = h.deploy().await;
    *h.builder.fail.lock().unwrap() = Some("RUN make: exit 2".into());
    let d = h.deploy().await;
    assert_eq!(d.status, Status::Failed);
    let msg = d.failure_message.unwrap_or_default();
    assert!(
        msg.starts_with("build: ") && msg.contains("exit 2"),
        "{msg}"
    );
    let live = h.store.get_deployment(&live.id).await.unwrap();
    assert!(live.is_active, "the previous deployment still serves");
    h.check_invariants().await;
}

#[tokio::test]
async fn a_candidate_never_healthy_fails_by_the_deadline_and_is_removed() {
    let h = harness().await;
    let live = h.deploy().await;
    *h.builder.behaviour.lock().unwrap() = Behaviour {
        http_status: 503,
        ..Behaviour::default()
    };
    let d = h.deploy().await;
    assert_eq!(d.status, Status::Failed);
    let msg = d.failure_message.unwrap_or_default();
    assert!(
        msg.contains("not healthy within the 2s deadline") && msg.contains("503"),
        "{msg}"
    );
    assert!(h.store.get_deployment(&live.id).await.unwrap().is_active);
    h.check_invariants().await;
}

#[tokio::test]
async fn a_candidate_exiting_during_readiness_fails_with_its_exit_code() {
    let h = harness().await;
    *h.builder.behaviour.lock().unwrap() = Behaviour {
        crash_with: Some(3),
        ..Behaviour::default()
    };
    let d = h.deploy().await;
    assert_eq!(d.status, Status::Failed);
    let msg = d.failure_message.unwrap_or_default();
    assert!(msg.contains("exited with code 3"), "{msg}");
    h.check_invariants().await;
}

#[tokio::test]
async fn a_new_deploy_drains_the_previous_before_stopping_it() {
    let h = harness().await;
    *h.builder.toml.lock().unwrap() = TOML.replace("port = 3000\n", "port = 3000\nbake = \"0\"\n");
    // The first app answers slowly: a request is in flight at the switch.
    *h.builder.behaviour.lock().unwrap() = Behaviour {
        response_delay: Duration::from_millis(1500),
        ..Behaviour::default()
    };
    let first = h.deploy().await;
    assert_eq!(first.status, Status::Succeeded);
    *h.builder.behaviour.lock().unwrap() = Behaviour::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge_addr = listener.local_addr().unwrap();
    let serving = h.edge.clone();
    tokio::spawn(async move {
        let _ = serving.serve(listener, std::future::pending()).await;
    });
    let host = h.deployer.route_host(&first);
    let slow = tokio::spawn(async move {
        reqwest::Client::new()
            .get(format!("http://{edge_addr}/"))
            .header("host", host)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // The request reached the old instance.
    for _ in 0..100 {
        if h.edge.inflight(&first.id) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        h.edge.inflight(&first.id),
        1,
        "the slow request is in flight"
    );
    let second = h.deploy().await;
    assert_eq!(second.status, Status::Succeeded);
    assert_eq!(slow.await.unwrap().expect("answered"), 200);
    let first_name = first.runtime.unwrap().instance_name;
    // The stop runs in the background once the drain is done.
    for _ in 0..100 {
        if h.rt
            .inflight_at_stop()
            .iter()
            .any(|(n, _)| *n == first_name)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stops = h.rt.inflight_at_stop();
    assert!(
        stops.iter().any(|(n, _)| *n == first_name),
        "the previous instance was stopped: {stops:?}"
    );
    assert!(
        stops.iter().all(|(_, inflight)| *inflight == 0),
        "an instance was stopped with requests in flight (not drained): {stops:?}"
    );
    let first = h.store.get_deployment(&first.id).await.unwrap();
    assert_eq!(first.promotion_stage, Stage::Superseded);
    h.check_invariants().await;
}

#[tokio::test]
async fn the_deploy_does_not_wait_for_the_previous_instance_to_stop() {
    let h = harness().await;
    *h.builder.toml.lock().unwrap() = TOML.replace(
        "port = 3000\n",
        "port = 3000\nstop_timeout = \"7s\"\nbake = \"0\"\n",
    );
    // The first app ignores SIGTERM: its stop takes the whole grace.
    *h.builder.behaviour.lock().unwrap() = Behaviour {
        stop_delay: Duration::from_secs(3),
        ..Behaviour::default()
    };
    let first = h.deploy().await;
    assert_eq!(
        first.status,
        Status::Succeeded,
        "{:?}",
        first.failure_message
    );
    *h.builder.behaviour.lock().unwrap() = Behaviour::default();
    let started = std::time::Instant::now();
    let second = h.deploy().await;
    let took = started.elapsed();
    assert_eq!(second.status, Status::Succeeded);
    assert!(
        took < Duration::from_millis(2500),
        "the deploy waited for the old instance to stop: {took:?}"
    );
    let first_id = first.runtime.clone().unwrap().instance_id;
    // The stop got the service's stop_timeout, not a constant.
    assert!(
        h.rt.stop_graces()
            .iter()
            .any(|(id, g)| *id == first_id && *g == Duration::from_secs(7)),
        "{:?}",
        h.rt.stop_graces()
    );
    let old = h.store.get_deployment(&first.id).await.unwrap();
    assert_eq!(old.promotion_stage, Stage::Superseded);
    assert!(old.runtime.is_none(), "the record no longer points at it");
    // ... and the stop finishes in the background, recorded on the old one.
    assert!(
        h.log_has(&first.id, "container").await && h.log_has(&first.id, "stopped").await,
        "the old deployment's log records the stop"
    );
    h.check_invariants().await;
}

#[tokio::test]
async fn rollback_puts_the_previous_image_back_without_a_build() {
    let h = harness().await;
    let first = h.deploy().await;
    let second = h.deploy().await;
    assert_eq!(second.status, Status::Succeeded);
    let builds = h.builder.calls.lock().unwrap().len();
    let slot = berth_store::Slot::of(&second);
    let rb = h.deployer.rollback(&slot).await.expect("rollback");
    let rb = h.finished(&rb.id).await;
    assert_eq!(rb.status, Status::Succeeded, "{:?}", rb.failure_message);
    assert_eq!(rb.image, first.image, "the first deployment's image");
    assert_eq!(
        h.builder.calls.lock().unwrap().len(),
        builds,
        "no clone, no build"
    );
    let second = h.store.get_deployment(&second.id).await.unwrap();
    assert_eq!(second.promotion_stage, Stage::RolledBack);
    h.check_invariants().await;
}

#[tokio::test]
async fn promoting_a_deployment_whose_image_was_pruned_rebuilds_it() {
    let h = harness().await;
    // No bake: a warm instance would keep the image in use.
    *h.builder.toml.lock().unwrap() = TOML.replace("port = 3000\n", "port = 3000\nbake = \"0\"\n");
    let first = h.deploy().await;
    let _second = h.deploy().await;
    let image = first.image.clone().unwrap().reference;
    Images::remove(&h.rt, &image).await.unwrap();
    let p = h.deployer.promote(&first.id).await.expect("promote");
    let p = h.finished(&p.id).await;
    assert_eq!(p.status, Status::Succeeded, "{:?}", p.failure_message);
    let calls = h.builder.calls.lock().unwrap().clone();
    assert!(
        calls.iter().filter(|c| c.starts_with("build ")).count() >= 3,
        "{calls:?}"
    );
    assert!(h.rt.exists(&image).await.unwrap(), "rebuilt");
    h.check_invariants().await;
}

#[tokio::test]
async fn cancel_during_the_build_ends_cancelled_and_leaves_nothing() {
    let h = harness().await;
    let live = h.deploy().await;
    *h.builder.build_time.lock().unwrap() = Duration::from_secs(30);
    let d = h
        .deployer
        .create(new_deployment(Trigger::Manual))
        .await
        .unwrap();
    for _ in 0..200 {
        if h.builder
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("build "))
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.deployer.cancel(&d.id).await.expect("cancel");
    let d = h.finished(&d.id).await;
    assert_eq!(d.status, Status::Cancelled);
    assert!(h.store.get_deployment(&live.id).await.unwrap().is_active);
    h.check_invariants().await;
}

/// A crash (the pipeline's task dropped) once the deployment reached each
/// stage, then a new process over the same store, runtime and persisted
/// routes reconciles: the invariants hold every time.
#[tokio::test]
async fn a_crash_at_each_stage_is_reconciled() {
    for stage in [
        Stage::Building,
        Stage::StartingCandidate,
        Stage::CheckingReadiness,
        Stage::DrainingPrevious,
    ] {
        let h = harness().await;
        // Slow steps so that each stage lasts long enough to be caught.
        *h.builder.behaviour.lock().unwrap() = Behaviour {
            response_delay: Duration::from_millis(200),
            start_delay: Duration::from_millis(200),
            stop_delay: Duration::from_millis(200),
            ..Behaviour::default()
        };
        let live = h.deploy().await;
        assert_eq!(live.status, Status::Succeeded);
        *h.builder.build_time.lock().unwrap() = Duration::from_millis(200);
        let d = h
            .deployer
            .create(new_deployment(Trigger::Manual))
            .await
            .unwrap();
        // A deadline rather than a count of polls: on a loaded machine 400
        // polls of 2 ms ended before the later stages came.
        let mut seen = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let now = h.store.get_deployment(&d.id).await.unwrap();
            if now.promotion_stage == stage {
                seen = true;
                break;
            }
            if now.status.is_terminal() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(seen, "the deployment never reached {stage:?}");
        // The crash: this process's tasks are gone.
        h.deployer.abort_all_for_tests();
        let edge = edge(h.dir.path());
        let restarted = deployer(
            h.dir.path(),
            h.store.clone(),
            &h.rt,
            h.builder.clone(),
            edge.clone(),
        );
        restarted.reconcile().await.expect("reconcile");
        let h2 = Harness {
            dir: h.dir,
            store: h.store.clone(),
            rt: h.rt.clone(),
            builder: h.builder.clone(),
            edge,
            deployer: restarted,
        };
        for x in h2.all().await {
            h2.finished(&x.id).await;
        }
        h2.check_invariants().await;
        let _: PathBuf = h2.dir.path().to_path_buf();
    }
}

/// Waits (bounded, 30 s) until `id` reaches `stage`; false when it ended
/// first or never did.
async fn reached(h: &Harness, id: &str, stage: Stage) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let now = h.store.get_deployment(id).await.unwrap();
        if now.promotion_stage == stage {
            return true;
        }
        if now.status.is_terminal() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// A crash during the drain (issue 16): the new deployment is active in
/// the store, stage draining_previous, finalize never ran, and the old one
/// still records its instance. After the restart the promotion is
/// finished (finalize with retention), the old instance is stopped with
/// its grace and the old record forgets it, saying so in its own log.
#[tokio::test]
async fn a_crash_during_the_drain_is_finished_after_restart() {
    let h = harness().await;
    *h.builder.toml.lock().unwrap() = TOML.replace("port = 3000\n", "port = 3000\nbake = \"0\"\n");
    // The first app answers slowly: the drain waits for a held request.
    *h.builder.behaviour.lock().unwrap() = Behaviour {
        response_delay: Duration::from_secs(4),
        ..Behaviour::default()
    };
    let first = h.deploy().await;
    assert_eq!(first.status, Status::Succeeded);
    *h.builder.behaviour.lock().unwrap() = Behaviour::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge_addr = listener.local_addr().unwrap();
    let serving = h.edge.clone();
    tokio::spawn(async move {
        let _ = serving.serve(listener, std::future::pending()).await;
    });
    let host = h.deployer.route_host(&first);
    tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .get(format!("http://{edge_addr}/"))
            .header("host", host)
            .send()
            .await;
    });
    for _ in 0..200 {
        if h.edge.inflight(&first.id) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.edge.inflight(&first.id), 1, "a request is held");
    let second = h
        .deployer
        .create(new_deployment(Trigger::Manual))
        .await
        .unwrap();
    assert!(
        reached(&h, &second.id, Stage::DrainingPrevious).await,
        "never reached draining_previous"
    );
    // Still draining: the old record points at its instance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = h.store.get_deployment(&first.id).await.unwrap();
    let old_instance = old.runtime.clone().expect("recorded").instance_id;
    let new = h.store.get_deployment(&second.id).await.unwrap();
    assert_eq!(
        new.promotion_stage,
        Stage::DrainingPrevious,
        "still draining"
    );
    let finalize = |d: &Deployment| {
        d.steps
            .iter()
            .find(|s| s.name == StepName::Finalize)
            .map(|s| s.status)
    };
    assert_eq!(finalize(&new), Some(StepStatus::Pending));

    let h = h.restart().await;
    let new = h.store.get_deployment(&second.id).await.unwrap();
    assert_eq!(new.status, Status::Succeeded, "{:?}", new.failure_message);
    assert!(new.is_active);
    assert_eq!(new.promotion_stage, Stage::Active);
    assert_eq!(finalize(&new), Some(StepStatus::Succeeded));
    let note = &new
        .steps
        .iter()
        .find(|s| s.name == StepName::Finalize)
        .unwrap()
        .log;
    assert!(note.starts_with("retention:"), "retention ran: {note}");
    let old = h.store.get_deployment(&first.id).await.unwrap();
    assert_eq!(old.promotion_stage, Stage::Superseded);
    assert!(old.runtime.is_none() && old.instances.is_empty(), "{old:?}");
    assert!(
        h.log_has(&first.id, "left running by an interrupted drain")
            .await,
        "the old deployment's log says why its instance went"
    );
    // Stopped with the service's grace, not removed as an orphan.
    for _ in 0..200 {
        if !h.rt.instance_ids().contains(&old_instance) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!h.rt.instance_ids().contains(&old_instance), "stopped");
    assert!(
        h.rt.stop_graces().iter().any(|(id, _)| *id == old_instance),
        "stopped with a grace: {:?}",
        h.rt.stop_graces()
    );
    h.check_invariants().await;
}

/// A retired deployment whose instance is gone when berth restarts (it
/// was removed while berth was down) forgets it, with a line in its log.
#[tokio::test]
async fn a_restart_forgets_a_retired_instance_that_is_gone() {
    let h = harness().await;
    *h.builder.toml.lock().unwrap() = TOML.replace("port = 3000\n", "port = 3000\nbake = \"0\"\n");
    let first = h.deploy().await;
    let second = h.deploy().await;
    assert_eq!(second.status, Status::Succeeded);
    // A record as a crash between the switch and the drain's save leaves
    // it, with the instance removed while berth was down.
    let mut old = h.store.get_deployment(&first.id).await.unwrap();
    assert!(old.runtime.is_none(), "retire forgot it");
    old.runtime = first.runtime.clone();
    h.store
        .save_deployments(&mut [&mut old], None)
        .await
        .unwrap();
    let h = h.restart().await;
    let old = h.store.get_deployment(&first.id).await.unwrap();
    assert!(old.runtime.is_none(), "{old:?}");
    assert!(
        h.log_has(&first.id, "gone; the record no longer points at it")
            .await
    );
    h.check_invariants().await;
}

fn canary_toml(window: &str, on_low_traffic: &str) -> String {
    format!(
        "{TOML}\n[services.web.canary]\nstages = [50, 100]\nobservation_window = \"{window}\"\non_low_traffic = \"{on_low_traffic}\"\n"
    )
}

/// A canary that fails ends rolled_back with its weight cleared, the
/// previous deployment serving; one that passes ends active without a
/// weight (issue 16).
#[tokio::test]
async fn a_failed_canary_ends_rolled_back_and_a_passed_one_without_a_weight() {
    let h = harness().await;
    let first = h.deploy().await;
    *h.builder.toml.lock().unwrap() = canary_toml("1s", "fail");
    let failed = h.deploy().await;
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(
        failed.promotion_stage,
        Stage::RolledBack,
        "{:?}",
        failed.failure_message
    );
    assert!(
        failed
            .failure_message
            .as_deref()
            .is_some_and(|m| m.contains("canary at 50%")),
        "{:?}",
        failed.failure_message
    );
    assert_eq!(failed.canary_weight, None);
    assert!(h.store.get_deployment(&first.id).await.unwrap().is_active);
    h.check_invariants().await;

    *h.builder.toml.lock().unwrap() = canary_toml("1s", "promote");
    let passed = h.deploy().await;
    assert_eq!(
        passed.status,
        Status::Succeeded,
        "{:?}",
        passed.failure_message
    );
    assert!(
        h.log_has(&passed.id, "canary: 50% of traffic").await,
        "a canary ran"
    );
    assert_eq!(passed.promotion_stage, Stage::Active);
    assert_eq!(passed.canary_weight, None);
    h.check_invariants().await;
}

/// A crash during a canary stage: after the restart the previous
/// deployment takes all traffic, and the canary ends rolled_back with its
/// weight cleared and its instance removed.
#[tokio::test]
async fn a_crash_during_a_canary_ends_it_rolled_back() {
    let h = harness().await;
    let first = h.deploy().await;
    *h.builder.toml.lock().unwrap() = canary_toml("30s", "extend");
    let d = h
        .deployer
        .create(new_deployment(Trigger::Manual))
        .await
        .unwrap();
    assert!(
        reached(&h, &d.id, Stage::Canary).await,
        "never reached canary"
    );
    for _ in 0..200 {
        if h.store.get_deployment(&d.id).await.unwrap().canary_weight == Some(50) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let h = h.restart().await;
    let d = h.store.get_deployment(&d.id).await.unwrap();
    assert_eq!(d.status, Status::Failed);
    assert_eq!(d.promotion_stage, Stage::RolledBack);
    assert_eq!(d.canary_weight, None);
    assert!(h.store.get_deployment(&first.id).await.unwrap().is_active);
    h.check_invariants().await;
}

#[tokio::test]
async fn an_illegal_transition_changes_nothing_and_is_counted() {
    let h = harness().await;
    let mut d = h.deploy().await;
    let before = d.state();
    assert!(!h
        .deployer
        .transition(&mut d, berth_core::state::Event::Start));
    assert_eq!(d.state(), before, "unchanged");
    let mut text = String::new();
    h.deployer.metrics.render(&mut text);
    assert!(text.contains("berth_illegal_transitions_total 1"), "{text}");
}

#[tokio::test]
async fn cancel_during_readiness_removes_the_candidate() {
    let h = harness().await;
    let live = h.deploy().await;
    *h.builder.behaviour.lock().unwrap() = Behaviour {
        http_status: 503,
        ..Behaviour::default()
    };
    let d = h
        .deployer
        .create(new_deployment(Trigger::Manual))
        .await
        .unwrap();
    let mut reached = false;
    for _ in 0..400 {
        if h.store.get_deployment(&d.id).await.unwrap().promotion_stage == Stage::CheckingReadiness
        {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(reached, "never reached readiness");
    h.deployer.cancel(&d.id).await.expect("cancel");
    let d = h.finished(&d.id).await;
    assert_eq!(d.status, Status::Cancelled);
    assert!(h.store.get_deployment(&live.id).await.unwrap().is_active);
    h.check_invariants().await;
}

#[tokio::test]
async fn rollback_in_the_bake_window_is_a_route_flip_to_the_warm_instance() {
    let h = harness().await;
    let first = h.deploy().await;
    let second = h.deploy().await;
    assert_eq!(second.status, Status::Succeeded);
    let warm = h.store.get_deployment(&first.id).await.unwrap();
    assert_eq!(warm.promotion_stage, Stage::Superseded);
    let until = warm.bake_until.expect("bakeUntil while warm");
    let left = until - chrono::Utc::now();
    assert!(
        left > chrono::Duration::seconds(590) && left <= chrono::Duration::seconds(600),
        "default bake is 10m: {left:?}"
    );
    let first_rt = warm.runtime.clone().expect("the warm instance is kept");
    assert!(h.rt.instance_ids().contains(&first_rt.instance_id));
    h.check_invariants().await;

    let starts = h.starts();
    let builds = h.builder.calls.lock().unwrap().len();
    let slot = berth_store::Slot::of(&second);
    let rb = h.deployer.rollback(&slot).await.expect("rollback");
    let rb = h.finished(&rb.id).await;
    assert_eq!(rb.status, Status::Succeeded, "{:?}", rb.failure_message);
    assert!(rb.is_active);
    assert_eq!(h.starts(), starts, "no instance started");
    assert_eq!(h.builder.calls.lock().unwrap().len(), builds, "no build");
    let rb_rt = rb.runtime.clone().unwrap();
    assert_eq!(rb_rt.instance_id, first_rt.instance_id, "the same instance");
    // The edge routes the slot to the warm instance, under the rollback's id.
    let routes = h.edge.routes();
    let route = routes
        .iter()
        .find(|(host, _)| *host == h.deployer.route_host(&rb))
        .expect("route");
    assert_eq!(route.1.targets.len(), 1);
    assert_eq!(
        route.1.targets[0].upstream,
        first_rt.address.clone().unwrap()
    );
    assert_eq!(route.1.targets[0].id, rb.id);
    // The first record handed its instance over; the second is warm now.
    let first = h.store.get_deployment(&first.id).await.unwrap();
    assert!(first.runtime.is_none() && first.bake_until.is_none());
    let second = h.store.get_deployment(&second.id).await.unwrap();
    assert_eq!(second.promotion_stage, Stage::RolledBack);
    assert!(second.bake_until.is_some() && second.runtime.is_some());
    let deploy = rb
        .steps
        .iter()
        .find(|s| s.name == berth_core::model::StepName::Deploy)
        .unwrap();
    assert!(deploy.log.contains("warm"), "{}", deploy.log);
    h.check_invariants().await;

    // And back again: the second one's warm instance, still no start.
    let rb2 = h.deployer.rollback(&slot).await.expect("rollback");
    let rb2 = h.finished(&rb2.id).await;
    assert_eq!(rb2.status, Status::Succeeded, "{:?}", rb2.failure_message);
    assert_eq!(h.starts(), starts, "no instance started");
    assert_eq!(
        rb2.runtime.unwrap().instance_id,
        second.runtime.unwrap().instance_id
    );
    h.check_invariants().await;
}

#[tokio::test]
async fn a_rollback_in_the_bake_window_takes_every_replica_over() {
    let h = harness().await;
    *h.builder.toml.lock().unwrap() =
        format!("{TOML}\n").replace("[services.web]\n", "[services.web]\nreplicas = 2\n");
    let first = h.deploy().await;
    let second = h.deploy().await;
    assert_eq!(
        second.status,
        Status::Succeeded,
        "{:?}",
        second.failure_message
    );
    let warm = h.store.get_deployment(&first.id).await.unwrap();
    assert!(crate::pipeline::is_warm(&warm));
    assert_eq!(warm.instances.len(), 2);
    h.check_invariants().await;
    let starts = h.starts();
    let rb = h
        .deployer
        .rollback(&berth_store::Slot::of(&second))
        .await
        .unwrap();
    let rb = h.finished(&rb.id).await;
    assert_eq!(rb.status, Status::Succeeded, "{:?}", rb.failure_message);
    assert_eq!(h.starts(), starts, "no instance started");
    let mut got: Vec<String> = rb.instances.iter().map(|i| i.id.clone()).collect();
    let mut want: Vec<String> = warm.instances.iter().map(|i| i.id.clone()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "both warm replicas taken over");
    let route = h
        .edge
        .routes()
        .into_iter()
        .find(|(hst, _)| *hst == h.deployer.route_host(&rb))
        .unwrap()
        .1;
    assert_eq!(route.targets.len(), 2, "{route:?}");
    h.check_invariants().await;
}

#[tokio::test]
async fn a_warm_instance_is_stopped_when_its_window_ends() {
    let h = harness().await;
    *h.builder.toml.lock().unwrap() = TOML.replace(
        "port = 3000\n",
        "port = 3000\nbake = \"1s\"\nstop_timeout = \"3s\"\n",
    );
    let first = h.deploy().await;
    let _second = h.deploy().await;
    let warm = h.store.get_deployment(&first.id).await.unwrap();
    let rt = warm.runtime.clone().expect("warm");
    assert!(h.rt.instance_ids().contains(&rt.instance_id));
    let mut gone = false;
    for _ in 0..100 {
        if !h.rt.instance_ids().contains(&rt.instance_id) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the warm instance outlived its window");
    assert!(h
        .rt
        .stop_graces()
        .contains(&(rt.instance_id.clone(), Duration::from_secs(3))));
    let ended = h.store.get_deployment(&first.id).await.unwrap();
    assert!(ended.runtime.is_none() && ended.bake_until.is_none());
    assert_eq!(ended.promotion_stage, Stage::Superseded);
    assert!(h.log_has(&first.id, "bake window over").await);
    // A rollback now starts the image again.
    let starts = h.starts();
    let rb = h
        .deployer
        .rollback(&berth_store::Slot::of(&first))
        .await
        .unwrap();
    let rb = h.finished(&rb.id).await;
    assert_eq!(rb.status, Status::Succeeded, "{:?}", rb.failure_message);
    assert_eq!(h.starts(), starts + 1);
    h.check_invariants().await;
}

/// A warm instance that dies during the bake window ends the bake: the
/// record forgets it, saying so in its own log (issue 16).
#[tokio::test]
async fn a_warm_instance_that_is_gone_is_forgotten() {
    let h = harness().await;
    let first = h.deploy().await;
    let _second = h.deploy().await;
    let warm = h.store.get_deployment(&first.id).await.unwrap();
    assert!(crate::pipeline::is_warm(&warm));
    let id = warm.runtime.clone().unwrap().instance_id;
    h.rt.crash(&id, 137);
    let mut forgotten = false;
    for _ in 0..200 {
        let d = h.store.get_deployment(&first.id).await.unwrap();
        if d.runtime.is_none() && d.instances.is_empty() && d.bake_until.is_none() {
            forgotten = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(forgotten, "the record still points at the dead instance");
    assert!(h.log_has(&first.id, "its instance is gone").await);
    h.check_invariants().await;
}

#[tokio::test]
async fn max_warm_stops_the_oldest_warm_deployment_first() {
    let h = harness_with(|c| c.max_warm = 1).await;
    let first = h.deploy().await;
    let second = h.deploy().await;
    let _third = h.deploy().await;
    let first_rt = first.runtime.clone().unwrap();
    let mut stopped = false;
    for _ in 0..100 {
        if !h.rt.instance_ids().contains(&first_rt.instance_id) {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stopped, "the oldest warm instance is stopped");
    let first = h.store.get_deployment(&first.id).await.unwrap();
    assert!(first.bake_until.is_none() && first.runtime.is_none());
    let second = h.store.get_deployment(&second.id).await.unwrap();
    assert!(crate::pipeline::is_warm(&second), "the newest stays warm");
    assert!(h.log_has(&first.id, "--max-warm 1").await);
    h.check_invariants().await;
    // --max-warm 0: no bake at all.
    let h = harness_with(|c| c.max_warm = 0).await;
    let first = h.deploy().await;
    let _ = h.deploy().await;
    let first = h.store.get_deployment(&first.id).await.unwrap();
    assert!(first.bake_until.is_none());
    h.check_invariants().await;
}

#[tokio::test]
async fn a_restart_during_the_bake_adopts_the_warm_instance_or_stops_it_when_passed() {
    let h = harness().await;
    let first = h.deploy().await;
    let second = h.deploy().await;
    let starts = h.starts();
    let h = h.restart().await;
    let warm = h.store.get_deployment(&first.id).await.unwrap();
    assert!(
        crate::pipeline::is_warm(&warm),
        "still warm after a restart"
    );
    let rt = warm.runtime.clone().unwrap();
    assert!(h.rt.instance_ids().contains(&rt.instance_id), "not removed");
    assert_eq!(h.starts(), starts, "nothing restarted");
    h.check_invariants().await;
    // The flip still works from the new process.
    let rb = h
        .deployer
        .rollback(&berth_store::Slot::of(&second))
        .await
        .unwrap();
    let rb = h.finished(&rb.id).await;
    assert_eq!(rb.runtime.clone().unwrap().instance_id, rt.instance_id);
    assert_eq!(h.starts(), starts);
    h.check_invariants().await;
    // A restart after the window passed: stopped, and the active one (with
    // an instance labelled for another deployment) adopted, not restarted.
    let mut warm = h.store.get_deployment(&second.id).await.unwrap();
    let second_rt = warm.runtime.clone().unwrap();
    warm.bake_until = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    h.store
        .save_deployments(&mut [&mut warm], None)
        .await
        .unwrap();
    let h = h.restart().await;
    let ended = h.store.get_deployment(&second.id).await.unwrap();
    assert!(ended.runtime.is_none() && ended.bake_until.is_none());
    assert!(!h.rt.instance_ids().contains(&second_rt.instance_id));
    let rb = h.store.get_deployment(&rb.id).await.unwrap();
    assert!(rb.is_active);
    assert_eq!(rb.runtime.unwrap().instance_id, rt.instance_id);
    assert_eq!(
        h.starts(),
        starts,
        "the adopted instance was not re-created"
    );
    h.check_invariants().await;
}

#[tokio::test]
async fn a_deployment_that_regresses_in_its_bake_window_is_rolled_back_by_itself() {
    let h = harness().await;
    let first = h.deploy().await;
    let second = h.deploy().await;
    assert_eq!(second.status, Status::Succeeded);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge_addr = listener.local_addr().unwrap();
    let serving = h.edge.clone();
    tokio::spawn(async move {
        let _ = serving.serve(listener, std::future::pending()).await;
    });
    // After its readiness passed, the second version answers 500.
    let second_rt = second.runtime.clone().unwrap();
    h.rt.set_http_status(&second_rt.instance_id, 500);
    let host = h.deployer.route_host(&second);
    let client = reqwest::Client::new();
    let mut saw_500 = 0;
    for _ in 0..150 {
        let st = client
            .get(format!("http://{edge_addr}/"))
            .header("host", &host)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if st == 500 {
            saw_500 += 1;
        }
    }
    assert!(
        saw_500 >= 100,
        "the edge served the broken version: {saw_500}"
    );
    let mut rolled = None;
    for _ in 0..100 {
        let d = h.store.get_deployment(&second.id).await.unwrap();
        if d.status == Status::Failed {
            rolled = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bad = rolled.expect("the regressed deployment was rolled back by itself");
    assert_eq!(bad.promotion_stage, Stage::RolledBack);
    assert!(!bad.is_active);
    let msg = bad.failure_message.clone().unwrap_or_default();
    assert!(
        msg.contains("error rate 100.0%")
            && msg.contains("bake window")
            && msg.contains("requests"),
        "{msg}"
    );
    assert!(
        bad.bake_until.is_none(),
        "a regressed deployment is not kept warm"
    );
    // The first version's warm instance serves again, under a rollback.
    let active = h
        .store
        .active_deployment(&berth_store::Slot::of(&second))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(active.trigger, Trigger::Rollback);
    assert_eq!(
        active.source_deployment_id.as_deref(),
        Some(first.id.as_str())
    );
    assert_eq!(
        active.runtime.unwrap().instance_id,
        first.runtime.unwrap().instance_id
    );
    let st = client
        .get(format!("http://{edge_addr}/"))
        .header("host", &host)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(st, 200);
    // A deploy afterwards still runs and goes live; one active.
    let third = h.deploy().await;
    assert_eq!(
        third.status,
        Status::Succeeded,
        "{:?}",
        third.failure_message
    );
    h.check_invariants().await;
}

/// A follower's edge builds its table from the store: a canary in
/// progress (stage canary, `canary_weight` saved) splits the slot's hosts
/// between the candidate and the active deployment.
#[tokio::test]
async fn the_route_table_from_the_store_carries_a_canary_split() {
    let h = harness().await;
    let v1 = h.deploy().await;
    assert!(v1.is_active, "{:?}", v1.failure_message);
    // A candidate as the canary step leaves it: running, routed at 25 %.
    let mut cand = v1.clone();
    cand.id = "canary000000c1".into();
    cand.is_active = false;
    cand.status = Status::Running;
    cand.promotion_stage = Stage::Canary;
    cand.canary_weight = Some(25);
    if let Some(rt) = cand.runtime.as_mut() {
        rt.address = Some("127.0.0.1:1".into());
    }
    cand.instances.clear();
    cand.version = 0;
    h.store.insert_deployment(&cand).await.unwrap();
    let routes = h.deployer.desired_routes().await.unwrap();
    let host = h.deployer.route_host(&v1);
    let weights: Vec<(String, u32)> = routes[&host]
        .targets
        .iter()
        .map(|t| (t.deployment_id.clone().unwrap_or_default(), t.weight))
        .collect();
    let of = |id: &str| -> u32 {
        weights
            .iter()
            .filter(|(d, _)| d == id)
            .map(|(_, w)| *w)
            .sum()
    };
    assert!(of(&cand.id) > 0 && of(&v1.id) > 0, "{weights:?}");
    assert_eq!(of(&cand.id) * 3, of(&v1.id), "25 % / 75 %: {weights:?}");
    // Once it is no longer a canary, the active deployment has it all.
    let mut done = h.store.get_deployment(&cand.id).await.unwrap();
    done.canary_weight = None;
    h.store
        .save_deployments(&mut [&mut done], None)
        .await
        .unwrap();
    let routes = h.deployer.desired_routes().await.unwrap();
    assert!(routes[&host]
        .targets
        .iter()
        .all(|t| t.deployment_id.as_deref() == Some(v1.id.as_str())));
}

#[tokio::test]
async fn bad_volumes_fail_at_analyze_and_volumes_need_a_runtime_that_has_them() {
    let h = harness().await;
    let live = h.deploy().await;
    for (table, why) in [
        (
            "\"data\" = \"uploads\"",
            "services.web.volumes.\"data\": the container path must be absolute",
        ),
        (
            "\"/data\" = \"Up loads\"",
            "services.web.volumes.\"/data\": volume name",
        ),
    ] {
        *h.builder.toml.lock().unwrap() = format!("{TOML}\n[services.web.volumes]\n{table}\n");
        let d = h.deploy().await;
        assert_eq!(d.status, Status::Failed);
        let msg = d.failure_message.unwrap_or_default();
        assert!(
            msg.starts_with("analyze: berth.toml: ") && msg.contains(why),
            "{msg}"
        );
        assert!(h.store.get_deployment(&live.id).await.unwrap().is_active);
    }
    // The fake runtime has no volumes (as Swarm): the deploy
    // step fails with the reason and the previous deployment keeps serving.
    *h.builder.toml.lock().unwrap() =
        format!("{TOML}\n[services.web.volumes]\n\"/data\" = \"uploads\"\n");
    let d = h.deploy().await;
    assert_eq!(d.status, Status::Failed);
    let msg = d.failure_message.unwrap_or_default();
    assert!(msg.contains("volumes need"), "{msg}");
    assert!(h.store.get_deployment(&live.id).await.unwrap().is_active);
    h.check_invariants().await;
}

/// `--console-host`: the table routes the console's hostname to its
/// private listener (and sync puts it in the edge); a hostname an app's
/// route holds stays the app's, the console's route left out.
#[tokio::test]
async fn the_console_host_is_routed_unless_an_app_holds_it() {
    use crate::console::host::ConsoleHost;
    let h = harness().await;
    let console = ConsoleHost::new("console.example.com".into(), ([127, 0, 0, 1], 4711).into());
    h.deployer.console_host.set(Arc::new(console)).unwrap();
    let routes = h.deployer.desired_routes().await.unwrap();
    let route = &routes["console.example.com"];
    assert!(ConsoleHost::is_console_route(route));
    assert_eq!(route.targets[0].upstream, "127.0.0.1:4711");
    h.deployer.sync_routes().await.unwrap();
    assert!(h
        .edge
        .routes()
        .iter()
        .any(|(host, r)| host == "console.example.com" && ConsoleHost::is_console_route(r)));

    let h = harness().await;
    let v1 = h.deploy().await;
    assert!(v1.is_active, "{:?}", v1.failure_message);
    let taken = h.deployer.route_host(&v1);
    let console = ConsoleHost::new(taken.clone(), ([127, 0, 0, 1], 4711).into());
    h.deployer.console_host.set(Arc::new(console)).unwrap();
    let routes = h.deployer.desired_routes().await.unwrap();
    assert!(!ConsoleHost::is_console_route(&routes[&taken]));
    assert!(routes[&taken]
        .targets
        .iter()
        .all(|t| t.deployment_id.as_deref() == Some(v1.id.as_str())));
}
