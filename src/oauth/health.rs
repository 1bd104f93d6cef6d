//! Regular validation of an account's grant, so a dead grant is found by a
//! check, not by a delivery: introspection (RFC 7662) where the provider
//! offers it, otherwise a real SMTP AUTH followed by QUIT (the one check
//! every provider supports; Microsoft's and Google's access tokens are not
//! meant to be validated by clients). A token the check finds dead is
//! dropped and a fresh one is tried, which moves a withdrawn consent to
//! `NeedsConsent` with instructions.

use crate::oauth::broker::{AccessToken, Broker, BrokerError};
use crate::oauth::validate::introspect;
use crate::store::Event;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckMethod {
    /// Signature via JWKS, expiry, audience and scope, checked locally.
    Jwt,
    Introspection,
    SmtpAuth,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub account: String,
    pub healthy: bool,
    pub method: Option<CheckMethod>,
    pub detail: String,
    pub checked_at: i64,
}

/// Whether `token` is accepted where it will be used.
async fn probe(
    broker: &Broker,
    name: &str,
    token: &AccessToken,
) -> Result<(CheckMethod, Result<(), String>), BrokerError> {
    let endpoints = broker.endpoints(name).await?;
    let account = broker
        .account(name)
        .ok_or_else(|| BrokerError::UnknownAccount(name.to_string()))?;
    // A JWT is checked locally first (it cannot show a revocation, so the
    // provider is still asked below when it can be).
    let looks_like_jwt = token.secret.expose().split('.').count() == 3;
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
                    return Ok((
                        CheckMethod::Jwt,
                        Err(format!("the token lacks the scope {missing:?}")),
                    ));
                }
            }
            // Keys unreachable for now: the other checks still run.
            Err(e) if e.is_transient() => {}
            Err(e) => {
                return Ok((
                    CheckMethod::Jwt,
                    Err(format!("the token fails the JWT check: {e}")),
                ));
            }
        }
        if endpoints.introspect.is_none() {
            return Ok((CheckMethod::Jwt, Ok(())));
        }
    }
    if let (Some(url), Some(secret)) = (&endpoints.introspect, &account.client_secret) {
        let http = broker.http(name)?;
        let verdict = match introspect(&http, url, &account.client_id, secret, &token.secret).await
        {
            Ok(result) if result.active => Ok(()),
            Ok(_) => Err(
                "the provider says the token is no longer active (revoked or expired)".to_string(),
            ),
            Err(e) if e.is_transient() => {
                return Ok((
                    CheckMethod::Introspection,
                    Err(format!("introspection unavailable: {e}")),
                ));
            }
            Err(e) => Err(format!("introspection failed: {e}")),
        };
        return Ok((CheckMethod::Introspection, verdict));
    }
    let verdict = match crate::delivery::upstream::probe_auth(account, token).await {
        Ok(()) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    Ok((CheckMethod::SmtpAuth, verdict))
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
        let (method, verdict) = probe(broker, name, &token).await?;
        if let Err(reason) = verdict {
            // Drop the refused token and try once with a fresh one: a dead
            // grant shows up here as invalid_grant → NeedsConsent.
            broker.invalidate(name, &token).await?;
            let fresh = broker.access_token(name).await?;
            let (method, verdict) = probe(broker, name, &fresh).await?;
            return Ok::<_, BrokerError>(match verdict {
                Ok(()) => report(
                    true,
                    Some(method),
                    format!("the old token was refused ({reason}); a fresh one works"),
                ),
                Err(again) => {
                    broker
                        .report_upstream_rejection(name, &fresh, &format!("validation: {again}"))
                        .await?;
                    report(false, Some(method), again)
                }
            });
        }
        Ok(report(
            true,
            Some(method),
            format!("token {} accepted", token.fingerprint()),
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
