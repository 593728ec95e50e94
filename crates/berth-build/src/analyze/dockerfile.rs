//! A repository's own Dockerfile, used as it is.

use super::{BuildPlan, Context, Provider};
use crate::BuildError;

pub struct DockerfileProvider;

impl DockerfileProvider {
    fn path(cx: &Context<'_>) -> String {
        cx.service
            .dockerfile
            .clone()
            .unwrap_or_else(|| "Dockerfile".to_string())
    }
}

impl Provider for DockerfileProvider {
    fn name(&self) -> &'static str {
        "dockerfile"
    }

    fn priority(&self) -> u8 {
        100
    }

    fn detect(&self, cx: &Context<'_>) -> bool {
        cx.dir.join(Self::path(cx)).is_file()
    }

    fn plan(&self, cx: &Context<'_>) -> Result<BuildPlan, BuildError> {
        let path = Self::path(cx);
        let dockerfile = cx
            .read(&path)
            .ok_or_else(|| BuildError::Analyze(format!("cannot read {path}")))?;
        Ok(BuildPlan {
            provider: self.name().into(),
            framework: None,
            runtime: None,
            port: cx.service.port,
            start_command: cx.service.start_command.clone(),
            dockerfile,
            dockerfile_path: Some(path),
            generated: false,
        })
    }
}
