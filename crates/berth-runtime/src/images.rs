//! The image seam: where the images a runtime starts from are kept, split
//! from [`crate::Runtime`] because builder and runtime do not always share a
//! store. [`crate::docker::EngineImages`] is a Docker Engine's local store
//! (the builder and the runtime use the same engine); [`RegistryImages`] is
//! an OCI/Docker registry (HTTP API v2), for a runtime on other hosts that
//! pulls what the builder pushed.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::{ACCEPT, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::TcpStream;

use crate::runtime::RuntimeError;

/// Images a runtime can start instances from. Errors are errors: a store
/// that cannot be asked is never reported as "absent".
#[async_trait::async_trait]
pub trait Images: Send + Sync {
    /// Whether `image` (a reference as the builder tagged it, e.g.
    /// `berth/shop-web:1a2b`) is there.
    async fn exists(&self, image: &str) -> Result<bool, RuntimeError>;

    /// Removes `image`. Missing is `Ok`; still used by an instance is
    /// `RuntimeError::ImageInUse`.
    async fn remove(&self, image: &str) -> Result<(), RuntimeError>;
}

/// Manifest media types a registry may hold for an image.
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// How long one registry request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// [`Images`] in a registry reached over plain HTTP (`host:port`, as
/// `--registry` names it; no credentials yet, like the push step). A local
/// reference `repo:tag` is `<registry>/repo:tag` there. Removal deletes
/// the manifest by digest, which the registry must allow
/// (`storage.delete.enabled`).
#[derive(Debug, Clone)]
pub struct RegistryImages {
    registry: String,
}

impl RegistryImages {
    pub fn new(registry: impl Into<String>) -> Self {
        Self {
            registry: registry.into().trim_end_matches('/').to_owned(),
        }
    }

    /// The reference a runtime on another host pulls: `<registry>/<image>`.
    pub fn reference(&self, image: &str) -> String {
        let (repo, tag) = self.split(image);
        format!("{}/{repo}:{tag}", self.registry)
    }

    /// `(repository, tag)` of `image` in this registry.
    fn split<'a>(&self, image: &'a str) -> (&'a str, &'a str) {
        let image = image
            .strip_prefix(self.registry.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(image);
        let slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
        match image[slash..].rfind(':') {
            Some(i) => (&image[..slash + i], &image[slash + i + 1..]),
            None => (image, "latest"),
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, RuntimeError> {
        let err = |message: String| RuntimeError::Backend {
            op: "registry request",
            message: format!("{} {}{path}: {message}", method, self.registry),
        };
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, self.registry.as_str())
            .header(ACCEPT, MANIFEST_TYPES)
            .body(Empty::<Bytes>::new())
            .map_err(|e| err(e.to_string()))?;
        let exchange = async {
            let stream = TcpStream::connect(self.registry.as_str())
                .await
                .map_err(|e| err(e.to_string()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| err(e.to_string()))?;
            let driver = tokio::spawn(conn);
            let res = sender
                .send_request(req)
                .await
                .map_err(|e| err(e.to_string()));
            driver.abort();
            res
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| err(format!("timed out after {}s", REQUEST_TIMEOUT.as_secs())))?
    }
}

#[async_trait::async_trait]
impl Images for RegistryImages {
    async fn exists(&self, image: &str) -> Result<bool, RuntimeError> {
        let (repo, tag) = self.split(image);
        let res = self
            .request(Method::HEAD, &format!("/v2/{repo}/manifests/{tag}"))
            .await?;
        match res.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(RuntimeError::Backend {
                op: "registry manifest",
                message: format!("{} answered {s} for {image}", self.registry),
            }),
        }
    }

    async fn remove(&self, image: &str) -> Result<(), RuntimeError> {
        let (repo, tag) = self.split(image);
        let head = self
            .request(Method::HEAD, &format!("/v2/{repo}/manifests/{tag}"))
            .await?;
        let digest = match head.status() {
            StatusCode::NOT_FOUND => return Ok(()),
            StatusCode::OK => head
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| RuntimeError::Backend {
                    op: "registry manifest",
                    message: format!("{} sent no digest for {image}", self.registry),
                })?,
            s => {
                return Err(RuntimeError::Backend {
                    op: "registry manifest",
                    message: format!("{} answered {s} for {image}", self.registry),
                })
            }
        };
        let res = self
            .request(Method::DELETE, &format!("/v2/{repo}/manifests/{digest}"))
            .await?;
        match res.status() {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            StatusCode::METHOD_NOT_ALLOWED => Err(RuntimeError::Backend {
                op: "registry delete",
                message: format!(
                    "{} does not allow deletes (storage.delete.enabled is off)",
                    self.registry
                ),
            }),
            s => Err(RuntimeError::Backend {
                op: "registry delete",
                message: format!("{} answered {s} deleting {image}", self.registry),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_map_into_the_registry() {
        let r = RegistryImages::new("127.0.0.1:5000/");
        assert_eq!(r.split("berth/shop-web:1a2b"), ("berth/shop-web", "1a2b"));
        assert_eq!(
            r.split("127.0.0.1:5000/berth/shop-web:1a2b"),
            ("berth/shop-web", "1a2b")
        );
        assert_eq!(r.split("busybox"), ("busybox", "latest"));
        assert_eq!(
            r.reference("berth/shop-web:1a2b"),
            "127.0.0.1:5000/berth/shop-web:1a2b"
        );
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_an_error_not_absent() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = RegistryImages::new(format!("127.0.0.1:{port}"));
        assert!(r.exists("berth/x:1").await.is_err());
        assert!(r.remove("berth/x:1").await.is_err());
    }
}
