//! The error of every step of the build pipeline.

/// Why a step failed; every message is one line and free of credentials.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The reference is neither a branch, a tag nor a commit of the repository.
    #[error("ref \"{reference}\" not found in {repo}")]
    RefNotFound { reference: String, repo: String },
    /// The repository could not be read (network, authentication, no such repo).
    #[error("cannot fetch {repo}: {reason}")]
    Unreachable { repo: String, reason: String },
    /// The clone took longer than its timeout.
    #[error("clone of {repo} exceeded its time limit of {secs}s")]
    CloneTimeout { repo: String, secs: u64 },
    /// A git command failed after the fetch.
    #[error("git {step} failed: {reason}")]
    Git { step: String, reason: String },
    /// The checkout cannot be built as it is.
    #[error("analyze failed: {0}")]
    Analyze(String),
    /// The build context could not be read.
    #[error("build context: {0}")]
    Context(String),
    /// The Dockerfile failed (Docker's own message).
    #[error("build failed: {0}")]
    BuildFailed(String),
    #[error("build exceeded its time limit of {secs}s")]
    TimedOut { secs: u64 },
    #[error("build exceeded its memory limit of {limit} (killed with exit code 137)")]
    OutOfMemory { limit: String },
    #[error("build cancelled")]
    Cancelled,
    #[error("push of {image} failed: {reason}")]
    Push { image: String, reason: String },
    /// The Docker Engine API failed.
    #[error("docker: {0}")]
    Docker(String),
    #[error("{0}")]
    Io(String),
}

impl From<bollard::errors::Error> for BuildError {
    fn from(e: bollard::errors::Error) -> Self {
        BuildError::Docker(one_line(&e.to_string()))
    }
}

/// Collapses all whitespace (newlines included) into single spaces.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
