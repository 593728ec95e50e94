//! A BuildKit session: the client side of a build, served to the engine.
//!
//! The engine's BuildKit asks its client for what the build needs from the
//! client's side (here: secret values) over gRPC, with the roles reversed:
//! the client opens `POST /session` with `Upgrade: h2c`, and once the engine
//! answers `101 Switching Protocols` it speaks HTTP/2 as the gRPC *client* on
//! that connection while berth serves. A build names the session by its id
//! (`session=` of `POST /build`).
//!
//! Served: `moby.buildkit.secrets.v1.Secrets/GetSecret` (from the values
//! handed in, never from files or the environment) and
//! `grpc.health.v1.Health/Check` (the engine drops a session that fails it).
//! Dropping the [`Session`] closes the connection, which ends the session on
//! the engine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bollard_buildkit_proto::health::health_check_response::ServingStatus;
use bollard_buildkit_proto::health::health_server::{Health, HealthServer};
use bollard_buildkit_proto::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::BuildError;

/// The engine's default socket, as `Docker::connect_with_local_defaults`.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// gRPC methods the session serves; the engine only calls declared ones.
const METHODS: [&str; 2] = [
    "/moby.buildkit.secrets.v1.Secrets/GetSecret",
    "/grpc.health.v1.Health/Check",
];

/// The engine's socket: `DOCKER_HOST` when it is `unix://...`, else the
/// default socket. This is the rule of `Docker::connect_with_local_defaults`,
/// with which berth connects its engine client.
pub(crate) fn engine_socket(docker_host: Option<&str>) -> PathBuf {
    match docker_host.and_then(|h| h.strip_prefix("unix://")) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

/// An open session; dropping it closes the connection and so the session.
pub(crate) struct Session {
    pub(crate) id: String,
    serve: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.serve.abort();
    }
}

impl Session {
    /// Opens a session on the engine at `socket` that serves `secrets`
    /// (id → value). `shared_key` is BuildKit's hint for sharing local
    /// sources between sessions.
    pub(crate) async fn open(
        socket: &std::path::Path,
        secrets: HashMap<String, Vec<u8>>,
        shared_key: &str,
    ) -> Result<Session, BuildError> {
        let id = new_id();
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            BuildError::Docker(format!("buildkit session: {what}: {e}"))
        };
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| fail(&format!("cannot connect to {}", socket.display()), &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail("handshake", &e))?;
        let conn = tokio::spawn(conn.with_upgrades());
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri("/session")
            .header(http::header::HOST, "docker")
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, "h2c")
            .header("X-Docker-Expose-Session-Uuid", &id)
            .header("X-Docker-Expose-Session-Name", "berth")
            .header("X-Docker-Expose-Session-Sharedkey", shared_key);
        for m in METHODS {
            req = req.header("X-Docker-Expose-Session-Grpc-Method", m);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail("request", &e))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| fail("request", &e))?;
        if res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            conn.abort();
            return Err(BuildError::Docker(format!(
                "buildkit session: the engine answered {} (it needs BuildKit support, API 1.39 or later)",
                res.status()
            )));
        }
        let upgraded = hyper::upgrade::on(res)
            .await
            .map_err(|e| fail("upgrade", &e))?;
        let routes = tonic::service::Routes::new(HealthServer::new(Healthy))
            .add_service(SecretsServer::new(SecretStore {
                values: Arc::new(secrets),
            }))
            .prepare();
        let serve = tokio::spawn(async move {
            let service = TowerToHyperService::new(routes);
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(upgraded, service)
                .await;
            conn.abort();
        });
        Ok(Session { id, serve })
    }
}

/// Answers BuildKit's `GetSecret` from the values handed in.
struct SecretStore {
    values: Arc<HashMap<String, Vec<u8>>>,
}

#[tonic::async_trait]
impl Secrets for SecretStore {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = &request.get_ref().id;
        match self.values.get(id) {
            Some(v) => Ok(Response::new(GetSecretResponse { data: v.clone() })),
            // NotFound is what BuildKit expects for an unknown secret: a
            // `required=true` mount then fails, any other mount is left out.
            None => Err(Status::not_found(format!("secret {id} not found"))),
        }
    }
}

/// Always serving: the session lives exactly as long as the build.
struct Healthy;

#[tonic::async_trait]
impl Health for Healthy {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    async fn list(
        &self,
        _request: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        Err(Status::unimplemented("list"))
    }

    type WatchStream = futures_util::stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

/// A random id in BuildKit's format (25 base-36 characters).
fn new_id() -> String {
    let mut seed = [0u8; 16];
    // No rand dependency: the id only has to be unique among open sessions.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let digest = <sha2::Sha256 as sha2::Digest>::digest(
        format!("{nanos}-{n}-{}", std::process::id()).as_bytes(),
    );
    seed.copy_from_slice(&digest[..16]);
    let mut v = u128::from_be_bytes(seed);
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..25)
        .map(|_| {
            let c = ALPHABET[(v % 36) as usize] as char;
            v /= 36;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_follows_docker_host_like_bollard() {
        assert_eq!(engine_socket(None), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            engine_socket(Some("unix:///run/user/1000/docker.sock")),
            PathBuf::from("/run/user/1000/docker.sock")
        );
        // bollard's local defaults ignore a non-unix DOCKER_HOST.
        assert_eq!(
            engine_socket(Some("tcp://127.0.0.1:2375")),
            PathBuf::from(DEFAULT_SOCKET)
        );
    }

    #[test]
    fn ids_are_unique_and_in_buildkit_format() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 25);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
    }
}
