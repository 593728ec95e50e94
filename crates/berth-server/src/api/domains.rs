//! Custom domains (004): add a hostname to a service, prove control with a
//! TXT record, then the edge routes it to the service's active deployment
//! (its certificate: `crate::tls`, shown as `certificate` on each domain).

use super::{AppState, Json};
use crate::error::{ApiError, ApiResult};
use crate::ids::now;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use berth_core::api::AddDomain;
use berth_core::api::ErrorBody;
use berth_core::model::{
    verification_name, CertState, CertificateStatus, Domain, DomainVerification, DEFAULT_SERVICE,
    PRODUCTION,
};
use berth_core::{hosts, names};
use rand::RngCore;

/// The project's domains; with DNS-01 configured, first a row for the
/// server's wildcard `*.<base-domain>`, which serves the project's route
/// and preview hostnames (see [`wildcard_row`]).
#[utoipa::path(
    get,
    path = "/projects/{name}/domains",
    operation_id = "domains_list",
    summary = "list custom domains (first the server's DNS-01 wildcard, when configured)",
    params(("name" = String, Path, description = "project name")),
    responses((status = 200, description = "success", body = Vec<Domain>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn list(
    State(s): State<AppState>,
    Path(project): Path<String>,
) -> ApiResult<Json<Vec<Domain>>> {
    s.store.get_project(&project).await?;
    let mut out = Vec::new();
    if let Some(host) = crate::tls::wildcard_host(&s.deployer.cfg) {
        let rec = s.store.get_certificate(&host).await?;
        out.push(wildcard_row(&project, &host, rec.as_ref()));
    }
    out.extend(s.store.list_domains(Some(&project)).await?);
    Ok(Json(out))
}

/// The wildcard's row in a project's domain list: verified (its zone is
/// proven at each order by the DNS-01 record `_acme-challenge.<base>`,
/// which berth writes itself, hence no value to create), no service,
/// environment or target of its own, and its certificate's state (pending
/// until the first attempt has been recorded).
fn wildcard_row(project: &str, host: &str, rec: Option<&berth_store::CertRecord>) -> Domain {
    let certificate = match rec {
        Some(r) => CertificateStatus {
            state: r.state,
            not_after: r.not_after,
            error: r.error.clone(),
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
        },
        None => CertificateStatus {
            state: CertState::Pending,
            ..Default::default()
        },
    };
    Domain {
        hostname: host.to_string(),
        project_name: project.to_string(),
        service_name: String::new(),
        environment_name: String::new(),
        verified: true,
        verified_at: None,
        verification: DomainVerification {
            record_type: "TXT".into(),
            name: crate::tls::dns01::challenge_name(host),
            value: String::new(),
        },
        target: String::new(),
        created_at: rec.map_or_else(now, |r| r.updated_at),
        certificate,
    }
}

#[utoipa::path(
    post,
    path = "/projects/{name}/domains",
    operation_id = "domains_add",
    summary = "attach a custom domain (returns the TXT record to create)",
    params(("name" = String, Path, description = "project name")),
    request_body = AddDomain,
    responses((status = 201, description = "success", body = Domain), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn add(
    State(s): State<AppState>,
    Path(project): Path<String>,
    Json(req): Json<AddDomain>,
) -> ApiResult<impl IntoResponse> {
    s.store.get_project(&project).await?;
    let hostname = names::hostname(&req.hostname)?;
    if hostname.starts_with("*.") {
        return Err(ApiError::bad_request(
            "wildcard domains need a DNS-01 certificate and are not supported yet",
        ));
    }
    let base = s.deployer.cfg.base_domain().to_string();
    if hostname == base || hostname.ends_with(&format!(".{base}")) {
        return Err(ApiError::bad_request(format!(
            "{hostname} is under berth's own base domain {base}"
        )));
    }
    crate::console::host::refuse_console_host(&s.deployer.cfg, &hostname)?;
    if s.store
        .list_external_routes()
        .await?
        .iter()
        .any(|r| r.hostname == hostname)
    {
        return Err(ApiError::conflict(format!(
            "{hostname} is an external route; remove it first"
        )));
    }
    let environment = req.environment.unwrap_or_else(|| PRODUCTION.into());
    let service = req.service.unwrap_or_else(|| DEFAULT_SERVICE.into());
    names::service_name(&service)?;
    s.store.get_environment(&project, &environment).await?;
    let mut token = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut token);
    let d = Domain {
        verification: DomainVerification {
            record_type: "TXT".into(),
            name: verification_name(&hostname),
            value: format!("berth-verify={}", hex::encode(token)),
        },
        target: hosts::route_host(&base, &project, &service, &environment),
        hostname,
        project_name: project,
        service_name: service,
        environment_name: environment,
        verified: false,
        verified_at: None,
        created_at: now(),
        certificate: Default::default(),
    };
    Ok((StatusCode::CREATED, Json(s.store.add_domain(&d).await?)))
}

async fn find(s: &AppState, project: &str, hostname: &str) -> ApiResult<Domain> {
    s.store.get_project(project).await?;
    let h = names::normalize_host(hostname);
    s.store
        .list_domains(Some(project))
        .await?
        .into_iter()
        .find(|d| d.hostname == h)
        .ok_or_else(|| ApiError::not_found(format!("domain {h} is not attached to {project}")))
}

#[utoipa::path(
    post,
    path = "/projects/{name}/domains/{hostname}/verify",
    operation_id = "domains_verify",
    summary = "check the TXT record; a verified domain is routed",
    params(("name" = String, Path, description = "project name"), ("hostname" = String, Path, description = "hostname")),
    responses((status = 200, description = "success", body = Domain), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn verify(
    State(s): State<AppState>,
    Path((project, hostname)): Path<(String, String)>,
) -> ApiResult<Json<Domain>> {
    let d = find(&s, &project, &hostname).await?;
    let found =
        match crate::dns::lookup_txt(&s.deployer.cfg.dns_servers, &d.verification.name).await {
            Ok(found) => found,
            Err(e @ crate::dns::DnsError::NxDomain(_)) => {
                return Err(ApiError::conflict(format!(
                    "TXT record {}: {e}; DNS changes can take a while",
                    d.verification.name
                )))
            }
            Err(e) => return Err(ApiError::new(StatusCode::BAD_GATEWAY, "dns", e.to_string())),
        };
    if !found.iter().any(|v| v.trim() == d.verification.value) {
        return Err(ApiError::conflict(format!(
            "TXT record {} does not hold {:?} yet (found: {}); DNS changes can take a while",
            d.verification.name,
            d.verification.value,
            if found.is_empty() {
                "none".to_string()
            } else {
                found.join(", ")
            }
        )));
    }
    s.store.set_domain_verified(&d.hostname, now()).await?;
    s.deployer.sync_routes().await.map_err(ApiError::internal)?;
    Ok(Json(find(&s, &project, &hostname).await?))
}

#[utoipa::path(
    delete,
    path = "/projects/{name}/domains/{hostname}",
    operation_id = "domains_remove",
    summary = "detach a custom domain",
    params(("name" = String, Path, description = "project name"), ("hostname" = String, Path, description = "hostname")),
    responses((status = 204, description = "success"), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn remove(
    State(s): State<AppState>,
    Path((project, hostname)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let d = find(&s, &project, &hostname).await?;
    s.store.remove_domain(&d.hostname).await?;
    s.deployer.sync_routes().await.map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}
