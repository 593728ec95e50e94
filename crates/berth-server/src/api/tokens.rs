//! API tokens: create (the token is shown once), list (never the token),
//! revoke. Only an admin token for every project may call these
//! ([`crate::access::RULES`]).

use super::{AppState, Json};
use crate::access::{digest, random_secret};
use crate::error::{ApiError, ApiResult};
use crate::ids::now;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use berth_core::access::{token_name, CreateToken, CreatedToken, TokenInfo};
use berth_core::api::ErrorBody;
use berth_store::TokenRecord;

/// Every token starts with this (so a leaked one is recognizable).
pub const TOKEN_PREFIX: &str = "berth_t_";

#[utoipa::path(
    post,
    path = "/tokens",
    operation_id = "tokens_create",
    summary = "create an API token (role admin, deployer or viewer; optionally one project and an expiry); the token is in this answer only",
    request_body = CreateToken,
    responses((status = 201, description = "success", body = CreatedToken), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn create(
    State(s): State<AppState>,
    Json(req): Json<CreateToken>,
) -> ApiResult<impl IntoResponse> {
    token_name(&req.name).map_err(ApiError::bad_request)?;
    if let Some(p) = &req.project {
        s.store.get_project(p).await?;
    }
    let created_at = now();
    let expires_at = match req.expires.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(e) => {
            let d = berth_core::units::parse_duration(e)
                .map_err(|err| ApiError::bad_request(format!("expires: {err}")))?;
            if d.is_zero() {
                return Err(ApiError::bad_request(
                    "expires must be longer than 0 (leave it out for a token that lives until revoked)",
                ));
            }
            let d = chrono::Duration::from_std(d)
                .ok()
                .filter(|d| *d <= chrono::Duration::days(3650))
                .ok_or_else(|| ApiError::bad_request("expires must be at most 3650d"))?;
            Some(created_at + d)
        }
    };
    let token = random_secret(TOKEN_PREFIX);
    let info = TokenInfo {
        name: req.name,
        role: req.role,
        project: req.project,
        created_at,
        expires_at,
        last_used_at: None,
        revoked_at: None,
    };
    s.store
        .create_token(&TokenRecord {
            info: info.clone(),
            hash: digest(&token),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { info, token })))
}

#[utoipa::path(
    get,
    path = "/tokens",
    operation_id = "tokens_list",
    summary = "list API tokens: name, role, project, expiresAt, lastUsedAt (never the token; admin)",
    responses((status = 200, description = "success", body = Vec<TokenInfo>), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<TokenInfo>>> {
    Ok(Json(s.store.list_tokens().await?))
}

#[utoipa::path(
    delete,
    path = "/tokens/{name}",
    operation_id = "tokens_revoke",
    summary = "revoke an API token (effective at its next request, open log streams included)",
    params(("name" = String, Path, description = "token name")),
    responses((status = 200, description = "success", body = TokenInfo), (status = "default", description = "error", body = ErrorBody))
)]
pub async fn revoke(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TokenInfo>> {
    let t = s.store.revoke_token(&name, now()).await?;
    // Console sessions signed in with it stop at their next request (the
    // guard checks the token behind a session every time).
    Ok(Json(t))
}
