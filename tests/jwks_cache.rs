//! Token checks against a JWKS endpoint of the test's own, whose keys and
//! `Cache-Control` the test changes: a withdrawn signing key stops being
//! trusted once the cache's lifetime is over; a cached JWKS is not fetched
//! again within it; tokens whose `nbf` or `iat` lie in the future are
//! refused.

use oxirelay::oauth::jwt::{SigningKey, unix_now};
use oxirelay::oauth::validate::{JwtValidator, ValidationError};
use oxirelay::secret::Secret;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ISSUER: &str = "http://127.0.0.1/issuer";

#[derive(Clone, Default)]
struct Published {
    jwks: Arc<Mutex<String>>,
    cache_control: Arc<Mutex<String>>,
    fetches: Arc<AtomicU64>,
}

async fn jwks_server(published: Published) -> url::Url {
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let published = published.clone();
            async move {
                published.fetches.fetch_add(1, Ordering::SeqCst);
                let body = published.jwks.lock().expect("lock").clone();
                let cache = published.cache_control.lock().expect("lock").clone();
                (
                    [
                        (
                            axum::http::header::CONTENT_TYPE,
                            "application/json".to_string(),
                        ),
                        (axum::http::header::CACHE_CONTROL, cache),
                    ],
                    body,
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url::Url::parse(&format!("http://{addr}/jwks")).expect("url")
}

fn publish(published: &Published, keys: &[&SigningKey], cache_control: &str) {
    let jwks = serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() });
    *published.jwks.lock().expect("lock") = jwks.to_string();
    *published.cache_control.lock().expect("lock") = cache_control.to_string();
}

fn token(key: &SigningKey, extra: serde_json::Value) -> Secret {
    let now = unix_now();
    let mut claims = serde_json::json!({
        "iss": ISSUER, "sub": "alice@example.net", "aud": "smtp",
        "exp": now + 600, "iat": now, "scope": "smtp.send", "jti": format!("t{}", rand::random::<u32>()),
    });
    for (name, value) in extra.as_object().expect("object") {
        claims[name] = value.clone();
    }
    key.sign(&claims).expect("sign")
}

fn validator(url: url::Url) -> JwtValidator {
    JwtValidator::new(
        url,
        ISSUER.into(),
        "smtp".into(),
        oxirelay::oauth::grant::http_client(true),
    )
    .with_leeway(Duration::ZERO)
    .with_min_refetch_interval(Duration::ZERO)
}

#[tokio::test]
async fn a_withdrawn_key_stops_being_trusted_when_the_cache_runs_out() {
    let (old, new) = (
        SigningKey::generate().expect("key"),
        SigningKey::generate().expect("key"),
    );
    let published = Published::default();
    let url = jwks_server(published.clone()).await;
    // max-age=0: the issuer asks to be asked again every time.
    publish(&published, &[&old], "max-age=0");
    let validator = validator(url);
    let signed_by_old = token(&old, serde_json::json!({}));
    validator
        .validate(&signed_by_old)
        .await
        .expect("trusted while published");
    // The issuer withdraws the old key (it leaked) and signs with a new one.
    publish(&published, &[&new], "max-age=0");
    assert!(matches!(
        validator.validate(&signed_by_old).await,
        Err(ValidationError::UnknownKey { .. })
    ));
    validator
        .validate(&token(&new, serde_json::json!({})))
        .await
        .expect("the new key");
}

#[tokio::test]
async fn a_cached_jwks_is_not_fetched_again_within_its_lifetime() {
    let key = SigningKey::generate().expect("key");
    let published = Published::default();
    let url = jwks_server(published.clone()).await;
    publish(&published, &[&key], "public, max-age=86400");
    let validator = validator(url);
    for _ in 0..5 {
        validator
            .validate(&token(&key, serde_json::json!({})))
            .await
            .expect("valid");
    }
    assert_eq!(published.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tokens_from_the_future_are_refused() {
    let key = SigningKey::generate().expect("key");
    let published = Published::default();
    let url = jwks_server(published.clone()).await;
    publish(&published, &[&key], "max-age=3600");
    let validator = validator(url);
    let later = unix_now() + 600;
    for (claim, extra) in [
        ("nbf", serde_json::json!({ "nbf": later })),
        ("iat", serde_json::json!({ "iat": later })),
    ] {
        let error = validator
            .validate(&token(&key, extra))
            .await
            .expect_err("not yet valid");
        assert_eq!(error, ValidationError::NotYetValid { claim }, "{claim}");
        assert!(error.to_string().contains("NTP"), "{error}");
    }
}
