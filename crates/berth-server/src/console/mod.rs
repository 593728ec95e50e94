//! The web console (placeholder: being written).

use crate::api::AppState;
use axum::http::HeaderMap;
use axum::Router;

/// Console sign-in sessions.
#[derive(Default)]
pub struct Sessions {}

/// Whether the request carries a valid console session cookie (GET/HEAD
/// requests of the API accept it, so the console can read and follow logs).
pub fn authorized(_state: &AppState, _headers: &HeaderMap) -> bool {
    false
}

/// The console's routes, mounted at `/` of the API listener.
pub fn router() -> Router<AppState> {
    Router::new()
}
