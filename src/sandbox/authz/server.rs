//! Starting, observing and stopping the sandbox authorization server.

use axum::Router;
use axum::routing::{get, post};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::config::AuthServerConfig;
use super::engine::AuthCore;
use super::faults::TokenFaults;
use super::ledger::DeviceApprovalError;
use super::metadata::AuthServerMetadata;
use super::stats::{AuthStats, WaitTimeout};
use super::{backchannel, frontchannel, metadata};
use crate::oauth::jwt::{JwtError, SigningKey};
use crate::oauth::validate::JwtValidator;
use crate::secret::Secret;

/// How long [`RunningAuthServer::shutdown`] lets open requests finish
/// (a request held by an injected delay included) before cutting them.
const GRACEFUL_SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// The signing key of every sandbox server in this process. Generating a
/// 2048-bit RSA key takes most of a second in a debug build, and the tests
/// start a server each; servers still tell their tokens apart by issuer
/// (each has its own port), which every validator checks.
fn process_signing_key() -> Result<SigningKey, JwtError> {
    static KEY: std::sync::Mutex<Option<SigningKey>> = std::sync::Mutex::new(None);
    // The slot holds a finished key or nothing; a panic cannot leave it half-written.
    let mut slot = KEY.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(key) = slot.as_ref() {
        return Ok(key.clone());
    }
    let key = SigningKey::generate()?;
    *slot = Some(key.clone());
    Ok(key)
}

#[derive(Debug, thiserror::Error)]
pub enum AuthServerError {
    #[error("cannot create the sandbox signing key: {0}")]
    SigningKey(#[from] JwtError),
    #[error("cannot listen on {addr}: {source}; pick another port or stop what uses it")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the listening address: {0}")]
    LocalAddr(std::io::Error),
    #[error("invalid sandbox authorization server configuration: {0}")]
    Config(String),
    #[error("the sandbox authorization server stopped with an error: {0}")]
    Serve(std::io::Error),
    #[error("the sandbox authorization server task failed: {0}")]
    Task(String),
}

/// The sandbox OAuth2 authorization server.
pub struct AuthServer;

impl AuthServer {
    /// Serves on `listener` until [`RunningAuthServer::shutdown`] (or drop).
    pub async fn start(
        listener: TcpListener,
        config: AuthServerConfig,
    ) -> Result<RunningAuthServer, AuthServerError> {
        check_config(&config)?;
        let addr = listener.local_addr().map_err(AuthServerError::LocalAddr)?;
        // A wildcard bind is reached through loopback in the URLs we print.
        let host = if addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            addr.ip()
        };
        let issuer = format!("http://{}", SocketAddr::new(host, addr.port()));
        let faults = TokenFaults::new(config.initial_faults);
        let core = Arc::new(AuthCore::new(
            config,
            issuer,
            process_signing_key()?,
            faults,
        ));

        let router = Router::new()
            .route(
                "/.well-known/oauth-authorization-server",
                get(metadata::metadata),
            )
            .route("/.well-known/openid-configuration", get(metadata::metadata))
            .route("/jwks", get(metadata::jwks))
            .route("/token", post(backchannel::token))
            .route(
                "/device_authorization",
                post(backchannel::device_authorization),
            )
            .route("/revoke", post(backchannel::revoke))
            .route("/introspect", post(backchannel::introspect))
            .route(
                "/authorize",
                get(frontchannel::authorize).post(frontchannel::authorize_decision),
            )
            .route(
                "/device",
                get(frontchannel::device_page).post(frontchannel::device_decision),
            )
            .with_state(core.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    // Resolves on shutdown() or when the handle is dropped.
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(issuer = %core.issuer, kid = core.key.kid(), "sandbox authorization server listening");
        Ok(RunningAuthServer {
            core,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Binds `addr` (e.g. `127.0.0.1:0`) and starts.
    pub async fn bind(
        addr: SocketAddr,
        config: AuthServerConfig,
    ) -> Result<RunningAuthServer, AuthServerError> {
        let listener = crate::listen::bind(addr)
            .await
            .map_err(|source| AuthServerError::Bind { addr, source })?;
        Self::start(listener, config).await
    }
}

fn check_config(config: &AuthServerConfig) -> Result<(), AuthServerError> {
    if config.users.is_empty() {
        return Err(AuthServerError::Config(
            "no users: add at least one mailbox to users".into(),
        ));
    }
    for (i, client) in config.clients.iter().enumerate() {
        if config.clients[..i]
            .iter()
            .any(|c| c.client_id == client.client_id)
        {
            return Err(AuthServerError::Config(format!(
                "client_id {} is registered twice",
                client.client_id
            )));
        }
        if client.client_secret.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(AuthServerError::Config(format!(
                "client {} has an empty client_secret; give it one, or None for a public client",
                client.client_id
            )));
        }
    }
    if config.access_token_ttl.is_zero() {
        return Err(AuthServerError::Config(
            "access_token_ttl must be at least one second".into(),
        ));
    }
    Ok(())
}

/// A running server: its endpoints, counters, fault controls and test hooks.
/// Dropping it stops the server.
pub struct RunningAuthServer {
    core: Arc<AuthCore>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningAuthServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The issuer identifier exactly as in the `iss` claim and the metadata
    /// (`http://127.0.0.1:PORT`, no trailing slash).
    pub fn issuer_id(&self) -> &str {
        &self.core.issuer
    }

    /// The issuer as a URL (note: `Url` prints it with a trailing `/`; use
    /// [`Self::issuer_id`] where an exact string match matters).
    pub fn issuer(&self) -> url::Url {
        self.endpoint("")
    }

    pub fn token_url(&self) -> url::Url {
        self.endpoint("/token")
    }

    pub fn authorization_url(&self) -> url::Url {
        self.endpoint("/authorize")
    }

    pub fn device_authorization_url(&self) -> url::Url {
        self.endpoint("/device_authorization")
    }

    pub fn revocation_url(&self) -> url::Url {
        self.endpoint("/revoke")
    }

    pub fn introspection_url(&self) -> url::Url {
        self.endpoint("/introspect")
    }

    pub fn jwks_url(&self) -> url::Url {
        self.endpoint("/jwks")
    }

    fn endpoint(&self, path: &str) -> url::Url {
        let text = format!("{}{path}", self.core.issuer);
        // The issuer is "http://" + a SocketAddr, and paths are our literals.
        url::Url::parse(&text).expect("sandbox endpoint URLs are well-formed")
    }

    pub fn metadata(&self) -> AuthServerMetadata {
        AuthServerMetadata::of(&self.core)
    }

    pub fn config(&self) -> &AuthServerConfig {
        &self.core.config
    }

    pub fn stats(&self) -> AuthStats {
        self.core.stats.snapshot()
    }

    /// Waits (without polling) until `condition` holds for the counters.
    pub async fn wait_until(
        &self,
        condition: impl FnMut(&AuthStats) -> bool,
        timeout: Duration,
    ) -> Result<AuthStats, WaitTimeout> {
        self.core.stats.wait_until(condition, timeout).await
    }

    /// Waits until at least `n` token requests arrived in total.
    pub async fn wait_for_token_requests(
        &self,
        n: u64,
        timeout: Duration,
    ) -> Result<AuthStats, WaitTimeout> {
        self.wait_until(|s| s.token_requests >= n, timeout).await
    }

    /// Fault injection at `/token`, changeable while running.
    pub fn faults(&self) -> &TokenFaults {
        &self.core.faults
    }

    /// A validator for this server's JWT access tokens (their issuer, every
    /// audience they may carry, the JWKS URL). Opaque tokens it cannot check.
    pub fn validator(&self, http: reqwest::Client) -> JwtValidator {
        let mint = self.core.mint();
        let mut audiences = mint.audiences().into_iter();
        let first = audiences
            .next()
            .unwrap_or_else(|| self.core.config.audience.clone());
        JwtValidator::new(self.jwks_url(), mint.token_issuer(), first, http)
            .also_accepting(audiences)
    }

    /// The `iss` of this server's JWT access tokens (Entra-shaped tokens
    /// name `https://sts.windows.net/{tid}/`, not [`Self::issuer_id`]).
    pub fn token_issuer(&self) -> String {
        self.core.mint().token_issuer()
    }

    /// Approves a device-flow user code as `user`, as the device page would.
    pub fn approve_device(&self, user_code: &str, user: &str) -> Result<(), DeviceApprovalError> {
        if !self.core.config.is_user(user) {
            return Err(DeviceApprovalError::UnknownUser(user.to_string()));
        }
        self.core
            .ledger()
            .decide_device(user_code, Some(user), Instant::now())
    }

    /// Denies a device-flow user code.
    pub fn deny_device(&self, user_code: &str) -> Result<(), DeviceApprovalError> {
        self.core
            .ledger()
            .decide_device(user_code, None, Instant::now())
    }

    /// Simulates "consent withdrawn": revokes every refresh-token family of
    /// `subject` and every access token issued for it. Returns the number of
    /// families revoked.
    pub fn revoke_all_for_subject(&self, subject: &str) -> usize {
        self.core.revoke_subject(subject)
    }

    /// Whether a token (access or refresh) is currently active, as
    /// `/introspect` would answer, without an HTTP round trip. For the
    /// sandbox SMTP server, which must refuse revoked tokens.
    pub fn is_token_active(&self, token: &Secret) -> bool {
        self.core.introspect_token(token.expose()).active
    }

    /// Stops accepting, lets open requests finish (bounded), and returns.
    pub async fn shutdown(mut self) -> Result<(), AuthServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(GRACEFUL_SHUTDOWN_LIMIT, &mut task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(AuthServerError::Serve(e)),
            Ok(Err(e)) => Err(AuthServerError::Task(e.to_string())),
            Err(_) => {
                task.abort();
                Ok(())
            }
        }
    }
}

impl Drop for RunningAuthServer {
    fn drop(&mut self) {
        // Dropping `stop` starts the graceful shutdown; nothing else to do.
        self.stop.take();
    }
}

impl std::fmt::Debug for RunningAuthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningAuthServer")
            .field("issuer", &self.core.issuer)
            .finish_non_exhaustive()
    }
}
