//! The sandbox provider: a real OAuth2 authorization server and a real
//! OAuth2-enforcing SMTP server on loopback, for `oxirelay sandbox`,
//! `oxirelay demo` and the tests. [`Sandbox::start`] runs both, wired
//! together the way a provider's are: the SMTP server checks a JWT bearer
//! token's signature against the authorization server's JWKS, then asks its
//! introspection endpoint whether the token is still active, so revoked
//! tokens are refused as a real provider refuses them; an opaque token
//! (the google profile's) only introspection can vouch for.

mod armed;
pub mod authz;
pub mod certs;
pub mod http_api;
pub mod inbox;
pub mod oauth_profile;
pub mod profile;
pub mod smtp;

pub use oauth_profile::{OAuthProfile, oauth_profile};
pub use profile::{ProfileName, SmtpProfile, TokenShape};

use crate::oauth::grant::ClientAuth;
use crate::oauth::validate::{IntrospectionClient, JwtValidator, introspect};
use crate::secret::Secret;
use crate::smtp::sasl::OAuthErrorStatus;
use authz::{AuthServer, AuthServerConfig, RunningAuthServer, SandboxClient};
use certs::SandboxCa;
use smtp::{BearerVerifier, RunningSandboxSmtp, SandboxSmtp, SandboxSmtpConfig, VerifiedBearer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The strict profile's SMTP scope, and the name the SMTP server's own
/// policy gives the permission to send: the verifier grants it to a token
/// that carries the profile's permission (Microsoft's SMTP.Send or
/// SMTP.SendAsApp, Google's mail scope).
pub const SMTP_SCOPE: &str = "smtp.send";
/// The client the demo and the printed config snippet use.
pub const CLIENT_ID: &str = authz::DEMO_CLIENT_ID;
/// The mailbox the sandbox knows.
pub const USER: &str = authz::DEMO_USER;
/// The resource server's own client, for introspection.
const INTROSPECTION_CLIENT_ID: &str = "sandbox-smtp";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start the sandbox authorization server: {0}")]
    Auth(#[from] authz::AuthServerError),
    #[error("cannot start the sandbox SMTP server: {0}")]
    Smtp(#[from] smtp::SandboxSmtpError),
    #[error("cannot start the sandbox's Graph and Gmail APIs: {0}")]
    Api(#[from] http_api::HttpApiError),
    #[error("cannot make the sandbox certificates: {0}")]
    Certs(#[from] certs::CertsError),
    #[error("cannot listen on {addr}: {source}; choose another port")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("sandbox consent failed: {0}")]
    Consent(String),
    #[error("cannot create the sandbox directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Where the inbox, the CA certificate and secrets go.
    pub dir: PathBuf,
    pub token_ttl: Duration,
    pub auto_approve: bool,
    pub http_addr: SocketAddr,
    pub smtp_addr: SocketAddr,
    /// The Graph- and Gmail-shaped sending APIs (HTTPS).
    pub api_addr: SocketAddr,
    pub device_interval: Duration,
    /// How much the sandbox's own required interval grows at each
    /// `slow_down` (the client adds 5 s by itself, RFC 8628 section 3.5).
    pub slow_down_increment: Duration,
    /// The demo client's secret (random unless given).
    pub client_secret: Secret,
    /// Concurrent SMTP sessions; beyond it the greeting is 421, as a
    /// provider's connection limit answers. Benchmarks raise it.
    pub max_smtp_sessions: usize,
    /// Which provider the sandbox behaves like (`strict` by default).
    pub profile: ProfileName,
    /// The SMTP server's behaviour when not the profile's own (a test that
    /// needs a smaller quota, say): start from `profile.smtp()`.
    pub smtp: Option<SmtpProfile>,
    /// The certificate its SMTP server presents.
    pub server_certificate: ServerCertificate,
    /// Benchmarks only: its SMTP server counts accepted messages and stores
    /// none (see `inbox::Inbox::count_only`).
    pub count_only: bool,
}

/// What the sandbox SMTP server's certificate looks like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerCertificate {
    /// A leaf signed by a generated CA: trusted with `ca_file`.
    #[default]
    CaSigned,
    /// A self-signed CA certificate as the server's own, like many internal
    /// servers: webpki refuses it even from `ca_file`; pin its key instead.
    SelfSignedCa,
}

impl SandboxOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SandboxOptions {
            dir: dir.into(),
            token_ttl: Duration::from_secs(3600),
            auto_approve: false,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            smtp_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            device_interval: Duration::from_secs(5),
            slow_down_increment: Duration::from_secs(5),
            client_secret: random_secret(),
            // Room for load tests and benchmarks with many concurrent senders.
            max_smtp_sessions: 256,
            profile: ProfileName::default(),
            smtp: None,
            server_certificate: ServerCertificate::default(),
            count_only: false,
        }
    }
}

fn random_secret() -> Secret {
    use rand::Rng;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(hex::encode(bytes))
}

/// Both servers, running.
pub struct Sandbox {
    pub auth: RunningAuthServer,
    pub smtp: RunningSandboxSmtp,
    /// Graph `sendMail` and Gmail `messages.send`, storing in the SMTP
    /// server's inbox.
    pub api: http_api::RunningHttpApi,
    pub dir: PathBuf,
    pub client_secret: Secret,
    pub profile: ProfileName,
}

/// The SMTP server's token check, as the provider's resource server does
/// it: a JWT's signature, issuer, audience and expiry locally, then
/// introspection for revocation; an opaque token by introspection alone,
/// and never without a positive answer. Then the profile's permission.
pub(crate) struct SandboxVerifier {
    validator: JwtValidator,
    http: reqwest::Client,
    introspection_url: url::Url,
    introspection_secret: Secret,
    permission: &'static OAuthProfile,
}

fn bearer_status(status: &str, scope: Option<&str>) -> OAuthErrorStatus {
    OAuthErrorStatus {
        status: status.into(),
        schemes: Some("bearer".into()),
        scope: scope.map(str::to_string),
        openid_configuration: None,
    }
}

/// A token the sandbox's resource servers accept as genuine and active,
/// before any of them looks at its permissions.
pub(crate) struct CheckedToken {
    pub subject: String,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub expires_at: Option<std::time::SystemTime>,
}

impl SandboxVerifier {
    /// Signature, issuer, audience and expiry (a JWT), then introspection
    /// (revocation; the only check an opaque token has). The SMTP server
    /// and the HTTP APIs then each check their own permission.
    pub(crate) async fn check(&self, token: &Secret) -> Result<CheckedToken, OAuthErrorStatus> {
        {
            let is_jwt = token.expose().split('.').count() == 3;
            let local = if is_jwt {
                Some(
                    self.validator
                        .validate(token)
                        .await
                        .map_err(|e| e.rfc7628_status())?,
                )
            } else {
                None
            };
            let client = IntrospectionClient {
                client_id: INTROSPECTION_CLIENT_ID,
                client_secret: Some(&self.introspection_secret),
                auth: ClientAuth::Basic,
            };
            let introspection =
                match introspect(&self.http, &self.introspection_url, client, token).await {
                    Ok(answer) => Some(answer),
                    // A provider that does not introspect its JWTs: their
                    // signature check is the verdict. Never for an opaque token.
                    Err(e) if e.declined() && local.is_some() => None,
                    Err(e) if e.is_transient() || e.declined() => {
                        return Err(bearer_status("temporarily_unavailable", None));
                    }
                    Err(_) => return Err(bearer_status("invalid_token", None)),
                };
            if introspection.as_ref().is_some_and(|i| !i.active) {
                // A signed token that is no longer active (revoked) gets the
                // scope to ask for again; a token nobody issued gets nothing.
                let scope = local.is_some().then_some(self.permission.smtp_scope);
                return Err(bearer_status("invalid_token", scope));
            }
            // The authorization server knows which mailbox a grant is for
            // (Entra's `sub` is a pairwise id, an opaque token says nothing).
            let subject = introspection
                .as_ref()
                .and_then(|i| i.sub.clone())
                .or_else(|| local.as_ref().map(|v| v.subject.clone()))
                .ok_or_else(|| bearer_status("invalid_token", None))?;
            let (scopes, roles) = match (&local, &introspection) {
                (Some(local), _) => (local.scopes.clone(), local.roles.clone()),
                (None, Some(answer)) => (
                    answer
                        .scope
                        .as_deref()
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_string)
                        .collect(),
                    Vec::new(),
                ),
                (None, None) => return Err(bearer_status("invalid_token", None)),
            };
            let expires_at = local.as_ref().map(|v| v.expires_at).or_else(|| {
                introspection
                    .as_ref()
                    .and_then(|i| i.exp)
                    .map(|exp| std::time::UNIX_EPOCH + Duration::from_secs(exp))
            });
            Ok(CheckedToken {
                subject,
                scopes,
                roles,
                expires_at,
            })
        }
    }
}

impl BearerVerifier for SandboxVerifier {
    fn verify<'a>(
        &'a self,
        token: &'a Secret,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<VerifiedBearer, OAuthErrorStatus>> + Send + 'a>,
    > {
        Box::pin(async move {
            let CheckedToken {
                subject,
                mut scopes,
                roles,
                expires_at,
            } = self.check(token).await?;
            if !self.permission.grants_smtp(&scopes, &roles) {
                return Err(bearer_status(
                    "insufficient_scope",
                    Some(self.permission.smtp_scope),
                ));
            }
            scopes.extend(roles);
            if !scopes.iter().any(|s| s == SMTP_SCOPE) {
                scopes.push(SMTP_SCOPE.to_string());
            }
            Ok(VerifiedBearer {
                subject,
                scopes,
                expires_at,
            })
        })
    }
}

impl Sandbox {
    pub async fn start(options: SandboxOptions) -> Result<Sandbox, SandboxError> {
        crate::tls::install_crypto_provider();
        std::fs::create_dir_all(&options.dir).map_err(|source| SandboxError::Dir {
            path: options.dir.clone(),
            source,
        })?;
        let introspection_secret = random_secret();
        let permission = oauth_profile(options.profile);
        let config = AuthServerConfig {
            access_token_ttl: options.token_ttl,
            auto_approve: options.auto_approve,
            device_interval: options.device_interval,
            slow_down_increment: options.slow_down_increment,
            scopes: permission
                .offered_scopes
                .iter()
                .map(|s| s.to_string())
                .collect(),
            token_shape: options.profile.token_shape(),
            clients: vec![
                SandboxClient {
                    redirect_uris: vec![
                        "http://127.0.0.1/callback".into(),
                        "http://127.0.0.1/".into(),
                        // The web console's Connect (any port, as loopback
                        // redirects are matched).
                        "http://127.0.0.1/console/oauth/callback".into(),
                    ],
                    app_subject: Some(USER.into()),
                    ..SandboxClient::confidential(CLIENT_ID, options.client_secret.clone())
                },
                SandboxClient::confidential(INTROSPECTION_CLIENT_ID, introspection_secret.clone()),
            ],
            ..AuthServerConfig::default()
        };
        let auth = AuthServer::bind(options.http_addr, config).await?;
        let http = crate::oauth::grant::http_client(true);
        let verifier = Arc::new(SandboxVerifier {
            // No grace after `exp`: providers refuse an expired token outright,
            // and the relay must cope with that.
            validator: auth.validator(http.clone()).with_leeway(Duration::ZERO),
            http,
            introspection_url: auth.introspection_url(),
            introspection_secret,
            permission,
        });
        let ca = Arc::new(match options.server_certificate {
            ServerCertificate::CaSigned => SandboxCa::generate()?,
            ServerCertificate::SelfSignedCa => SandboxCa::generate_self_signed_ca()?,
        });
        let mut smtp_config =
            SandboxSmtpConfig::new(verifier.clone(), options.dir.join("inbox"), ca.clone());
        smtp_config.required_scope = SMTP_SCOPE.into();
        smtp_config.max_sessions = options.max_smtp_sessions;
        smtp_config.profile = options
            .smtp
            .clone()
            .unwrap_or_else(|| options.profile.smtp());
        smtp_config.ca_file = Some(options.dir.join("sandbox-ca.pem"));
        smtp_config.count_only = options.count_only;
        let listener = crate::listen::bind(options.smtp_addr)
            .await
            .map_err(|source| SandboxError::Bind {
                addr: options.smtp_addr,
                source,
            })?;
        let smtp = SandboxSmtp::start(listener, smtp_config).await?;
        let api =
            http_api::RunningHttpApi::start(options.api_addr, verifier, smtp.inbox().clone(), &ca)
                .await?;
        Ok(Sandbox {
            auth,
            smtp,
            api,
            dir: options.dir,
            client_secret: options.client_secret,
            profile: options.profile,
        })
    }

    pub fn ca_file(&self) -> &Path {
        self.smtp.ca_file()
    }

    /// A config `[[account]]` for this sandbox. The client secret is
    /// referenced, never written: `secret_ref` is `env:NAME` or `file:PATH`.
    /// The scopes and SASL mechanism are the profile's (Microsoft's and
    /// Google's own scope names for those profiles).
    pub fn account_toml(&self, name: &str, grant: &str, secret_ref: &str) -> String {
        let oauth = oauth_profile(self.profile);
        let scopes = oauth
            .scopes_for(grant)
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            r#"[[account]]
name = "{name}"
provider = "generic"
grant = "{grant}"
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{secret_ref}"
user = "{USER}"
scopes = [{scopes}]
smtp = "127.0.0.1:{port}"
tls = "starttls"
ca_file = "{ca}"
sasl = "{sasl}"
insecure_loopback = true   # the sandbox's token endpoint is plain HTTP on 127.0.0.1
"#,
            issuer = self.auth.issuer().as_str().trim_end_matches('/'),
            port = self.smtp.addr().port(),
            ca = self.ca_file().display(),
            sasl = oauth.sasl,
        )
    }

    /// A config `[[account]]` for this sandbox that sends through its
    /// Graph- or Gmail-shaped API (`transport` is `graph` or `gmail_api`),
    /// with the least scope the transport needs and the sandbox CA as
    /// trust for both the API and the SMTP server (the fallback).
    pub fn api_account_toml(
        &self,
        name: &str,
        grant: &str,
        secret_ref: &str,
        transport: crate::config::Transport,
    ) -> String {
        let scopes = crate::oauth::preset::api_preset(transport)
            .map(|api| {
                let grant = if grant == "client_credentials" {
                    crate::oauth::preset::GrantKind::ClientCredentials
                } else {
                    crate::oauth::preset::GrantKind::AuthorizationCode
                };
                api.scopes_for(grant)
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        format!(
            r#"[[account]]
name = "{name}"
provider = "generic"
grant = "{grant}"
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{secret_ref}"
user = "{USER}"
scopes = [{scopes}]
transport = "{transport}"
api_url = "{api}"
smtp = "127.0.0.1:{port}"
tls = "starttls"
ca_file = "{ca}"
insecure_loopback = true   # the sandbox's token endpoint is plain HTTP on 127.0.0.1
"#,
            issuer = self.auth.issuer().as_str().trim_end_matches('/'),
            api = self.api.base_url(),
            port = self.smtp.addr().port(),
            ca = self.ca_file().display(),
        )
    }

    /// Gives consent for `account` the way `account login` does, with the
    /// sandbox's auto-approve standing in for the person at the browser:
    /// authorization code + PKCE + state, then the code exchange. The
    /// sandbox must run with `auto_approve`.
    pub async fn grant_consent(
        &self,
        broker: &crate::oauth::broker::Broker,
        account: &str,
    ) -> Result<crate::oauth::broker::AccessToken, SandboxError> {
        use crate::oauth::consent;
        let fail = |e: &dyn std::fmt::Display| SandboxError::Consent(e.to_string());
        let endpoints = broker.endpoints(account).await.map_err(|e| fail(&e))?;
        let config = broker
            .account(account)
            .ok_or_else(|| SandboxError::Consent(format!("no account {account}")))?;
        let request = consent::begin(config, &endpoints, "http://127.0.0.1/callback", Some(USER))
            .map_err(|e| fail(&e))?;
        let browser = crate::oauth::grant::http_client(true);
        let answer = browser
            .get(request.url.clone())
            .send()
            .await
            .map_err(|e| fail(&e))?;
        let location = answer
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                SandboxError::Consent(format!(
                    "the authorization endpoint answered {} without redirecting back; is auto_approve on?",
                    answer.status()
                ))
            })?;
        let callback = url::Url::parse(location).map_err(|e| fail(&e))?;
        let code =
            consent::code_from_callback(&request, callback.query().unwrap_or_default(), account)
                .map_err(|e| fail(&e))?;
        consent::finish(broker, account, &request, &code)
            .await
            .map(|consent| consent.token)
            .map_err(|e| fail(&e))
    }

    pub async fn shutdown(self) {
        self.api.shutdown().await;
        let _ = self.smtp.shutdown().await;
        let _ = self.auth.shutdown().await;
    }
}
