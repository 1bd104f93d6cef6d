//! `GET /v1/messages/{id}` (status, recipients, the event history),
//! `GET /v1/messages` (by status, time and tag, with a cursor) and
//! `DELETE /v1/messages/{id}` (cancel what is not delivered yet), and the
//! key check every route begins with.

use super::ApiState;
use super::error::ApiError;
use super::keys::{ApiKey, ApiKeyError, Scope};
use crate::store::{
    ApiListQuery, Event, ListCursor, MessageId, MessageState, QueueAction, QueueSelection,
    QueuedMessage,
};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

/// The key of the request, which must have `scope`, counted as `cells`
/// requests against its rate.
pub(super) async fn authorize(
    state: &ApiState,
    headers: &HeaderMap,
    scope: Scope,
    cells: u32,
) -> Result<ApiKey, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthenticated(ApiKeyError::Missing.to_string()))?;
    let key = match state
        .keys
        .authenticate(state.http.store.as_ref(), presented)
        .await
    {
        Ok(key) => key,
        Err(ApiKeyError::Store(error)) => return Err(error.into()),
        Err(error) => {
            tracing::info!(
                fingerprint = %super::keys::fingerprint(presented),
                "API request with an invalid key"
            );
            return Err(ApiError::Unauthenticated(error.to_string()));
        }
    };
    let allowed = key.has(scope) || (scope == Scope::Read && key.has(Scope::Admin));
    if !allowed {
        return Err(ApiError::MissingScope(scope.as_str()));
    }
    charge(state, &key, cells)?;
    Ok(key)
}

/// Counts `cells` requests against the key's rate; none for 0.
pub(super) fn charge(state: &ApiState, key: &ApiKey, cells: u32) -> Result<(), ApiError> {
    if cells == 0 {
        return Ok(());
    }
    state
        .limits
        .check(key, cells)
        .map_err(|retry_after| ApiError::RateLimited {
            rate: key.rate.map(|r| r.to_string()).unwrap_or_default(),
            retry_after,
        })
}

/// A message this key may see: its own, or any with `admin`.
fn visible(key: &ApiKey, message: &QueuedMessage) -> bool {
    key.has(Scope::Admin) || message.submitted_by == key.submitter()
}

fn summary(message: &QueuedMessage) -> Value {
    json!({
        "id": message.id,
        "status": message.state,
        "account": message.account,
        "from": message.mail_from,
        "submitted_by": message.submitted_by,
        "created_at": message.created_at,
        "next_attempt_at": message.next_attempt_at,
        "attempts": message.attempts,
        "size": message.size,
        "last_error": message.last_error,
        "recipients": message.recipients.iter().map(|r| json!({
            "address": r.address,
            "state": r.state,
            "reply": r.reply,
        })).collect::<Vec<_>>(),
    })
}

fn event(event: &Event) -> Value {
    json!({"at": event.at, "kind": event.kind, "detail": event.detail})
}

pub(super) async fn show(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = authorize(&state, &headers, Scope::Read, 1).await?;
    let store = &state.http.store;
    let id = MessageId(id);
    let message = match store.message(&id).await? {
        Some((message, _)) if visible(&key, &message) => message,
        _ => return Err(ApiError::NotFound(id.0)),
    };
    let tags = store.message_tags(&id).await?;
    let mut events = vec![json!({
        "at": message.created_at,
        "kind": "queued",
        "detail": format!("accepted from {} for {} recipient(s)", message.submitted_by, message.recipients.len()),
    })];
    events.extend(
        store
            .message_events(&id)
            .await?
            .iter()
            .map(|stored| event(&stored.event)),
    );
    let mut body = summary(&message);
    body["tags"] = json!(tags);
    body["events"] = Value::Array(events);
    Ok(axum::Json(body).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    status: Option<String>,
    /// Unix seconds or RFC 3339.
    since: Option<String>,
    tag: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// A page holds at most this many messages.
const MAX_PAGE: u32 = 100;
const DEFAULT_PAGE: u32 = 50;

fn encode_cursor(cursor: &ListCursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}:{}", cursor.created_at, cursor.id.0))
}

fn decode_cursor(text: &str) -> Result<ListCursor, ApiError> {
    let bad = || {
        ApiError::Invalid(
            "cursor is not one this API gave; pass next_cursor from the previous page".into(),
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (at, id) = text.split_once(':').ok_or_else(bad)?;
    Ok(ListCursor {
        created_at: at.parse().map_err(|_| bad())?,
        id: MessageId(id.to_string()),
    })
}

fn parse_since(text: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp())
        .map_err(|_| {
            ApiError::Invalid(format!(
                "since {text:?} is neither Unix seconds nor an RFC 3339 time (2026-12-02T09:00:00Z)"
            ))
        })
}

pub(super) async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let key = authorize(&state, &headers, Scope::Read, 1).await?;
    let Query(params) = params.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let state_filter = params
        .status
        .as_deref()
        .map(|s| {
            MessageState::parse(s).ok_or_else(|| {
                ApiError::Invalid(format!(
                    "status {s:?} is not a message state; use queued, in_flight, deferred, delivered, bounced, expired or held"
                ))
            })
        })
        .transpose()?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::Invalid(format!(
            "limit {limit} is out of range; a page holds 1 to {MAX_PAGE} messages"
        )));
    }
    if let Some(tag) = &params.tag {
        super::compose::check_tags(std::slice::from_ref(tag))?;
    }
    let query = ApiListQuery {
        state: state_filter,
        since: params.since.as_deref().map(parse_since).transpose()?,
        submitted_by: (!key.has(Scope::Admin)).then(|| key.submitter()),
        tag: params.tag.map(|tag| (key.id.clone(), tag)),
    };
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let page = state
        .http
        .store
        .api_list_messages(&query, after.as_ref(), limit)
        .await?;
    let next_cursor = (page.len() == limit as usize)
        .then(|| page.last().map(|row| encode_cursor(&row.cursor)))
        .flatten();
    let messages: Vec<Value> = page.iter().map(|row| summary(&row.message)).collect();
    Ok(axum::Json(json!({"messages": messages, "next_cursor": next_cursor})).into_response())
}

pub(super) async fn cancel(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // The sender may cancel its own messages; admin any.
    let key = match authorize(&state, &headers, Scope::Send, 1).await {
        Err(ApiError::MissingScope(_)) => authorize(&state, &headers, Scope::Admin, 0).await?,
        other => other?,
    };
    let store = &state.http.store;
    let id = MessageId(id);
    let message = match store.message(&id).await? {
        Some((message, _)) if visible(&key, &message) => message,
        _ => return Err(ApiError::NotFound(id.0)),
    };
    match message.state {
        MessageState::Queued | MessageState::Deferred | MessageState::Held => {}
        MessageState::InFlight => return Err(in_flight(&id)),
        done => {
            return Err(ApiError::Conflict(format!(
                "message {id} is already {done}; there is nothing left to cancel"
            )));
        }
    }
    let outcome = store
        .queue_batch(
            QueueAction::Delete,
            &QueueSelection::Ids(vec![id.clone()]),
            None,
            1,
            crate::clock::now_unix(),
            false,
        )
        .await?;
    if outcome.affected.is_empty() {
        // A worker claimed it between the read and the delete.
        return Err(in_flight(&id));
    }
    if let Err(error) = store.untag_message(&id).await {
        tracing::warn!(%error, %id, "cannot remove the tags of a cancelled message");
    }
    let detail = format!("cancelled through the API by key {}", key.name);
    let recorded = store
        .record_event(&Event {
            at: crate::clock::now_unix(),
            kind: "message.cancelled".into(),
            account: Some(message.account.clone()),
            message_id: Some(id.clone()),
            detail: detail.clone(),
        })
        .await;
    if let Err(error) = recorded {
        tracing::warn!(%error, %id, "cannot record the cancellation event");
    }
    state
        .http
        .broker
        .audit(
            "api.cancelled",
            Some(&message.account),
            &format!("{id}: {detail}"),
        )
        .await;
    Ok((
        StatusCode::OK,
        axum::Json(json!({"id": id, "status": "cancelled"})),
    )
        .into_response())
}

fn in_flight(id: &MessageId) -> ApiError {
    ApiError::Conflict(format!(
        "message {id} is being delivered right now and cannot be cancelled; look at it again when the attempt ends"
    ))
}
