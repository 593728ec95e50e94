//! Push: tag a built image into a registry and push it.
//!
//! The pushed reference is `<registry>/<repo>:<tag>` for a local image
//! `<repo>:<tag>`. The digest comes from the push stream's final status line
//! (`<tag>: digest: sha256:... size: N`). Credentials, when given, go to
//! the engine as `X-Registry-Auth` ([`push_with_auth`]); they are never
//! logged.

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{PushImageOptions, TagImageOptions};
use bollard::Docker;
use futures_util::StreamExt;

use crate::error::one_line;
use crate::{BuildError, LogSink};

/// A pushed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// `<registry>/<repo>:<tag>`
    pub reference: String,
    /// `sha256:...`
    pub digest: String,
}

/// Splits `repo:tag` (the tag defaults to `latest`; a registry port is not a tag).
fn split_tag(image: &str) -> (&str, &str) {
    let slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[slash..].rfind(':') {
        Some(i) => (&image[..slash + i], &image[slash + i + 1..]),
        None => (image, "latest"),
    }
}

fn digest_of(status: &str) -> Option<String> {
    let rest = status.split_once("digest: ")?.1;
    let d = rest.split_whitespace().next()?;
    d.starts_with("sha256:").then(|| d.to_string())
}

/// Tags `image` as `<registry>/<image>` and pushes it; returns the reference
/// and digest. Every status line goes to `log` (one per layer and status).
pub async fn push(
    docker: &Docker,
    image: &str,
    registry: &str,
    log: LogSink,
) -> Result<PushedImage, BuildError> {
    push_with_auth(docker, image, registry, None, log).await
}

/// A registry user and password (`--registry-user`, `--registry-password`).
#[derive(Clone)]
pub struct RegistryLogin {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// [`push`] with the registry's credentials, sent as `X-Registry-Auth`.
pub async fn push_with_auth(
    docker: &Docker,
    image: &str,
    registry: &str,
    login: Option<&RegistryLogin>,
    log: LogSink,
) -> Result<PushedImage, BuildError> {
    let (repo, tag) = split_tag(image);
    let registry = registry.trim_end_matches('/');
    let target = format!("{registry}/{repo}");
    let reference = format!("{target}:{tag}");
    let fail = |reason: String| BuildError::Push {
        image: reference.clone(),
        reason: one_line(&reason),
    };
    docker
        .tag_image(
            image,
            Some(TagImageOptions {
                repo: Some(target.clone()),
                tag: Some(tag.to_string()),
            }),
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    log(&format!("pushing {reference}"));
    let docker = docker
        .clone()
        .with_timeout(std::time::Duration::from_secs(3600));
    let mut stream = docker.push_image(
        &target,
        Some(PushImageOptions {
            tag: Some(tag.to_string()),
            platform: None,
        }),
        login.map(|l| DockerCredentials {
            username: Some(l.username.clone()),
            password: Some(l.password.clone()),
            serveraddress: Some(registry.to_string()),
            ..Default::default()
        }),
    );
    let mut digest = None;
    let mut last = String::new();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| match e {
            bollard::errors::Error::DockerStreamError { error } => fail(error),
            other => fail(other.to_string()),
        })?;
        if let Some(status) = info.status {
            if let Some(d) = digest_of(&status) {
                digest = Some(d);
            }
            // Progress updates repeat the same status; log each change once.
            if status != last {
                log(&status);
                last = status;
            }
        }
    }
    let digest = digest.ok_or_else(|| fail("the registry returned no digest".into()))?;
    log(&format!("pushed {reference}@{digest}"));
    Ok(PushedImage { reference, digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_digests() {
        assert_eq!(split_tag("berth/shop-web:abc"), ("berth/shop-web", "abc"));
        assert_eq!(split_tag("berth/shop-web"), ("berth/shop-web", "latest"));
        assert_eq!(
            split_tag("127.0.0.1:5000/x"),
            ("127.0.0.1:5000/x", "latest")
        );
        assert_eq!(split_tag("127.0.0.1:5000/x:1"), ("127.0.0.1:5000/x", "1"));
        assert_eq!(
            digest_of("abc: digest: sha256:0123 size: 528").as_deref(),
            Some("sha256:0123")
        );
        assert_eq!(digest_of("Pushed"), None);
    }
}
