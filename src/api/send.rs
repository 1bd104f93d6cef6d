//! `POST /v1/messages`, `/v1/messages/raw` and `/v1/messages/batch`: each
//! translates its request into a [`Submission`] for the one acceptance
//! path, and answers 202 with the id only after it returns (contract 1).

use super::compose::{BatchRequest, Composed, MessageRequest, RawRequest};
use super::error::ApiError;
use super::idempotency::{self, Claim};
use super::keys::{ApiKey, Scope};
use super::{ApiState, messages};
use crate::http::PeerAddr;
use crate::store::MessageId;
use crate::submit::{AcceptError, Refused, Submission};
use crate::users::SubmissionUser;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Messages one batch may hold.
pub const MAX_BATCH: usize = 100;

/// An answer, as sent and as remembered under an Idempotency-Key.
struct Answer {
    status: StatusCode,
    body: Value,
    /// False for an answer a retry may change (the store failed).
    remember: bool,
}

impl Answer {
    fn error(error: &ApiError) -> Answer {
        Answer {
            status: error.status(),
            body: error.body(),
            remember: !error.is_transient(),
        }
    }

    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

pub(super) async fn read_body(body: Body, max: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, max).await.map_err(|error| {
        let too_large = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::BodyTooLarge { size: max + 1, max }
        } else {
            ApiError::MalformedJson(format!("the body could not be read: {error}"))
        }
    })
}

pub(super) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

fn accepted(id: &MessageId) -> Value {
    json!({"id": id, "status": "queued"})
}

pub(super) async fn structured(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let key = match messages::authorize(&state, &headers, Scope::Send, 1).await {
        Ok(key) => key,
        Err(error) => return error.into_response(),
    };
    let bytes = match read_body(body, state.max_body()).await {
        Ok(bytes) => bytes,
        Err(error) => return error.into_response(),
    };
    let request: MessageRequest = match parse(&bytes) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    idempotent(
        &state,
        &key,
        &headers,
        "messages",
        &bytes,
        1,
        |ids, recovering| {
            let state = state.clone();
            let key = key.clone();
            async move {
                let id = ids.into_iter().next().unwrap_or_else(MessageId::generate);
                single(submit_structured(&state, &key, &request, id, recovering, peer).await)
            }
        },
    )
    .await
}

pub(super) async fn raw(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let key = match messages::authorize(&state, &headers, Scope::Send, 1).await {
        Ok(key) => key,
        Err(error) => return error.into_response(),
    };
    let bytes = match read_body(body, state.max_body()).await {
        Ok(bytes) => bytes,
        Err(error) => return error.into_response(),
    };
    let request: RawRequest = match parse(&bytes) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    idempotent(
        &state,
        &key,
        &headers,
        "raw",
        &bytes,
        1,
        |ids, recovering| {
            let state = state.clone();
            let key = key.clone();
            async move {
                let id = ids.into_iter().next().unwrap_or_else(MessageId::generate);
                let result = match request.compose(state.max_message_size) {
                    Ok(composed) => submit(&state, &key, composed, id, recovering, peer).await,
                    Err(error) => Err(error),
                };
                single(result)
            }
        },
    )
    .await
}

pub(super) async fn batch(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The key first (401/403 before anything about the body); its rate
    // once the batch's size is known.
    let key = match messages::authorize(&state, &headers, Scope::Send, 0).await {
        Ok(key) => key,
        Err(error) => return error.into_response(),
    };
    let bytes = match read_body(body, state.max_batch_body()).await {
        Ok(bytes) => bytes,
        Err(error) => return error.into_response(),
    };
    let request: BatchRequest = match parse(&bytes) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    if request.messages.is_empty() || request.messages.len() > MAX_BATCH {
        return ApiError::Invalid(format!(
            "a batch holds 1 to {MAX_BATCH} messages; this one has {}",
            request.messages.len()
        ))
        .into_response();
    }
    let count = request.messages.len();
    // Each message of a batch counts against the key's rate.
    if let Err(error) = messages::charge(&state, &key, count as u32) {
        return error.into_response();
    }
    idempotent(&state, &key, &headers, "batch", &bytes, count, |ids, recovering| {
        let state = state.clone();
        let key = key.clone();
        async move {
            // Concurrently, so that the batch's messages share group commits.
            let mut tasks = tokio::task::JoinSet::new();
            for (index, (item, id)) in request.messages.into_iter().zip(ids).enumerate() {
                let state = state.clone();
                let key = key.clone();
                tasks.spawn(async move {
                    let result = match serde_json::from_value::<MessageRequest>(item) {
                        Ok(request) => {
                            submit_structured(&state, &key, &request, id, recovering, peer).await
                        }
                        Err(e) => Err(ApiError::MalformedJson(e.to_string())),
                    };
                    (index, result)
                });
            }
            let mut results: Vec<Value> = vec![Value::Null; count];
            let mut remember = true;
            while let Some(joined) = tasks.join_next().await {
                let (index, result) = match joined {
                    Ok(done) => done,
                    // A panicked item: its slot stays as an error below.
                    Err(_) => continue,
                };
                results[index] = match result {
                    Ok(id) => json!({"index": index, "status": 202, "id": id}),
                    Err(error) => {
                        remember &= !error.is_transient();
                        json!({"index": index, "status": error.status().as_u16(), "error": error.body()["error"]})
                    }
                };
            }
            for (index, slot) in results.iter_mut().enumerate() {
                if slot.is_null() {
                    remember = false;
                    let error = ApiError::Unavailable("the message's task failed".into());
                    *slot = json!({"index": index, "status": error.status().as_u16(), "error": error.body()["error"]});
                }
            }
            Answer {
                status: StatusCode::OK,
                body: json!({"results": results}),
                remember,
            }
        }
    })
    .await
}

fn single(result: Result<MessageId, ApiError>) -> Answer {
    match result {
        Ok(id) => Answer {
            status: StatusCode::ACCEPTED,
            body: accepted(&id),
            remember: true,
        },
        Err(error) => Answer::error(&error),
    }
}

/// Runs `run` under the request's Idempotency-Key, if it has one, with
/// `count` message ids to queue under.
async fn idempotent<F, Fut>(
    state: &ApiState,
    key: &ApiKey,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    count: usize,
    run: F,
) -> Response
where
    F: FnOnce(Vec<MessageId>, bool) -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let fresh: Vec<MessageId> = (0..count).map(|_| MessageId::generate()).collect();
    let Some(value) = headers.get("idempotency-key") else {
        return run(fresh, false).await.into_response();
    };
    let Some(idempotency_key) = value.to_str().ok().filter(|k| idempotency::valid_key(k)) else {
        return ApiError::Invalid(format!(
            "the Idempotency-Key must be 1 to {} printable ASCII characters (a UUID is a good choice)",
            idempotency::MAX_KEY_LEN
        ))
        .into_response();
    };
    // Duplicates in this process wait here for the first to finish.
    let lock = state.local.get(&format!("{}/{idempotency_key}", key.id));
    let _guard = lock.lock().await;
    let store = state.http.store.as_ref();
    let hash = idempotency::request_hash(route, body);
    let claim = match idempotency::claim(store, &key.id, idempotency_key, &hash, fresh).await {
        Ok(claim) => claim,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let (ids, recovering) = match claim {
        Claim::Go { ids, recovering } => (ids, recovering),
        Claim::Answered { status, response } => return replay(status, &response),
        Claim::Mismatch => return ApiError::IdempotencyMismatch.into_response(),
        Claim::InProgress => return ApiError::IdempotencyInProgress.into_response(),
    };
    let answer = run(ids, recovering).await;
    let stored = if answer.remember {
        store
            .idempotency_finish(
                &key.id,
                idempotency_key,
                answer.status.as_u16(),
                &answer.body.to_string(),
            )
            .await
    } else {
        store.idempotency_forget(&key.id, idempotency_key).await
    };
    if let Err(error) = stored {
        // The messages are queued and the answer is right; a retry will
        // find the claim stale and answer from the queue.
        tracing::error!(%error, "cannot record the answer to an idempotent request");
    }
    answer.into_response()
}

fn replay(status: u16, response: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let body: Value = serde_json::from_str(response).unwrap_or(Value::Null);
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

async fn submit_structured(
    state: &ApiState,
    key: &ApiKey,
    request: &MessageRequest,
    id: MessageId,
    recovering: bool,
    peer: PeerAddr,
) -> Result<MessageId, ApiError> {
    let composed = match request.compose(&id, state.max_message_size) {
        Ok(composed) => composed,
        Err(error) => {
            refused(state, key, request.account.as_deref(), &error).await;
            return Err(error);
        }
    };
    submit(state, key, composed, id, recovering, peer).await
}

/// Which account carries the message: the one asked for, if the key may
/// use it, else the key's first.
fn account_for(state: &ApiState, key: &ApiKey, asked: Option<&str>) -> Result<String, ApiError> {
    let account = match asked {
        Some(asked) => key
            .accounts
            .iter()
            .find(|a| a.as_str() == asked)
            .cloned()
            .ok_or_else(|| {
                ApiError::Forbidden(format!(
                    "this key may not send through account {asked}; it may use {}",
                    key.accounts.join(", ")
                ))
            })?,
        None => key.accounts.first().cloned().ok_or_else(|| {
            ApiError::Forbidden(
                "this key has no account to send through; make a key with --account".into(),
            )
        })?,
    };
    if !state.http.config.accounts.iter().any(|a| a.name == account) {
        return Err(ApiError::Invalid(format!(
            "the relay has no account {account} (it is not in the config any more); ask the operator"
        )));
    }
    Ok(account)
}

async fn submit(
    state: &ApiState,
    key: &ApiKey,
    composed: Composed,
    id: MessageId,
    recovering: bool,
    peer: PeerAddr,
) -> Result<MessageId, ApiError> {
    let result = submit_checked(state, key, &composed, id, recovering, peer).await;
    if let Err(error) = &result {
        refused(state, key, composed.account.as_deref(), error).await;
    }
    result
}

async fn submit_checked(
    state: &ApiState,
    key: &ApiKey,
    composed: &Composed,
    id: MessageId,
    recovering: bool,
    peer: PeerAddr,
) -> Result<MessageId, ApiError> {
    let account = account_for(state, key, composed.account.as_deref())?;
    let store = &state.http.store;
    if recovering && store.message(&id).await?.is_some() {
        // Queued by the request whose claim this one took over.
        return Ok(id);
    }
    let submitter = SubmissionUser {
        name: key.submitter(),
        password_hash: String::new(),
        allowed_from: key.allowed_from.clone(),
        account,
        source: "api",
        // A structured message's From is the sender checked below, as
        // compose wrote it: reading the headers back would check it again
        // (and was a visible part of the API's CPU per message).
        header_from_checked: !composed.from_is_sender,
    };
    // The sender first, so that nothing (tags) is written for a message
    // the key may not send; `accept` checks it again with the rest.
    if !submitter.may_send_as(&composed.mail_from) {
        return Err(refusal(
            Refused::Sender {
                user: submitter.name.clone(),
                sender: composed.mail_from.clone(),
            },
            key,
        ));
    }
    if !composed.tags.is_empty() {
        store
            .tag_message(&key.id, &id, &composed.tags, crate::clock::now_unix())
            .await?;
    }
    let trace = trace_header(
        peer,
        state
            .http
            .config
            .http
            .as_ref()
            .is_some_and(|h| h.cert.is_some()),
    );
    let accepted = state
        .acceptance
        .accept(Submission {
            submitter: &submitter,
            mail_from: &composed.mail_from,
            recipients: &composed.recipients,
            trace: &trace,
            message: &composed.bytes,
            id: Some(id.clone()),
        })
        .await;
    match accepted {
        Ok(id) => Ok(id),
        Err(error) => {
            if !composed.tags.is_empty()
                && let Err(e) = store.untag_message(&id).await
            {
                tracing::warn!(error = %e, %id, "cannot remove the tags of a refused message");
            }
            Err(match error {
                AcceptError::Refused(refused) => refusal(refused, key),
                AcceptError::Store(error) => error.into(),
            })
        }
    }
}

fn refusal(refused: Refused, key: &ApiKey) -> ApiError {
    match refused {
        Refused::Sender { sender, .. } => ApiError::Forbidden(format!(
            "this key may not send as <{sender}>; it may send as {}",
            key.allowed_from.join(", ")
        )),
        Refused::HeaderFrom { from, .. } => ApiError::Forbidden(format!(
            "the header From <{from}> is not one this key may send as ({})",
            key.allowed_from.join(", ")
        )),
        Refused::TooBig { .. } => ApiError::TooLarge(refused.to_string()),
        Refused::TooManyRecipients { .. } => ApiError::Refused(refused.to_string()),
        Refused::NoRecipients
        | Refused::BareLineEnding { .. }
        | Refused::Nul { .. }
        | Refused::LineTooLong { .. } => ApiError::Invalid(refused.to_string()),
    }
}

/// The audit line of a refused submission, as the SMTP side writes one
/// through the broker; a store failure is not a refusal.
async fn refused(state: &ApiState, key: &ApiKey, account: Option<&str>, error: &ApiError) {
    if error.is_transient() {
        return;
    }
    tracing::info!(key = %key.name, code = error.code(), %error, "API submission refused");
    state
        .http
        .broker
        .audit(
            "api.refused",
            account,
            &format!("key {}: {}: {error}", key.name, error.code()),
        )
        .await;
}

/// The `Received:` header of a message submitted over HTTP(S).
fn trace_header(peer: PeerAddr, https: bool) -> String {
    crate::submit::received::http_received_header(
        peer.0.ip(),
        https,
        &crate::delivery::upstream::ehlo_name(),
        chrono::Utc::now(),
    )
}
