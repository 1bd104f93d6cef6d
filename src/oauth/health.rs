//! Regular validation of an account's grant, so a dead grant is found by a
//! check, not by a delivery: a JWT access token is checked locally (JWKS
//! signature, expiry, audience, scope) when the account names its audience;
//! then introspection (RFC 7662) where the provider offers it, also for a
//! public client where the provider lets one introspect; otherwise a real
//! SMTP AUTH followed by QUIT (the one check every provider supports;
//! Microsoft's and Google's access tokens are not meant to be validated by
//! clients). A token the check finds dead is dropped and a fresh one is
//! tried, which moves a withdrawn consent to `NeedsConsent` with
//! instructions.
//!
//! Only an answer about the token is a verdict. An introspection endpoint
//! that declines the request (`unsupported_token_type` for JWTs, a client
//! it does not let introspect) or cannot be reached says nothing about the
//! token: the local check's verdict stands, or the SMTP check decides.

use crate::oauth::broker::{AccessToken, Broker, BrokerError};
use crate::oauth::validate::{IntrospectionClient, introspect};
use crate::store::Event;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckMethod {
    /// Signature via JWKS, expiry, audience and scope, checked locally.
    Jwt,
    Introspection,
    SmtpAuth,
    /// Only that the token endpoint issued a token (HTTP transports without
    /// introspection or a local JWT check).
    Issued,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub account: String,
    pub healthy: bool,
    pub method: Option<CheckMethod>,
    pub detail: String,
    pub checked_at: i64,
}

/// What one probe found: the method that decided, its verdict, and why
/// an earlier method did not decide (if one did not).
struct Verdict {
    method: CheckMethod,
    outcome: Result<(), String>,
    note: Option<String>,
}

/// Whether `token` is accepted where it will be used.
async fn probe(broker: &Broker, name: &str, token: &AccessToken) -> Result<Verdict, BrokerError> {
    let endpoints = broker.endpoints(name).await?;
    let account = broker
        .account(name)
        .ok_or_else(|| BrokerError::UnknownAccount(name.to_string()))?;
    let decided = |method, outcome, note| {
        Ok(Verdict {
            method,
            outcome,
            note,
        })
    };
    // A JWT is checked locally first (it cannot show a revocation, so the
    // provider is still asked below when it can be).
    let looks_like_jwt = token.secret.expose().split('.').count() == 3;
    let mut local_check_passed = false;
    if let (true, Some(jwks), Some(audience), Some(issuer)) = (
        looks_like_jwt,
        &endpoints.jwks,
        &account.audience,
        &account.issuer,
    ) {
        let validator = crate::oauth::validate::JwtValidator::new(
            jwks.clone(),
            issuer.as_str().trim_end_matches('/').to_string(),
            audience.clone(),
            broker.http(name)?,
        );
        match validator.validate(&token.secret).await {
            Ok(claims) => {
                let missing: Vec<&String> = account
                    .scopes
                    .iter()
                    .filter(|s| *s != "offline_access" && !claims.has_scope(s))
                    .collect();
                if !missing.is_empty() {
                    return decided(
                        CheckMethod::Jwt,
                        Err(format!("the token lacks the scope {missing:?}")),
                        None,
                    );
                }
                local_check_passed = true;
            }
            // Keys unreachable for now: the other checks still run.
            Err(e) if e.is_transient() => {}
            Err(e) => {
                return decided(
                    CheckMethod::Jwt,
                    Err(format!("the token fails the JWT check: {e}")),
                    None,
                );
            }
        }
    }
    let mut note = None;
    if let Some(url) = &endpoints.introspect {
        let http = broker.http(name)?;
        // The account's own client, authenticated as at the token endpoint;
        // a public client sends its client_id alone.
        let client = broker.token_endpoint(name).await?;
        match introspect(
            &http,
            url,
            IntrospectionClient::from(&client),
            &token.secret,
        )
        .await
        {
            Ok(answer) if answer.active => {
                return decided(CheckMethod::Introspection, Ok(()), None);
            }
            Ok(_) => {
                return decided(
                    CheckMethod::Introspection,
                    Err(
                        "the provider says the token is no longer active (revoked or expired)"
                            .to_string(),
                    ),
                    None,
                );
            }
            // No verdict on the token: fall back to what else can tell.
            Err(e) => note = Some(e.to_string()),
        }
    }
    if local_check_passed {
        return decided(CheckMethod::Jwt, Ok(()), note);
    }
    if let Some(api) = &account.api {
        // An HTTP transport's token would fail SMTP AUTH by design (it has
        // no SMTP scope), and neither Graph nor Gmail has an endpoint that
        // judges a Mail.Send / gmail.send token without sending mail. The
        // token was issued; the next delivery is the API's verdict, and a
        // refusal there goes through contract 4 as over SMTP.
        let skipped = format!(
            "{} has no endpoint that checks a send-only token without sending; deliveries will tell{}",
            api.preset.title,
            note.map(|n| format!(" ({n})")).unwrap_or_default()
        );
        return decided(CheckMethod::Issued, Ok(()), Some(skipped));
    }
    let outcome = match crate::delivery::upstream::probe_auth(account, token).await {
        Ok(()) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    decided(CheckMethod::SmtpAuth, outcome, note)
}

/// The report's words for a token that passed, with why a method was skipped.
fn accepted(token: &AccessToken, note: Option<&str>) -> String {
    match note {
        Some(note) => format!("token {} accepted ({note})", token.fingerprint()),
        None => format!("token {} accepted", token.fingerprint()),
    }
}

/// Checks one account, records the result as an event, and returns it.
pub async fn check_account(broker: &Broker, name: &str) -> HealthReport {
    let checked_at = crate::clock::now_unix();
    let report = |healthy, method, detail: String| HealthReport {
        account: name.to_string(),
        healthy,
        method,
        detail,
        checked_at,
    };
    let result = async {
        let token = broker.access_token(name).await?;
        let first = probe(broker, name, &token).await?;
        if let Err(reason) = first.outcome {
            // Drop the refused token and try once with a fresh one: a dead
            // grant shows up here as invalid_grant → NeedsConsent.
            broker.invalidate(name, &token).await?;
            let fresh = broker.access_token(name).await?;
            let again = probe(broker, name, &fresh).await?;
            return Ok::<_, BrokerError>(match again.outcome {
                Ok(()) => report(
                    true,
                    Some(again.method),
                    format!("the old token was refused ({reason}); a fresh one works"),
                ),
                Err(refused) => {
                    broker
                        .report_upstream_rejection(name, &fresh, &format!("validation: {refused}"))
                        .await?;
                    report(false, Some(again.method), refused)
                }
            });
        }
        Ok(report(
            true,
            Some(first.method),
            accepted(&token, first.note.as_deref()),
        ))
    }
    .await;
    let report = result.unwrap_or_else(|error| report(false, None, error.to_string()));
    let event = Event {
        at: checked_at,
        kind: if report.healthy {
            "account.validated"
        } else {
            "account.validation_failed"
        }
        .to_string(),
        account: Some(name.to_string()),
        message_id: None,
        detail: report.detail.clone(),
    };
    if let Err(e) = broker.store().record_event(&event).await {
        tracing::error!(error = %e, "cannot record the validation result");
    }
    if !report.healthy {
        tracing::warn!(account = %name, "validation failed: {}", report.detail);
    }
    report
}
