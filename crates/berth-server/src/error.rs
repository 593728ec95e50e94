//! `ApiError`: every error the HTTP API returns, as
//! `{"error": code, "message": text}` with a fitting status. The detail of
//! internal errors is logged; clients get a safe message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_core::api::ErrorBody;
use berth_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        )
    }
    /// 503: a dependency (the database) is unreachable; retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StoreError::Conflict { .. } | StoreError::Stale { .. } => {
                ApiError::conflict(e.to_string())
            }
            StoreError::Invalid(m) => ApiError::bad_request(m),
            StoreError::Backend(_) => ApiError::internal(e),
            StoreError::Unavailable(m) => ApiError::unavailable(format!(
                "{m}; berth cannot answer this until the database is back (apps keep being served)"
            )),
            StoreError::Fenced { .. } => ApiError::unavailable(e.to_string()),
        }
    }
}

impl From<berth_core::names::NameError> for ApiError {
    fn from(e: berth_core::names::NameError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            message: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
