//! berth-server: the control plane. It wires the concrete backends
//! together (SQLite store, Docker runtime, the edge proxy) and runs:
//! - the [`deployer::Deployer`], which queues deployments per service slot
//!   and runs the deploy algorithm of [`pipeline`] — the one place where a
//!   deployment goes from queued to active;
//! - the reconciler ([`reconcile`]), at start, so no deployment stays stuck
//!   after a crash;
//! - the scheduler of jobs ([`jobs`]) on the leader;
//! - the HTTP API ([`api`]) under `/api/v1`;
//! - the hand-over of its listening sockets and control plane to a newer
//!   process ([`takeover`], `berth server --takeover`).
//!
//! Invariants: the store is the source of truth; the edge only ever gets
//! route tables computed from it (plus the persisted copy it serves during
//! a restart); every side effect goes through the `Store`, `Runtime`,
//! build and edge interfaces.

pub mod access;
pub mod api;
pub mod backups;
pub mod charts;
pub mod cluster;
pub mod config;
pub mod console;
pub mod deployer;
pub mod dns;
pub mod error;
pub mod ids;
pub mod jobs;
pub mod logs;
pub mod maintenance;
pub mod metrics;
pub mod monitor;
pub mod nodes;
pub mod notify;
pub mod pipeline;
pub mod pushed;
pub mod reconcile;
pub mod runs;
pub mod s3;
pub mod saving;
pub mod takeover;
pub mod tls;
mod unavailable;
pub mod volumes;

pub use berth_runtime::microvm::Accel as MicroVmAccel;
pub use config::{RuntimeKind, ServerConfig};

use anyhow::Context;
use berth_edge::{Edge, EdgeConfig};
use berth_runtime::{DockerRuntime, MicroVmRuntime, Runtime};
use berth_store::{Cipher, Store};
use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the generated admin token is written.
pub const TOKEN_FILE: &str = "admin.token";
/// `Strict-Transport-Security: max-age` of HTTPS answers with `--hsts`: one year.
pub const HSTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// The API token: the configured one, else the one in
/// `<data-dir>/admin.token`, else a new random one written there (0600).
/// Returns the token and the file it came from.
pub fn resolve_token(cfg: &ServerConfig) -> anyhow::Result<(String, Option<PathBuf>)> {
    if let Some(t) = cfg.token.as_deref().filter(|t| !t.is_empty()) {
        return Ok((t.to_string(), None));
    }
    let path = cfg.data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_string(), Some(path))),
        _ => {}
    }
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let token = format!("berth_{}", hex::encode(bytes));
    let _ = std::fs::remove_file(&path);
    berth_store::crypto::write_private(&path, format!("{token}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok((token, Some(path)))
}

/// This berth's identity on the container engine, kept in the data dir.
fn instance_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("instance.id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        if !id.trim().is_empty() {
            return Ok(id.trim().to_string());
        }
    }
    let id = ids::new_id();
    berth_store::crypto::write_private(&path, format!("{id}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

fn private_dir(p: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(p)
        .with_context(|| format!("cannot create data dir {}", p.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// The API's address for other servers and `berth cluster status`.
fn api_url(listen: std::net::SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        return format!("http://{host}:{}", listen.port());
    }
    format!("http://{listen}")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The containers' runtime wrapped so instances asking for a microVM (every
/// one under `--runtime microvm`, else services with `isolation =
/// "microvm"`) get one. `--runtime microvm` checks the host now and fails
/// the start naming what is missing; otherwise the check waits for the
/// first microVM deployment, which fails naming it.
///
/// Also returns the microVM runtime when this server has one, so the
/// volumes seam counts its VMs among a volume's users.
#[allow(clippy::type_complexity)]
async fn with_microvms(
    cfg: &ServerConfig,
    containers: Arc<dyn Runtime>,
    images: Arc<dyn berth_runtime::Images>,
    engine: Option<DockerRuntime>,
) -> anyhow::Result<(
    Arc<dyn Runtime>,
    Arc<dyn berth_runtime::Images>,
    Option<MicroVmRuntime>,
)> {
    use berth_runtime::microvm::{Isolating, MicroVmConfig};
    let all = cfg.runtime == RuntimeKind::MicroVm;
    let init = match &cfg.microvm_init {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map(|exe| exe.with_file_name("berth-init"))
            .unwrap_or_else(|_| PathBuf::from("berth-init")),
    };
    let config = MicroVmConfig {
        state_dir: cfg.data_dir.join("microvm"),
        kernel: cfg.microvm_kernel.clone(),
        init,
        accel: cfg.microvm_accel,
        qemu: PathBuf::from("qemu-system-x86_64"),
    };
    let vms = match engine.map(|e| e.docker().clone()) {
        None => Err("the Docker engine is not reachable (images are built and kept there)".into()),
        Some(docker) if all => {
            tracing::info!("checking the microVM runtime (a probe boot may take a few seconds)");
            Ok(MicroVmRuntime::new(docker, config)
                .await
                .context("--runtime microvm")?)
        }
        Some(docker) => MicroVmRuntime::open(docker, config).map_err(|e| e.to_string()),
    };
    if all {
        if let Err(why) = &vms {
            anyhow::bail!("--runtime microvm: {why}");
        }
    }
    let vm_runtime = vms.as_ref().ok().cloned();
    let isolating = Arc::new(Isolating::new(containers, images, vms, all));
    Ok((isolating.clone(), isolating, vm_runtime))
}

/// `--runtime swarm`: the engine must be a swarm manager; fails the start
/// with one line saying how to make it one.
async fn swarm_runtime(
    cfg: &ServerConfig,
    engine: Option<&DockerRuntime>,
) -> anyhow::Result<berth_runtime::SwarmRuntime> {
    use berth_runtime::swarm::{RegistryAuth, SwarmConfig};
    let Some(engine) = engine else {
        anyhow::bail!("--runtime swarm: the Docker engine is not reachable (set DOCKER_HOST to a swarm manager)");
    };
    let registry_auth = match (&cfg.registry, &cfg.registry_user, &cfg.registry_password) {
        (Some(server), Some(user), Some(password)) => Some(RegistryAuth {
            server: server.clone(),
            username: user.clone(),
            password: password.clone(),
        }),
        _ => None,
    };
    let config = SwarmConfig {
        registry_auth,
        registry: cfg.registry.clone(),
        ..SwarmConfig::default()
    };
    let swarm = berth_runtime::SwarmRuntime::new(engine.docker().clone(), config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if cfg.registry.is_none() {
        tracing::warn!("--runtime swarm without --registry: images stay on the manager, so tasks placed on other nodes cannot start");
    }
    Ok(swarm)
}

/// Run `berth server` until SIGTERM or Ctrl-C.
pub async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    private_dir(&cfg.data_dir)?;
    if let Some(b) = &cfg.base_domain {
        berth_core::names::hostname(b).context("--base-domain")?;
    }
    cfg.backup_target()?;
    let mut cfg = cfg;
    cfg.console_host = cfg
        .console_host
        .as_deref()
        .map(console::host::check)
        .transpose()
        .context("--console-host")?;
    let (token, token_file) = resolve_token(&cfg)?;
    let cipher = Cipher::load(&cfg.data_dir, cfg.master_key.as_deref())?;

    // The listening sockets: fresh ones, or the running server's. A
    // takeover returns once the old server's control plane is quiet, so
    // the store (and its migrations) is opened after it.
    let edge_threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (listeners, received) = if cfg.takeover {
        let wants = takeover::Addrs {
            api: cfg.api_listen,
            http: cfg.http_listen,
            https: cfg.https_listen,
        };
        let dir = cfg.data_dir.clone();
        tracing::info!("--takeover: asking the running server for its sockets");
        let got = tokio::task::spawn_blocking(move || takeover::request(&dir, wants))
            .await?
            .context("--takeover")?;
        tracing::info!(from_pid = got.from_pid, "took the listening sockets over");
        let listeners = got.listeners.try_clone()?;
        (listeners, Some(got))
    } else {
        (
            takeover::Listeners::bind(
                cfg.api_listen,
                cfg.http_listen,
                cfg.https_listen,
                edge_threads,
            )?,
            None,
        )
    };
    cfg.api_listen = listeners.api.local_addr()?;
    if let Some(l) = listeners.http.first() {
        cfg.http_listen = l.local_addr()?;
    }
    if let Some(l) = listeners.https.first() {
        cfg.https_listen = Some(l.local_addr()?);
    }
    // Duplicates kept for a later hand-over; the originals are served.
    let keep = listeners.try_clone()?;
    let takeover::Listeners {
        api: api_socket,
        http: http_sockets,
        https: https_sockets,
    } = listeners;
    drop(api_socket); // the API serves a fresh duplicate of `keep.api`

    let store_url = cfg.store_url()?;
    let store: Arc<dyn Store> = store_url
        .open(cipher.clone())
        .await
        .with_context(|| format!("cannot open the store {}", store_url.describe()))?;
    tracing::info!(store = %store_url.describe(), "store open");
    // Several servers may share a PostgreSQL store: one leads (see cluster).
    let member = instance_id(&cfg.data_dir)?;
    let leadership = if store.clustered() {
        cluster::Leadership::clustered(&member, &api_url(cfg.api_listen))
    } else {
        cluster::Leadership::single(&member, &api_url(cfg.api_listen))
    };

    // The console host's private listener: the edge proxies that hostname
    // to it, and only requests arriving there carry the edge's word on the
    // client's address and scheme (see console::host).
    let console_listener = match &cfg.console_host {
        Some(_) => Some(
            std::net::TcpListener::bind(("127.0.0.1", 0))
                .context("cannot listen on 127.0.0.1 for --console-host")?,
        ),
        None => None,
    };
    let console_host = match (&cfg.console_host, &console_listener) {
        (Some(host), Some(l)) => Some(Arc::new(console::host::ConsoleHost::new(
            host.clone(),
            l.local_addr()?,
        ))),
        _ => None,
    };

    // The edge first: it serves the persisted routes while the rest starts.
    let edge = Edge::new(EdgeConfig {
        routes_file: Some(cfg.data_dir.join("routes.json")),
        pin_key_file: Some(cfg.data_dir.join("edge.key")),
        access_log: cfg
            .access_log
            .as_deref()
            .map(berth_edge::AccessLogConfig::parse),
        otlp: cfg
            .otlp_endpoint
            .clone()
            .map(|endpoint| berth_edge::OtlpConfig {
                endpoint,
                sample: cfg.trace_sample,
            }),
        ..EdgeConfig::default()
    })
    .context("cannot start the edge proxy")?;
    if let Some(c) = &console_host {
        // At once (the persisted table may name the previous process's
        // listener), unless an app's route holds the hostname.
        let held = edge
            .routes()
            .iter()
            .any(|(h, r)| *h == c.host && !console::host::ConsoleHost::is_console_route(r));
        if held {
            c.warn_taken();
        } else {
            edge.apply(vec![berth_edge::RouteChange::Upsert {
                host: c.host.clone(),
                route: c.route(),
            }])
            .context("--console-host: the edge refused its route")?;
        }
    }
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    // One single-threaded runtime per socket (`SO_REUSEPORT`), each with
    // its own upstream pool.
    let edge_handle = edge
        .serve_listeners(http_sockets, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .with_context(|| format!("cannot listen on --http-listen {}", cfg.http_listen))?;

    // HTTPS: the same worker threads' design, one more `SO_REUSEPORT`
    // socket per thread (see `tls`).
    let https = match cfg.https_listen {
        Some(addr) if !https_sockets.is_empty() => {
            let started = tls::start(&cfg, store.clone(), edge.clone(), &cipher, &leadership)?;
            // plain requests for hostnames with a certificate: 308 to here
            edge.set_https(
                addr.port(),
                started.certs.clone(),
                cfg.hsts.then_some(HSTS_MAX_AGE),
            );
            let mut stop = stop_tx.subscribe();
            let handle = edge
                .serve_tls_listeners(https_sockets, started.certs.clone(), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .with_context(|| format!("cannot listen on --https-listen {addr}"))?;
            Some((addr, started.local_ca, handle))
        }
        _ => None,
    };
    if let Some(got) = received {
        // The edge serves: the old server may stop accepting now.
        if let Err(e) = got.ready() {
            tracing::warn!(error = %e, "could not tell the old server this one serves");
        }
    }

    // The concrete backends, wired here only: one engine serves as runtime,
    // image store and builder.
    #[allow(clippy::type_complexity)]
    let (runtime, images, builder, engine): (
        Arc<dyn Runtime>,
        Arc<dyn berth_runtime::Images>,
        Arc<dyn berth_build::Builder>,
        Option<DockerRuntime>,
    ) = match DockerRuntime::connect().await {
        Ok(rt) => {
            let login = match (&cfg.registry_user, &cfg.registry_password) {
                (Some(username), Some(password)) => Some(berth_build::RegistryLogin {
                    username: username.clone(),
                    password: password.clone(),
                }),
                _ => None,
            };
            let builder = berth_build::EngineBuilder::from_docker(rt.docker().clone())
                .with_registry_login(login);
            // Manifest containers an interrupted export left behind.
            let b = builder.clone();
            tokio::spawn(async move {
                let ten_min = std::time::Duration::from_secs(600);
                if let Ok(n @ 1..) = b.remove_stale_manifest_containers(ten_min).await {
                    tracing::info!(containers = n, "removed stale manifest containers");
                }
            });
            (
                Arc::new(rt.clone()),
                Arc::new(rt.images()),
                Arc::new(builder),
                Some(rt),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "the Docker engine is not reachable; deployments will fail until it is");
            let unavailable = Arc::new(unavailable::Unavailable(e.to_string()));
            (unavailable.clone(), unavailable.clone(), unavailable, None)
        }
    };
    let engine_connected = engine.is_some();
    let swarm = match cfg.runtime {
        RuntimeKind::Swarm => Some(Arc::new(swarm_runtime(&cfg, engine.as_ref()).await?)),
        RuntimeKind::Docker | RuntimeKind::MicroVm => None,
    };
    let runtime: Arc<dyn Runtime> = match &swarm {
        Some(swarm) => swarm.clone(),
        None => runtime,
    };
    // Named volumes live on the local engine: containers mount them, and
    // microVMs share their directories (virtio-fs); not on Swarm.
    let volumes = engine
        .as_ref()
        .filter(|_| cfg.runtime != RuntimeKind::Swarm)
        .map(|rt| berth_runtime::DockerVolumes::from_docker(rt.docker().clone()));
    let (runtime, images, vms) = with_microvms(&cfg, runtime, images, engine).await?;
    // The servers of a cluster share one identity on the container engine
    // (the first one's), so a new leader adopts what the old one started.
    let instance = store
        .engine_identity(&member)
        .await
        .context("cannot read the cluster's engine identity")?
        .unwrap_or(member.clone());
    let cfg = Arc::new(cfg);
    let logs = logs::LogHub::start(store.clone());
    let deployer = deployer::Deployer::with_leadership(
        deployer::Backends {
            store: store.clone(),
            runtime,
            images,
            builder,
            engine_connected,
            edge: edge.clone(),
        },
        logs,
        cfg.clone(),
        instance,
        leadership.clone(),
    );
    if let Some(c) = &console_host {
        let _ = deployer.console_host.set(c.clone());
    }
    if let Some(v) = volumes {
        // Helpers carry the instance: reconcile removes this server's
        // leaked ones only.
        let v = v.with_helper_labels(std::collections::BTreeMap::from([(
            pipeline::INSTANCE_LABEL.to_owned(),
            deployer.instance.clone(),
        )]));
        let seam: Arc<dyn berth_runtime::Volumes> = match vms {
            // VMs mounting a volume are its users too.
            Some(vms) => Arc::new(berth_runtime::microvm::volumes::WithVms::new(
                Arc::new(v),
                vms,
            )),
            None => Arc::new(v),
        };
        let _ = deployer.volumes.set(seam);
    }
    if leadership.is_clustered() {
        // The leader reconciles when it takes the lease.
        tokio::spawn(cluster::run(deployer.clone()));
        tokio::spawn(cluster::follow_routes(deployer.clone()));
    } else {
        let d = deployer.clone();
        tokio::spawn(async move {
            if let Err(e) = d.reconcile().await {
                tracing::error!(error = %e, "reconcile at start failed");
            }
        });
    }

    // Scheduled jobs, fired by the leader.
    tokio::spawn(jobs::run(deployer.clone()));
    tokio::spawn(backups::run_schedules(deployer.clone()));

    // Notifications: the leader queues deployment events and sends them.
    tokio::spawn(notify::Notifier::new(store.clone())?.run(leadership.clone()));

    // The console's charts: the leader rolls the edge's counters up per minute.
    tokio::spawn(charts::run(deployer.clone()));

    // Log retention, at start and every 10 minutes.
    {
        let store = store.clone();
        let (age, max) = (cfg.log_retention, cfg.log_max_lines_per_project);
        let leadership = leadership.clone();
        tokio::spawn(async move {
            loop {
                if !leadership.is_leader() {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    continue;
                }
                let cutoff =
                    chrono::Utc::now() - chrono::Duration::from_std(age).unwrap_or_default();
                let prune = store.prune_logs(cutoff, max);
                match berth_store::cluster::fenced(leadership.fence(), prune).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(lines = n, "log retention removed old lines"),
                    Err(e) => tracing::warn!(error = %e, "log retention failed"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(600)).await;
            }
        });
    }

    // Idle preview environments, checked at a quarter of the TTL (at most
    // every 10 minutes).
    if let Some(ttl) = cfg.preview_ttl {
        let d = deployer.clone();
        let every = (ttl / 4).clamp(
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(600),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if !d.leadership.is_leader() {
                    continue;
                }
                let reap = d.reap_idle_previews(ttl);
                if let Err(e) = berth_store::cluster::fenced(d.leadership.fence(), reap).await {
                    tracing::warn!(error = %e, "preview reaper failed");
                }
            }
        });
    }

    let state = api::AppState {
        store,
        deployer: deployer.clone(),
        token: Arc::new(token),
        swarm,
    };
    let app = api::router(state);
    if let Some(listener) = console_listener {
        serve_console_host(listener, app.clone(), stop_tx.subscribe())?;
    }
    println!("berth {} started", env!("CARGO_PKG_VERSION"));
    println!("  API and console  http://{}", cfg.api_listen);
    if let Some(host) = &cfg.console_host {
        match &https {
            Some((addr, _, _)) => println!(
                "  console host     https://{host}{} (and http://{host}{})",
                port_suffix(addr.port(), 443),
                port_suffix(cfg.http_listen.port(), 80)
            ),
            None => println!(
                "  console host     http://{host}{}",
                port_suffix(cfg.http_listen.port(), 80)
            ),
        }
    }
    println!(
        "  edge proxy       http://{} (apps at *.{})",
        cfg.http_listen,
        cfg.base_domain()
    );
    println!("  data dir         {}", cfg.data_dir.display());
    if let Some((addr, ca, _)) = &https {
        println!("  edge proxy TLS   https://{addr}");
        match &cfg.acme_directory {
            Some(d) => println!(
                "  ACME             {d} (custom domains, *.{})",
                cfg.base_domain()
            ),
            None => println!("  ACME             off (custom domains get no certificate)"),
        }
        println!(
            "  local CA         {} (trust it for https://*.localhost)",
            ca.display()
        );
    }
    match &token_file {
        Some(p) => println!(
            "  API token        in {} (export BERTH_TOKEN=$(cat {}))",
            p.display(),
            p.display()
        ),
        None => println!("  API token        as given by --token / BERTH_TOKEN"),
    }
    let mut requests = takeover::listen(&cfg.data_dir)?;
    let handed_over = serve_api(app, &keep, &mut requests, &deployer).await?;
    if handed_over {
        // The new process has this server's identity (same data dir) and
        // carries on as the cluster member.
        tracing::info!("handed over: draining the edge, then exiting");
    } else if leadership.is_clustered() {
        // Hand the lease over now rather than after it expires.
        deployer.drop_leader_work();
        let _ = deployer.store.release_lease(leadership.member()).await;
    }
    tracing::info!("shutting down: draining the edge");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), edge_handle.wait()).await;
    if let Some((_, _, handle)) = https {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), handle.wait()).await;
    }
    Ok(())
}

/// `:<port>` unless it is the scheme's own.
fn port_suffix(port: u16, default: u16) -> String {
    if port == default {
        String::new()
    } else {
        format!(":{port}")
    }
}

/// Serves the API's router (console, `/api/v1`, `git push`) on the console
/// host's private listener, where [`console::host::via_edge`] believes the
/// edge's forwarded headers, until the edge stops.
fn serve_console_host(
    listener: std::net::TcpListener,
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = app.layer(axum::middleware::from_fn(console::host::via_edge));
    // Only this process's edge is served there; `tap_io` keeps the
    // connection's address available to `ConnectInfo`.
    let listener = axum::serve::ListenerExt::tap_io(console::host::OwnEdgeOnly(listener), |_| {});
    tokio::spawn(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .into_future(),
    );
    Ok(())
}

/// How long in-flight API requests get to finish when the API stops (a
/// follower of a log stream would hold it forever).
const API_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the API on a duplicate of `keep.api` until SIGTERM or Ctrl-C
/// (returns false) or until a new server took everything over (true; see
/// [`takeover`]). A takeover that fails leaves this server serving on.
async fn serve_api(
    app: axum::Router,
    keep: &takeover::Listeners,
    requests: &mut tokio::sync::mpsc::Receiver<takeover::Request>,
    deployer: &Arc<deployer::Deployer>,
) -> anyhow::Result<bool> {
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        let socket = keep.api.try_clone()?;
        socket.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(socket)?;
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(
            axum::serve(
                listener,
                app.clone()
                    .into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = api_stopped.await;
            })
            .into_future(),
        );
        let request = loop {
            tokio::select! {
                _ = &mut signal => break None,
                Some(req) = requests.recv() => {
                    if let Some(why) = req.refusal(keep) {
                        tracing::warn!(pid = req.pid, reason = %why, "takeover refused");
                        req.refuse(&why);
                        continue;
                    }
                    break Some(req);
                }
                res = &mut server => {
                    res?.context("API server failed")?;
                    anyhow::bail!("the API server stopped");
                }
            }
        };
        let _ = stop_api.send(());
        if tokio::time::timeout(API_GRACE, &mut server).await.is_err() {
            server.abort();
        }
        let Some(req) = request else {
            return Ok(false);
        };
        tracing::info!(
            pid = req.pid,
            version = %req.version,
            "takeover: handing the control plane and the sockets over"
        );
        let interrupted = deployer.quiesce(takeover::PIPELINE_GRACE).await;
        // Not the leader any more (clustered: no more heartbeats), before
        // the new process can start leading.
        deployer.leadership.retire();
        if !interrupted.is_empty() {
            tracing::warn!(
                deployments = ?interrupted,
                "takeover: pipelines still running were interrupted; the new server ends them"
            );
        }
        let sockets = keep.try_clone()?;
        match tokio::task::spawn_blocking(move || req.hand_over(&sockets)).await {
            Ok(Ok(())) => return Ok(true),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "takeover failed; this server carries on")
            }
            Err(e) => tracing::error!(error = %e, "takeover failed; this server carries on"),
        }
        deployer.leadership.reinstate();
        deployer.resume();
        let d = deployer.clone();
        tokio::spawn(async move {
            if let Err(e) = d.reconcile().await {
                tracing::error!(error = %e, "reconcile after a failed takeover failed");
            }
        });
    }
}
