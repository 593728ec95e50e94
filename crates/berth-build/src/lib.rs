//! berth-build: the build pipeline of berth, from a Git repository to an image.
//!
//! The steps, in the order the server's pipeline calls them:
//! 1. [`clone()`]: fetch exactly one commit with the `git` CLI (shallow when the
//!    remote allows it) into a fresh directory and record its [`CommitInfo`].
//! 2. [`analyze()`]: pick the provider with the highest [`Provider::priority`]
//!    among those that detect the checkout (a Dockerfile always wins) and make a
//!    [`BuildPlan`], the intermediate representation of the build: the provider,
//!    framework, port, start command and the Dockerfile (read or generated).
//! 3. [`cache_key`] / [`image_tag`]: the same tree, plan and build args give the
//!    same tag, so the caller can skip a build whose image already exists.
//! 4. [`build()`]: stream the context (honouring `.dockerignore`) to the Docker
//!    Engine's legacy builder with memory, CPU and time limits; a build with
//!    [`BuildRequest::secrets`] goes to the engine's BuildKit instead, which
//!    hands them to `RUN --mount=type=secret` steps through a session berth
//!    serves (time limit and cancel as for the legacy builder; no memory or
//!    CPU limit there).
//! 5. [`push()`]: tag and push to a registry, returning the digest.
//! 6. [`image_manifest`] / [`output_manifest`]: path, size and sha256 of every
//!    regular file of the output.
//!
//! [`Builder`] is the seam the server's pipeline uses for all of the above
//! (recording fakes in its tests); [`EngineBuilder`] implements it on a
//! Docker Engine.
//!
//! Invariants:
//! - every output line of a step goes to its [`LogSink`] as it happens;
//! - credentials of a repository URL never reach a log line or an error
//!   (they are shown as `***`), and are not written to the checkout's
//!   `.git/config`;
//! - the Docker socket is never mounted or passed into a build, and secrets are
//!   never build args: only the caller's `build_args` (see [`is_public`]) are;
//!   secrets reach a build only as BuildKit secret mounts, which no layer,
//!   build arg or image history holds, and their values are masked in every
//!   line and error of that build;
//! - a build that times out or is cancelled is stopped (the request stream is
//!   dropped, which makes the engine cancel a legacy or BuildKit build);
//! - analysis does no network IO and only reads the checkout.

mod analyze;
mod builder;
mod buildkit;
mod cache;
mod clone;
mod context;
mod dockerignore;
mod error;
mod image;
mod manifest;
mod progress;
mod push;
mod session;
mod vars;

use std::sync::Arc;

pub use analyze::{analyze, AnalyzeOptions, BaseImages, BuildPlan, Provider, GENERATED_DOCKERFILE};
pub use builder::{Builder, EngineBuilder, ImageFacts};
pub use cache::{cache_key, image_tag};
pub use clone::{clone, mask_url, resolve_ref, Checkout, CloneRequest, CommitInfo};
pub use context::write_context;
pub use dockerignore::DockerIgnore;
pub use error::BuildError;
pub use image::{build, BuildLimits, BuildRequest, BuiltImage};
pub use manifest::{
    image_manifest, output_manifest, remove_stale_manifest_containers, Manifest, ManifestEntry,
    ManifestOptions,
};
pub use push::{push, push_with_auth, PushedImage, RegistryLogin};
pub use vars::{is_public, PUBLIC_PREFIXES};

/// Receives every output line of a step, live, without its trailing newline.
pub type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

/// A sink that drops every line.
pub fn null_sink() -> LogSink {
    Arc::new(|_| {})
}
