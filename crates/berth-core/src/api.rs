//! Request and response bodies of the HTTP API under `/api/v1` that are
//! not records of [`crate::model`]. The CLI and the server share them.

use crate::model::{Environment, Project};
use serde::{Deserialize, Serialize};

/// Every error the API returns: `{"error": code, "message": text}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// `POST /api/v1/projects`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
    pub repo: String,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub webhook_secret: Option<String>,
    #[serde(default)]
    pub retain_images: Option<u32>,
    /// An SSH private key (OpenSSH PEM) for cloning `repo`; stored sealed.
    #[serde(default)]
    pub deploy_key: Option<String>,
}

/// `PATCH /api/v1/projects/{name}`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateProject {
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub webhook_secret: Option<String>,
    #[serde(default)]
    pub retain_images: Option<u32>,
    /// A new SSH deploy key; an empty string removes the stored one.
    #[serde(default)]
    pub deploy_key: Option<String>,
}

/// One service of a project in one environment, as `projects show` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSummary {
    pub name: String,
    pub environment_name: String,
    pub active_deployment_id: Option<String>,
    pub route_url: Option<String>,
    pub status: Option<String>,
    pub health: Option<String>,
}

/// `GET /api/v1/projects/{name}`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectDetail {
    #[serde(flatten)]
    pub project: Project,
    pub environments: Vec<Environment>,
    pub services: Vec<ServiceSummary>,
}

/// `POST /api/v1/projects/{name}/environments`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateEnvironment {
    pub name: String,
    #[serde(default)]
    pub branch: Option<String>,
}

/// `PUT /api/v1/projects/{p}/environments/{e}/variables/{key}`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetVariable {
    pub value: String,
    #[serde(default)]
    pub secret: bool,
    /// Available to builds (see [`crate::model::Variable::build`]).
    #[serde(default)]
    pub build: bool,
}

/// `POST /api/v1/deployments`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateDeployment {
    pub project: String,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    /// Branch, tag or commit SHA; the environment's branch when absent.
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
}

/// `POST /api/v1/rollback`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollback {
    pub project: String,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
}

/// `POST /api/v1/routes`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddRoute {
    pub hostname: String,
    pub upstream: String,
}

/// `POST /api/v1/projects/{p}/domains`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddDomain {
    pub hostname: String,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
}
