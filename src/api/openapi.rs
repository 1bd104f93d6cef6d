//! `GET /v1/openapi.json`: the API's OpenAPI 3.1 document, written by hand
//! next to the routes it describes (a test checks that every path and
//! method in it is a route that answers, and validates real requests and
//! answers against its schemas).

use axum::http::header;
use axum::response::IntoResponse;

pub const DOCUMENT: &str = include_str!("openapi.json");

pub(super) async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
