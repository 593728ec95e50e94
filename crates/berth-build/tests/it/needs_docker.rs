//! Tests against the real Docker Engine (API 1.41). Images are built FROM
//! scratch with the host's busybox; every image is tagged `berth-test/...`,
//! labelled `berth.test=1` and removed at the end.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use berth_build::{
    analyze, build, image_manifest, push, AnalyzeOptions, BuildError, BuildLimits, BuildPlan,
    BuildRequest, ManifestOptions,
};
use berth_core::config::ServiceConfig;
use bollard::query_parameters::{ListContainersOptions, RemoveImageOptions};
use bollard::Docker;
use tokio_util::sync::CancellationToken;

use crate::{example, missing_tool, recording_sink};

async fn docker() -> Docker {
    Docker::connect_with_local_defaults()
        .expect("docker socket")
        .negotiate_version()
        .await
        .expect("docker reachable")
}

fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "berth-test/{name}:{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("berth.test".to_string(), "1".to_string())])
}

async fn remove(docker: &Docker, image: &str) {
    let _ = docker
        .remove_image(
            image,
            Some(RemoveImageOptions {
                force: true,
                ..Default::default()
            }),
            None,
        )
        .await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The busybox example with the host's busybox copied in.
fn busybox_context() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_dir(&example("dockerfile-busybox"), d.path());
    std::fs::copy("/bin/busybox", d.path().join("busybox")).expect("/bin/busybox (busybox-static)");
    d
}

fn dockerfile_plan(text: &str) -> BuildPlan {
    BuildPlan {
        provider: "dockerfile".into(),
        framework: None,
        runtime: None,
        port: 3000,
        start_command: None,
        dockerfile: text.into(),
        dockerfile_path: Some("Dockerfile".into()),
        generated: false,
    }
}

fn request(dir: &Path, plan: BuildPlan, tag: &str) -> BuildRequest {
    BuildRequest {
        context_dir: dir.to_path_buf(),
        plan,
        tag: tag.to_string(),
        limits: BuildLimits {
            memory_bytes: Some(256 << 20),
            cpus: Some(1.0),
            timeout: Duration::from_secs(120),
        },
        build_args: vec![],
        labels: labels(),
        secrets: vec![],
    }
}

/// Builds the busybox example; returns its tag.
async fn build_busybox(docker: &Docker, ctx: &Path) -> String {
    let plan = analyze(ctx, &ServiceConfig::default(), &AnalyzeOptions::default()).unwrap();
    assert_eq!(plan.provider, "dockerfile");
    let tag = unique("busybox");
    build(
        docker,
        &request(ctx, plan, &tag),
        berth_build::null_sink(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    tag
}

#[tokio::test]
async fn needs_docker_busybox_example_builds_and_logs() {
    let docker = docker().await;
    let ctx = busybox_context();
    let plan = analyze(
        ctx.path(),
        &ServiceConfig::default(),
        &AnalyzeOptions::default(),
    )
    .unwrap();
    let tag = unique("busybox");
    let (log, lines) = recording_sink();
    let built = build(
        &docker,
        &request(ctx.path(), plan, &tag),
        log,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let inspect = docker.inspect_image(&tag).await.unwrap();
    assert_eq!(inspect.id.as_deref(), Some(built.id.as_str()));
    let img_labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(img_labels.get("berth.test").map(String::as_str), Some("1"));
    let lines = lines.lock().unwrap().clone();
    assert!(lines.iter().any(|l| l.starts_with("Step 1/")), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("COPY busybox /bin/busybox")),
        "{lines:?}"
    );

    // The manifest lists the image's files; .dockerignore kept notes.txt out.
    let m = image_manifest(&docker, &tag, &ManifestOptions::default())
        .await
        .unwrap();
    let paths: Vec<_> = m.entries.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"/bin/busybox"), "{paths:?}");
    assert!(paths.contains(&"/www/index.html"), "{paths:?}");
    let index = m
        .entries
        .iter()
        .find(|e| e.path == "/www/index.html")
        .unwrap();
    assert_eq!(index.size, "<h1>hello from busybox</h1>\n".len() as u64);
    let www_only = image_manifest(
        &docker,
        &tag,
        &ManifestOptions {
            root: Some("/www".into()),
            max_files: 100,
        },
    )
    .await
    .unwrap();
    assert_eq!(www_only.entries.len(), 1);
    remove(&docker, &tag).await;
}

#[tokio::test]
async fn needs_docker_dockerignore_excludes_files() {
    let docker = docker().await;
    let ctx = busybox_context();
    let base = build_busybox(&docker, ctx.path()).await;
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("notes.txt"), "secret notes").unwrap();
    std::fs::write(d.path().join("kept.txt"), "kept").unwrap();
    std::fs::write(d.path().join(".dockerignore"), "notes.txt\nDockerfile\n").unwrap();
    let text = format!("FROM {base}\nCOPY . /ctx/\n");
    std::fs::write(d.path().join("Dockerfile"), &text).unwrap();
    let tag = unique("ignore");
    build(
        &docker,
        &request(d.path(), dockerfile_plan(&text), &tag),
        berth_build::null_sink(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let m = image_manifest(
        &docker,
        &tag,
        &ManifestOptions {
            root: Some("/ctx".into()),
            max_files: 100,
        },
    )
    .await
    .unwrap();
    let paths: Vec<_> = m.entries.iter().map(|e| e.path.as_str()).collect();
    // The Dockerfile is sent (the build read it) but, listed in .dockerignore,
    // the engine keeps it out of COPY, as Docker does.
    assert_eq!(paths, ["/ctx/.dockerignore", "/ctx/kept.txt"]);
    remove(&docker, &tag).await;
    remove(&docker, &base).await;
}

#[tokio::test]
async fn needs_docker_copy_of_missing_file_fails_with_dockers_message() {
    let docker = docker().await;
    let d = tempfile::tempdir().unwrap();
    let text = "FROM scratch\nCOPY missing.txt /missing.txt\n";
    std::fs::write(d.path().join("Dockerfile"), text).unwrap();
    let tag = unique("missing");
    let (log, lines) = recording_sink();
    let err = build(
        &docker,
        &request(d.path(), dockerfile_plan(text), &tag),
        log,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BuildError::BuildFailed(_)), "{msg}");
    assert!(msg.contains("missing.txt"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("missing.txt")));
    assert!(docker.inspect_image(&tag).await.is_err());
}

/// A build running `sleep` with a unique argument; returns the argument.
fn sleeping_dockerfile(base: &str) -> (String, String) {
    let secs = format!("{}", 300 + std::process::id() % 500);
    (
        format!("FROM {base}\nRUN [\"/bin/busybox\", \"sleep\", \"{secs}\"]\n"),
        secs,
    )
}

/// Waits (bounded) until no container runs `sleep <secs>`; returns whether
/// none is left.
async fn build_container_gone(docker: &Docker, secs: &str) -> bool {
    for _ in 0..40 {
        let list = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await
            .unwrap();
        let running = list.iter().any(|c| {
            c.command
                .as_deref()
                .is_some_and(|cmd| cmd.contains("sleep") && cmd.contains(secs))
        });
        if !running {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

#[tokio::test]
async fn needs_docker_timeout_stops_the_build() {
    let docker = docker().await;
    let ctx = busybox_context();
    let base = build_busybox(&docker, ctx.path()).await;
    let d = tempfile::tempdir().unwrap();
    let (text, secs) = sleeping_dockerfile(&base);
    std::fs::write(d.path().join("Dockerfile"), &text).unwrap();
    let tag = unique("timeout");
    let mut req = request(d.path(), dockerfile_plan(&text), &tag);
    req.limits.timeout = Duration::from_secs(3);
    let err = build(
        &docker,
        &req,
        berth_build::null_sink(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.to_string(), "build exceeded its time limit of 3s");
    assert!(
        build_container_gone(&docker, &secs).await,
        "the build kept running"
    );
    remove(&docker, &base).await;
}

#[tokio::test]
async fn needs_docker_cancel_stops_the_build() {
    let docker = docker().await;
    let ctx = busybox_context();
    let base = build_busybox(&docker, ctx.path()).await;
    let d = tempfile::tempdir().unwrap();
    let (text, secs) = sleeping_dockerfile(&base);
    let text = text.replace("sleep\", \"", "sleep\", \"1");
    let secs = format!("1{secs}");
    std::fs::write(d.path().join("Dockerfile"), &text).unwrap();
    let tag = unique("cancel");
    let req = request(d.path(), dockerfile_plan(&text), &tag);
    let cancel = CancellationToken::new();
    let (log, lines) = recording_sink();
    let c2 = cancel.clone();
    let l2 = lines.clone();
    let canceller = tokio::spawn(async move {
        // Cancel once the RUN step has started.
        for _ in 0..200 {
            if l2.lock().unwrap().iter().any(|l| l.contains("Running in")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c2.cancel();
    });
    let err = build(&docker, &req, log, cancel).await.unwrap_err();
    canceller.await.unwrap();
    assert!(matches!(err, BuildError::Cancelled), "{err}");
    assert!(
        build_container_gone(&docker, &secs).await,
        "the build kept running"
    );
    remove(&docker, &base).await;
}

#[tokio::test]
async fn needs_docker_memory_limit_is_reported() {
    let docker = docker().await;
    let ctx = busybox_context();
    let base = build_busybox(&docker, ctx.path()).await;
    let d = tempfile::tempdir().unwrap();
    // dd allocates its whole block: 256 MiB against a 32 MiB limit.
    let text = format!(
        "FROM {base}\nRUN [\"/bin/busybox\", \"dd\", \"if=/dev/zero\", \"of=/dev/null\", \"bs=256M\", \"count=1\"]\n"
    );
    std::fs::write(d.path().join("Dockerfile"), &text).unwrap();
    let tag = unique("oom");
    let mut req = request(d.path(), dockerfile_plan(&text), &tag);
    req.limits.memory_bytes = Some(32 << 20);
    let err = build(
        &docker,
        &req,
        berth_build::null_sink(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "build exceeded its memory limit of 32m (killed with exit code 137)"
    );
    remove(&docker, &base).await;
}

#[tokio::test]
async fn needs_docker_generated_static_plan_builds_with_local_base() {
    let docker = docker().await;
    let ctx = busybox_context();
    let base = build_busybox(&docker, ctx.path()).await;
    let mut opts = AnalyzeOptions::default();
    opts.base_images.static_ = base.clone();
    let site = example("static");
    let plan = analyze(&site, &ServiceConfig::default(), &opts).unwrap();
    assert!(plan.generated);
    let tag = unique("static");
    let mut req = request(&site, plan, &tag);
    req.build_args = vec![("VITE_GREETING".into(), "hi".into())];
    let (log, lines) = recording_sink();
    build(&docker, &req, log, CancellationToken::new())
        .await
        .unwrap();
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("ARG VITE_GREETING")));
    let m = image_manifest(
        &docker,
        &tag,
        &ManifestOptions {
            root: Some("/www".into()),
            max_files: 100,
        },
    )
    .await
    .unwrap();
    let paths: Vec<_> = m.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/www/index.html"]);
    remove(&docker, &tag).await;
    remove(&docker, &base).await;
}

#[tokio::test]
async fn needs_docker_node_npm_example_on_local_node_image() {
    let docker = docker().await;
    if docker.inspect_image("local/node:18").await.is_err() {
        missing_tool("the image local/node:18", "run scripts/make-node-image.sh");
        return;
    }
    let mut opts = AnalyzeOptions::default();
    opts.base_images.node = "local/node:18".into();
    let dir = example("node-npm");
    let plan = analyze(&dir, &ServiceConfig::default(), &opts).unwrap();
    assert_eq!(plan.provider, "node");
    let tag = unique("node-npm");
    let mut req = request(&dir, plan, &tag);
    req.limits.memory_bytes = Some(1 << 30);
    req.limits.timeout = Duration::from_secs(300);
    let (log, lines) = recording_sink();
    build(&docker, &req, log, CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", lines.lock().unwrap().join("\n")));
    let m = image_manifest(
        &docker,
        &tag,
        &ManifestOptions {
            root: Some("/app".into()),
            max_files: 100,
        },
    )
    .await
    .unwrap();
    let paths: Vec<_> = m.entries.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"/app/server.js"), "{paths:?}");
    assert!(paths.contains(&"/app/package.json"), "{paths:?}");
    assert!(lines.lock().unwrap().iter().any(|l| l.contains("npm ci")));
    remove(&docker, &tag).await;
}

#[tokio::test]
async fn needs_docker_push_to_local_registry_returns_digest() {
    if !Path::new("/usr/bin/docker-registry").exists() {
        missing_tool("docker-registry", "apt-get install docker-registry");
        return;
    }
    let docker = docker().await;
    let store = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        store.path().display()
    );
    let cfg_path = store.path().join("config.yml");
    std::fs::write(&cfg_path, config).unwrap();
    let mut registry = tokio::process::Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&cfg_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "registry did not start");

    let ctx = busybox_context();
    let base = build_busybox(&docker, ctx.path()).await;
    let registry_addr = format!("127.0.0.1:{port}");
    let (log, lines) = recording_sink();
    let pushed = push(&docker, &base, &registry_addr, log).await.unwrap();
    assert_eq!(pushed.reference, format!("{registry_addr}/{base}"));
    assert!(
        pushed.digest.starts_with("sha256:") && pushed.digest.len() == 71,
        "{pushed:?}"
    );
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("digest: sha256:")));
    remove(&docker, &pushed.reference).await;
    remove(&docker, &base).await;
    let _ = registry.kill().await;
}

#[tokio::test]
async fn needs_docker_stale_manifest_containers_are_swept_fresh_ones_kept() {
    let docker = docker().await;
    let ctx = busybox_context();
    let tag = build_busybox(&docker, ctx.path()).await;
    let label = format!("sweep-{}", unique("m"));
    let create = || {
        docker.create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            bollard::models::ContainerCreateBody {
                image: Some(tag.clone()),
                cmd: Some(vec!["/berth-manifest".into()]),
                labels: Some(
                    [
                        ("berth.manifest".to_string(), "1".to_string()),
                        ("berth.test".to_string(), label.clone()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
        )
    };
    let old = create().await.unwrap().id;
    // Five seconds, so a manifest another test exports meanwhile is too
    // young to be swept.
    tokio::time::sleep(Duration::from_millis(5600)).await;
    let fresh = create().await.unwrap().id;
    let removed = berth_build::remove_stale_manifest_containers(&docker, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(removed >= 1);
    let exists = |id: String| {
        let d = docker.clone();
        async move { d.inspect_container(&id, None).await.is_ok() }
    };
    assert!(!exists(old).await, "the stale one is gone");
    assert!(exists(fresh.clone()).await, "a fresh one is kept");
    let _ = docker
        .remove_container(
            &fresh,
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    remove(&docker, &tag).await;
}

// BuildKit: builds with secrets.

const SECRET: &str = "s3cr3t-value";

/// A context with busybox and `text` as its Dockerfile; the image gets the
/// busybox applets as links so that shell-form RUN works.
fn secrets_context(text: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", d.path().join("busybox")).expect("/bin/busybox (busybox-static)");
    std::fs::write(d.path().join("Dockerfile"), text).unwrap();
    d
}

/// The Dockerfile checks the secret against its sha256, so that the value
/// itself is not in the Dockerfile (whose RUN lines are the image history).
/// Its ENV line is unique: BuildKit's cache keys do not cover secret values,
/// so a step another test (or run) built would be a cache hit that reads no
/// secret, and concurrent builds of equal steps share one execution.
fn secrets_dockerfile() -> String {
    use sha2::Digest;
    let sum = hex::encode(sha2::Sha256::digest(SECRET.as_bytes()));
    format!(
        "FROM scratch
ENV BERTH_TEST_RUN={}
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
RUN echo build-output-line
RUN --mount=type=secret,id=API_TOKEN,required=true sh -c 'test \"$(sha256sum < /run/secrets/API_TOKEN)\" = \"{sum}  -\" && echo ok > /proof'
RUN --mount=type=secret,id=API_TOKEN cat /run/secrets/API_TOKEN
",
        unique("run")
    )
}

fn with_secret(mut req: BuildRequest) -> BuildRequest {
    req.secrets = vec![("API_TOKEN".into(), SECRET.into())];
    req
}

/// The bytes of `docker save <tag>` (layers, config and history).
async fn saved_image(docker: &Docker, tag: &str) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    let mut s = docker.export_image(tag);
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn needs_docker_buildkit_secret_reaches_run_but_no_layer_history_or_log() {
    let docker = docker().await;
    let text = secrets_dockerfile();
    assert!(!text.contains(SECRET));
    let ctx = secrets_context(&text);
    let tag = unique("secrets");
    let req = with_secret(request(ctx.path(), dockerfile_plan(&text), &tag));
    let (log, lines) = recording_sink();
    let built = build(&docker, &req, log, CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", lines.lock().unwrap().join("\n")));
    let lines = lines.lock().unwrap().clone();
    let all = lines.join("\n");

    // Tagged, id returned, labels applied.
    let inspect = docker.inspect_image(&tag).await.unwrap();
    assert_eq!(inspect.id.as_deref(), Some(built.id.as_str()));
    let img_labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(img_labels.get("berth.test").map(String::as_str), Some("1"));

    // The RUN that needed the secret passed: /proof is in the image.
    let m = image_manifest(&docker, &tag, &ManifestOptions::default())
        .await
        .unwrap();
    let proof = m.entries.iter().find(|e| e.path == "/proof");
    assert_eq!(proof.map(|e| e.size), Some(3), "{:?}", m.entries);
    assert!(!m.entries.iter().any(|e| e.path.starts_with("/run/secrets")));

    // Neither layers, config nor history hold the value.
    let saved = saved_image(&docker, &tag).await;
    assert!(
        saved.len() > 1_000_000,
        "docker save gave {} bytes",
        saved.len()
    );
    assert!(
        !contains(&saved, SECRET),
        "the secret is in the saved image"
    );
    let history = docker.image_history(&tag).await.unwrap();
    assert!(history.iter().any(|h| h.created_by.contains("API_TOKEN")));
    for h in &history {
        assert!(!h.created_by.contains(SECRET), "{}", h.created_by);
    }

    // The build's output is logged, attributed to its step; the value that
    // a RUN printed is masked.
    let echo_step = lines
        .iter()
        .find(|l| l.contains("RUN echo build-output-line"))
        .unwrap_or_else(|| panic!("{all}"));
    let n = echo_step.split(' ').next().unwrap();
    assert!(n.starts_with('#'), "{echo_step}");
    assert!(lines.contains(&format!("{n} build-output-line")), "{all}");
    assert!(lines.iter().any(|l| l.ends_with(" ***")), "{all}");
    assert!(!all.contains(SECRET), "{all}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("with BuildKit (build secrets: API_TOKEN)")),
        "{all}"
    );
    remove(&docker, &tag).await;
}

#[tokio::test]
async fn needs_docker_buildkit_required_secret_missing_fails_clearly() {
    let docker = docker().await;
    let text = &secrets_dockerfile();
    let ctx = secrets_context(text);
    // Another secret is given, so the build runs on BuildKit.
    let tag = unique("secret-missing");
    let mut req = request(ctx.path(), dockerfile_plan(text), &tag);
    req.secrets = vec![("OTHER_TOKEN".into(), "other-value".into())];
    let (log, lines) = recording_sink();
    let err = build(&docker, &req, log, CancellationToken::new())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BuildError::BuildFailed(_)), "{msg}");
    assert!(
        msg.contains("API_TOKEN") && msg.contains("not found"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    assert!(lines.lock().unwrap().iter().any(|l| l.contains("ERROR")));
    assert!(docker.inspect_image(&tag).await.is_err());

    // Without any secret it is the legacy builder, which refuses --mount.
    let mut req = request(ctx.path(), dockerfile_plan(text), &tag);
    req.secrets.clear();
    let err = build(
        &docker,
        &req,
        berth_build::null_sink(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BuildError::BuildFailed(_)), "{err}");
    assert!(err.to_string().contains("--mount"), "{err}");
}

#[tokio::test]
async fn needs_docker_buildkit_failing_run_is_build_failed_with_engine_message() {
    let docker = docker().await;
    let text = "FROM scratch
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo about-to-fail; exit 3\"]
";
    let ctx = secrets_context(text);
    let tag = unique("secret-fail");
    let req = with_secret(request(ctx.path(), dockerfile_plan(text), &tag));
    let (log, lines) = recording_sink();
    let err = build(&docker, &req, log, CancellationToken::new())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BuildError::BuildFailed(_)), "{msg}");
    assert!(msg.contains("exit code: 3"), "{msg}");
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.ends_with(" about-to-fail")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn needs_docker_buildkit_context_honours_dockerignore() {
    let docker = docker().await;
    let text = "FROM scratch\nCOPY . /ctx/\n";
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("notes.txt"), "ignored notes").unwrap();
    std::fs::write(d.path().join("kept.txt"), "kept").unwrap();
    std::fs::create_dir(d.path().join("lib")).unwrap();
    std::fs::write(d.path().join("lib/drop.txt"), "drop").unwrap();
    std::fs::write(d.path().join("lib/keep.txt"), "keep").unwrap();
    std::fs::write(
        d.path().join(".dockerignore"),
        "notes.txt\nlib\n!lib/keep.txt\n",
    )
    .unwrap();
    std::fs::write(d.path().join("Dockerfile"), text).unwrap();
    let tag = unique("secret-ignore");
    let req = with_secret(request(d.path(), dockerfile_plan(text), &tag));
    build(
        &docker,
        &req,
        berth_build::null_sink(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let m = image_manifest(
        &docker,
        &tag,
        &ManifestOptions {
            root: Some("/ctx".into()),
            max_files: 100,
        },
    )
    .await
    .unwrap();
    let paths: Vec<_> = m.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/ctx/.dockerignore",
            "/ctx/Dockerfile",
            "/ctx/kept.txt",
            "/ctx/lib/keep.txt"
        ]
    );
    remove(&docker, &tag).await;
}

#[tokio::test]
async fn needs_docker_buildkit_generated_plan_on_local_base() {
    let docker = docker().await;
    let ctx = busybox_context();
    let base = build_busybox(&docker, ctx.path()).await;
    let mut opts = AnalyzeOptions::default();
    opts.base_images.static_ = base.clone();
    let site = example("static");
    let plan = analyze(&site, &ServiceConfig::default(), &opts).unwrap();
    assert!(plan.generated);
    let tag = unique("secret-static");
    let mut req = with_secret(request(&site, plan, &tag));
    req.build_args = vec![("VITE_GREETING".into(), "hi".into())];
    let (log, lines) = recording_sink();
    build(&docker, &req, log, CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", lines.lock().unwrap().join("\n")));
    let m = image_manifest(&docker, &tag, &ManifestOptions::default())
        .await
        .unwrap();
    let paths: Vec<_> = m.entries.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"/www/index.html"), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.ends_with(".dockerignore")),
        "{paths:?}"
    );
    remove(&docker, &tag).await;
    remove(&docker, &base).await;
}

#[tokio::test]
async fn needs_docker_buildkit_secrets_example_builds() {
    let docker = docker().await;
    let d = tempfile::tempdir().unwrap();
    copy_dir(&example("dockerfile-secrets"), d.path());
    std::fs::copy("/bin/busybox", d.path().join("busybox")).expect("/bin/busybox (busybox-static)");
    let plan = analyze(
        d.path(),
        &ServiceConfig::default(),
        &AnalyzeOptions::default(),
    )
    .unwrap();
    let tag = unique("secrets-example");
    let req = with_secret(request(d.path(), plan, &tag));
    let (log, lines) = recording_sink();
    build(&docker, &req, log, CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", lines.lock().unwrap().join("\n")));
    let m = image_manifest(&docker, &tag, &ManifestOptions::default())
        .await
        .unwrap();
    let paths: Vec<_> = m.entries.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"/token-checked"), "{paths:?}");
    assert!(paths.contains(&"/www/index.html"), "{paths:?}");
    assert!(!contains(&saved_image(&docker, &tag).await, SECRET));
    remove(&docker, &tag).await;
}

/// Whether a process on this host runs `sleep <secs>` (a BuildKit step is a
/// process under the engine, not a container).
fn sleep_process_runs(secs: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        args.iter().any(|a| a.ends_with(b"sleep")) && args.contains(&secs.as_bytes())
    })
}

/// Waits (bounded) until no process runs `sleep <secs>`; returns whether
/// none is left.
async fn sleep_process_gone(secs: &str) -> bool {
    for _ in 0..40 {
        if !sleep_process_runs(secs) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// A BuildKit build that sleeps `secs` seconds in its last step.
fn sleeping_secrets_dockerfile(secs: &str) -> String {
    format!(
        "FROM scratch\nENV BERTH_TEST_RUN={}\nCOPY busybox /bin/busybox\nRUN --mount=type=secret,id=API_TOKEN [\"/bin/busybox\", \"sleep\", \"{secs}\"]\n",
        unique("run")
    )
}

#[tokio::test]
async fn needs_docker_buildkit_timeout_stops_the_build() {
    let docker = docker().await;
    let secs = format!("{}", 2300 + std::process::id() % 500);
    let text = sleeping_secrets_dockerfile(&secs);
    let ctx = secrets_context(&text);
    let tag = unique("secret-timeout");
    let mut req = with_secret(request(ctx.path(), dockerfile_plan(&text), &tag));
    req.limits.timeout = Duration::from_secs(4);
    let (log, lines) = recording_sink();
    let err = build(&docker, &req, log, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "build exceeded its time limit of 4s");
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("RUN") && l.contains(&secs)),
        "the step never started: {:?}",
        lines.lock().unwrap()
    );
    assert!(sleep_process_gone(&secs).await, "the build kept running");
    assert!(docker.inspect_image(&tag).await.is_err());
}

#[tokio::test]
async fn needs_docker_buildkit_cancel_stops_the_build() {
    let docker = docker().await;
    let secs = format!("{}", 3300 + std::process::id() % 500);
    let text = sleeping_secrets_dockerfile(&secs);
    let ctx = secrets_context(&text);
    let tag = unique("secret-cancel");
    let req = with_secret(request(ctx.path(), dockerfile_plan(&text), &tag));
    let cancel = CancellationToken::new();
    let (log, lines) = recording_sink();
    let c2 = cancel.clone();
    let l2 = lines.clone();
    let needle = secs.clone();
    let canceller = tokio::spawn(async move {
        // Cancel once the sleeping step runs.
        for _ in 0..400 {
            if l2
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("RUN") && l.contains(&needle))
                && sleep_process_runs(&needle)
            {
                c2.cancel();
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c2.cancel();
        false
    });
    let err = build(&docker, &req, log, cancel).await.unwrap_err();
    assert!(canceller.await.unwrap(), "the step never ran");
    assert!(matches!(err, BuildError::Cancelled), "{err}");
    assert!(sleep_process_gone(&secs).await, "the build kept running");
}

#[tokio::test]
async fn needs_docker_buildkit_refuses_bad_secret_names() {
    let docker = docker().await;
    let d = tempfile::tempdir().unwrap();
    let text = "FROM scratch\n";
    std::fs::write(d.path().join("Dockerfile"), text).unwrap();
    let mut req = request(d.path(), dockerfile_plan(text), &unique("bad-secret"));
    req.secrets = vec![("../etc/passwd".into(), "value-1".into())];
    let err = build(
        &docker,
        &req,
        berth_build::null_sink(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BuildError::SecretName(_)), "{err}");
    assert!(!err.to_string().contains("value-1"));
}
