//! `/healthz` (the process answers) and `/readyz` (it can take mail: the
//! store answers and the relay is not in lockdown), for load balancers and
//! orchestrators. Neither needs credentials, and neither says more than
//! a probe needs.

use super::HttpState;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;

pub fn routes(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, Json<serde_json::Value>) {
    match state.store.lockdown().await {
        Ok(None) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Ok(Some(lockdown)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "lockdown",
                "reason": lockdown.reason,
                "since": lockdown.since,
            })),
        ),
        Err(error) => {
            tracing::warn!(%error, "readiness: the store does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "store_unreachable" })),
            )
        }
    }
}
