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
    /// A build secret's id is not a POSIX environment variable name.
    #[error(
        "build secret {0:?} is not a valid name (letters, digits and _, not starting with a digit)"
    )]
    SecretName(String),
    #[error("push of {image} failed: {reason}")]
    Push { image: String, reason: String },
    /// The Docker Engine API failed.
    #[error("docker: {0}")]
    Docker(String),
    #[error("{0}")]
    Io(String),
}

impl BuildError {
    /// The engine lost an image the build was using: a layer the legacy
    /// builder took from its cache was removed (by a clean-up on the same
    /// engine) between the cache hit and its use. Building again is safe.
    pub fn is_lost_cache_layer(&self) -> bool {
        match self {
            BuildError::BuildFailed(m) | BuildError::Docker(m) => {
                let m = m.to_ascii_lowercase();
                m.contains("unable to find image") || m.contains("no such image")
            }
            _ => false,
        }
    }
}

impl BuildError {
    /// The same error with `f` applied to its text (to mask secret values).
    pub(crate) fn map_text(self, f: impl Fn(&str) -> String) -> BuildError {
        use BuildError::*;
        match self {
            RefNotFound { reference, repo } => RefNotFound {
                reference: f(&reference),
                repo: f(&repo),
            },
            Unreachable { repo, reason } => Unreachable {
                repo: f(&repo),
                reason: f(&reason),
            },
            CloneTimeout { repo, secs } => CloneTimeout {
                repo: f(&repo),
                secs,
            },
            Git { step, reason } => Git {
                step: f(&step),
                reason: f(&reason),
            },
            Analyze(m) => Analyze(f(&m)),
            Context(m) => Context(f(&m)),
            BuildFailed(m) => BuildFailed(f(&m)),
            TimedOut { secs } => TimedOut { secs },
            OutOfMemory { limit } => OutOfMemory { limit },
            Cancelled => Cancelled,
            SecretName(m) => SecretName(f(&m)),
            Push { image, reason } => Push {
                image: f(&image),
                reason: f(&reason),
            },
            Docker(m) => Docker(f(&m)),
            Io(m) => Io(f(&m)),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::BuildError;

    #[test]
    fn a_layer_lost_to_a_concurrent_removal_is_recognised() {
        // The legacy builder's words when a cached parent vanished.
        let lost = BuildError::BuildFailed(
            "unable to find image \"sha256:7e8eef02e07bc6afc60d240ad7f60eef46ac00212d6738a37f468b6a32a36d1a\"".into(),
        );
        assert!(lost.is_lost_cache_layer());
        assert!(BuildError::Docker("Error: No such image: sha256:ab".into()).is_lost_cache_layer());
        let broken = BuildError::BuildFailed("COPY failed: file not found: missing-dir".into());
        assert!(!broken.is_lost_cache_layer());
        assert!(!BuildError::TimedOut { secs: 1 }.is_lost_cache_layer());
    }
}
