//! The configuration file: one TOML document whose names are fixed by
//! DESIGN.md. Unknown keys are errors that name the key and the line (serde's
//! `deny_unknown_fields` with toml's spans); secrets are references
//! (`env:NAME`, `file:PATH`), and a literal secret is refused.

use crate::oauth::preset::{GrantKind, ProviderKind};
use crate::secret::{MasterKey, MasterKeyError, Secret};
use crate::smtp::sasl::Mechanism;
use serde::Deserialize;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CONFIG_ENV: &str = "OXIRELAY_CONFIG";
pub const MASTER_KEY_ENV: &str = "OXIRELAY_MASTER_KEY";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no account named {name:?} in the config; known accounts: {known}")]
    UnknownAccount { name: String, known: String },
    #[error("secret {reference}: {reason}")]
    Secret { reference: String, reason: String },
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
}

/// Where a secret lives. Deserialising a literal value fails: a config file
/// is copied, committed and pasted into tickets, so it must not hold secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// How every refusal of a secret reference begins: the config error that
/// quotes the offending line (`describe_toml_error`) leaves its value out
/// when it sees this, since the value may be the secret itself.
const SECRET_REFUSAL: &str = "a secret must be a reference";

impl SecretRef {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix("env:") {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "{SECRET_REFUSAL}: env: names a variable of letters, digits and _, e.g. \"env:OFFICE_CLIENT_SECRET\""
                ));
            }
            Ok(SecretRef::Env(name.to_string()))
        } else if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file: needs a path".to_string());
            }
            Ok(SecretRef::File(PathBuf::from(path)))
        } else {
            Err(format!(
                "{SECRET_REFUSAL}, \"env:NAME\" or \"file:/path\", never the value itself: \
                 config files get copied and committed. Put the value in an environment variable or a \
                 file readable only by the relay's user"
            ))
        }
    }

    /// Reads the secret. Files must not be readable by group or others.
    pub fn resolve(&self) -> Result<Secret, ConfigError> {
        let fail = |reason: String| ConfigError::Secret {
            reference: self.to_string(),
            reason,
        };
        match self {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(Secret::new(value)),
                _ => Err(fail(format!("the environment variable {name} is not set"))),
            },
            SecretRef::File(path) => {
                check_file_private(path).map_err(fail)?;
                let text = std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
                let value = text.trim_end_matches(['\r', '\n']);
                if value.is_empty() {
                    return Err(fail(format!("{} is empty", path.display())));
                }
                Ok(Secret::new(value))
            }
        }
    }

    fn rebase(&mut self, base: &Path) {
        if let SecretRef::File(path) = self
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
    }
}

#[cfg(unix)]
fn check_file_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_file_private(_path: &Path) -> Result<(), String> {
    Ok(())
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        SecretRef::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Connect in plaintext, then STARTTLS (required) before anything else.
    Starttls,
    /// TLS from the first byte (port 465 style).
    Implicit,
    /// No TLS: only for loopback hosts marked `insecure_loopback`.
    None,
}

/// How an account hands messages to its provider (`transport` in
/// `[[account]]`). Devices always submit to oxirelay over SMTP; this is
/// only the upstream side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// SMTP with SASL XOAUTH2/OAUTHBEARER (`smtp`, `tls`, `sasl`).
    #[default]
    Smtp,
    /// Microsoft Graph `POST /v1.0/users/{user}/sendMail` with the MIME.
    Graph,
    /// The Gmail API `users.messages.send` with the raw message.
    GmailApi,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Transport::Smtp => "smtp",
            Transport::Graph => "graph",
            Transport::GmailApi => "gmail_api",
        })
    }
}

/// What an HTTP transport does with a message too large for its API
/// (`large_messages` in `[[account]]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LargeMessages {
    /// Bounce it, with the limit and the size in the reason (a DSN goes
    /// to the sender).
    #[default]
    Bounce,
    /// Send it through the account's SMTP settings (`smtp`, `tls`, `sasl`,
    /// the preset's server), with the same token: the grant must then also
    /// carry the SMTP scope.
    Smtp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default, rename = "account")]
    pub accounts: Vec<AccountConfig>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default, rename = "user")]
    pub users: Vec<UserConfig>,
    /// Networks of devices that cannot authenticate, each mapped to the
    /// account that delivers their mail and the senders they may use.
    #[serde(default, rename = "network")]
    pub networks: Vec<NetworkConfig>,
    /// Authorization servers whose access tokens the submission listener
    /// accepts over XOAUTH2/OAUTHBEARER.
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<IssuerConfig>,
    #[serde(default)]
    pub http: Option<HttpConfig>,
    #[serde(default)]
    pub audit: AuditConfig,
    /// `oxirelay sendmail` for local users without the keys: where it
    /// drops messages for `serve`, and who may.
    #[serde(default)]
    pub sendmail: Option<SendmailConfig>,
    /// Receivers of the event log over HTTP (`src/webhooks`).
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
    /// How the operator is told of accounts and a relay that need a
    /// person (`src/notify`).
    #[serde(default)]
    pub notify: Option<NotifyConfig>,
    /// The web console on the `[http]` listener (`src/console`).
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    /// The file this was read from, for messages and relative paths.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_store_url")]
    pub url: String,
    /// How long the body of a message in a final state (delivered,
    /// bounced, expired) is kept after it got there: long enough to look
    /// at a complaint about last week's mail, not forever (issue 10: 838 MB
    /// for 150,000 messages of 5 KB). A message that is not final keeps
    /// its body whatever this says.
    #[serde(default = "default_keep_delivered")]
    pub keep_delivered: KeepFor,
    /// How long a final message's metadata (envelope, recipients and their
    /// replies) and the events are kept: a month of history for `queue`
    /// and `doctor`, longer than the bodies because they are small.
    #[serde(default = "default_keep_events")]
    pub keep_events: KeepFor,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: default_store_url(),
            keep_delivered: default_keep_delivered(),
            keep_events: default_keep_events(),
        }
    }
}

fn default_keep_delivered() -> KeepFor {
    KeepFor::Duration(Duration::from_secs(7 * 86_400))
}

fn default_keep_events() -> KeepFor {
    KeepFor::Duration(Duration::from_secs(30 * 86_400))
}

/// A retention time: `"7d"`, `"12h"`, `"90m"`, `"3600s"`, or `"forever"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepFor {
    Forever,
    Duration(Duration),
}

impl KeepFor {
    /// `None` for forever, as `store::retention::RetentionPolicy` takes it.
    pub fn duration(self) -> Option<Duration> {
        match self {
            KeepFor::Forever => None,
            KeepFor::Duration(duration) => Some(duration),
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim() == "forever" {
            return Ok(KeepFor::Forever);
        }
        crate::clock::parse_period(text)
            .map(KeepFor::Duration)
            .map_err(|e| format!("{e}, or \"forever\""))
    }
}

impl<'de> Deserialize<'de> for KeepFor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        KeepFor::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn default_store_url() -> String {
    "sqlite://oxirelay.db".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    #[serde(default = "default_master_key")]
    pub master_key: SecretRef,
    /// Keys that sealed values before `rotate-key`: values are still opened
    /// with them until they are re-sealed under `master_key`.
    #[serde(default)]
    pub previous_master_keys: Vec<SecretRef>,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            master_key: default_master_key(),
            previous_master_keys: Vec::new(),
        }
    }
}

fn default_master_key() -> SecretRef {
    SecretRef::Env(MASTER_KEY_ENV.to_string())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub name: String,
    pub provider: ProviderKind,
    pub grant: GrantKind,
    #[serde(default)]
    pub tenant: Option<String>,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// Google service-account key (JSON) for the JWT bearer grant.
    #[serde(default)]
    pub service_account_key: Option<SecretRef>,
    /// The mailbox: the SASL user.
    pub user: String,
    #[serde(default)]
    pub send_as: Vec<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default)]
    pub authorize_url: Option<String>,
    #[serde(default)]
    pub device_url: Option<String>,
    #[serde(default)]
    pub revoke_url: Option<String>,
    #[serde(default)]
    pub introspect_url: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// `host:port` of the upstream SMTP server (presets know theirs).
    #[serde(default)]
    pub smtp: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsMode>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Pins of the upstream server's key (base64 SHA-256 of its
    /// SubjectPublicKeyInfo): one string, or a list during a key rollover.
    /// Replaces the certificate chain check; checked in `oauth::account`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub tls_pin_sha256: Vec<String>,
    #[serde(default)]
    pub sasl: Option<Mechanism>,
    /// Allows `http://` token endpoints and `tls = "none"`, for loopback hosts only.
    #[serde(default)]
    pub insecure_loopback: bool,
    /// The `aud` the provider puts in this account's access tokens, when they
    /// are JWTs: enables the local JWT check in regular validation.
    #[serde(default)]
    pub audience: Option<String>,
    /// Seconds before expiry at which a token is refreshed (default: the preset's).
    #[serde(default)]
    pub refresh_skew_secs: Option<u64>,
    /// How the client authenticates at the token, device authorization,
    /// revocation and introspection endpoints: `client_secret_basic` or
    /// `client_secret_post` (default: the preset's, else what discovery
    /// offers).
    #[serde(default)]
    pub token_endpoint_auth: Option<crate::oauth::grant::ClientAuth>,
    /// How messages go upstream: `smtp` (default), `graph` or `gmail_api`.
    #[serde(default)]
    pub transport: Transport,
    /// The HTTP API's base URL for `graph` and `gmail_api` (default: the
    /// preset's, `https://graph.microsoft.com` or
    /// `https://gmail.googleapis.com`); HTTPS only, checked against
    /// `ca_file` or `tls_pin_sha256` like the SMTP server.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Messages over the HTTP API's size limit: `bounce` (default) or `smtp`.
    #[serde(default)]
    pub large_messages: LargeMessages,
    /// Sending quotas replacing the preset's (`[account.limits]`).
    #[serde(default)]
    pub limits: AccountLimitsConfig,
}

/// `[account.limits]`: each key set replaces the provider preset's limit
/// (DESIGN.md, provider presets); unset keys keep the preset's. Counted
/// per account across every relay sharing the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountLimitsConfig {
    #[serde(default)]
    pub messages_per_minute: Option<u32>,
    #[serde(default)]
    pub messages_per_day: Option<u32>,
    #[serde(default)]
    pub recipients_per_day: Option<u32>,
    #[serde(default)]
    pub recipients_per_message: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub addr: String,
    pub tls: TlsMode,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub allow_ips: Vec<String>,
    /// `[[network]]` names whose devices may submit here without AUTH.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Where `RCPT TO:<postmaster>` goes; checked as an RFC 5321 mailbox.
    #[serde(default)]
    pub postmaster: Option<crate::message::mailbox::Mailbox>,
}

/// Devices that cannot authenticate (printers, scanners): their addresses
/// stand in for a login, on the listeners that name this network. There is
/// no default identity (DESIGN.md contract 8): the account and the senders
/// are explicit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub name: String,
    /// CIDR blocks or single addresses.
    pub addrs: Vec<String>,
    /// The account that delivers their mail.
    pub account: String,
    /// The senders (addresses or `@domain`) they may put in MAIL FROM and From.
    pub allowed_from: Vec<String>,
    /// Check the header `From:` against `allowed_from` too (default on).
    #[serde(default = "yes")]
    pub check_header_from: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// A password user (PLAIN/LOGIN): the Argon2id hash of its app password.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// A bearer user (OAUTHBEARER/XOAUTH2): the `[[issuer]]` whose tokens
    /// name it. Never both: password users and bearer users are apart.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The token's `sub` that means this user (default: `name`). A token
    /// names a user only together with its issuer (DESIGN.md contract 8).
    #[serde(default)]
    pub subject: Option<String>,
    /// Check the header `From:` against `allowed_from` too (default on).
    #[serde(default = "yes")]
    pub check_header_from: bool,
    #[serde(default)]
    pub allowed_from: Vec<String>,
    pub account: String,
}

/// `[sendmail]`: `oxirelay sendmail` drops each message into
/// `spool/maildrop` and a running `serve` picks it up (`crate::maildrop`),
/// so the users who run it need neither the master key nor the store. A
/// drop's owner, which the kernel sets, says who sent it; a
/// `[[sendmail.local]]` maps local users and groups to an account and the
/// senders they may use, and an unmapped user is refused (DESIGN.md
/// contract 8: no default identity).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendmailConfig {
    /// Holds `maildrop/` (the operator makes it, see README) and the
    /// relay's own `claimed/` and `rejected/`.
    pub spool: PathBuf,
    #[serde(default, rename = "local")]
    pub locals: Vec<LocalSenderConfig>,
}

/// Local Unix users (by name) and the members of groups, as one identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSenderConfig {
    pub name: String,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The account that delivers their mail.
    pub account: String,
    /// The senders (addresses or `@domain`) they may use.
    pub allowed_from: Vec<String>,
    /// Check the header `From:` against `allowed_from` too (default on).
    #[serde(default = "yes")]
    pub check_header_from: bool,
}

/// The append-only audit log (on by default, beside the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default = "default_audit_path")]
    pub path: PathBuf,
    /// Rotate the log once it has reached this many bytes (the chain goes
    /// on in the new file; `audit verify` checks them all). Absent or 0:
    /// never, for logrotate or nothing.
    #[serde(default)]
    pub rotate_bytes: Option<u64>,
    /// Rotate the log at the first append once its first line is this old
    /// ("1d", "12h", "1w"), and on start if it already is; combines with
    /// `rotate_bytes` (whichever comes first). Absent: never by age.
    #[serde(default, deserialize_with = "audit_period")]
    pub rotate_every: Option<std::time::Duration>,
    /// Remove rotated files whose every line is older than this ("400d").
    /// Each removal is itself an audit line, so `audit verify` can tell it
    /// from a deletion. Absent: rotated files are kept forever, because an
    /// audit log is evidence and how long it must be kept is the
    /// operator's (or the regulator's) decision, not the relay's.
    #[serde(default, deserialize_with = "audit_period")]
    pub keep: Option<std::time::Duration>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: default_audit_path(),
            rotate_bytes: None,
            rotate_every: None,
            keep: None,
        }
    }
}

/// A period of `[audit]` (`clock::parse_period`); zero is refused, since
/// a zero rotation period or retention is a typo, not a policy.
fn audit_period<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    match crate::clock::parse_period(&text) {
        Ok(period) if !period.is_zero() => Ok(Some(period)),
        Ok(_) => Err(serde::de::Error::custom(format!(
            "{text:?}: a period of zero rotates or removes at every write; give a length such as \"1d\" or \"90d\", or leave the key out"
        ))),
        Err(e) => Err(serde::de::Error::custom(e)),
    }
}

fn default_audit_path() -> PathBuf {
    PathBuf::from("oxirelay-audit.jsonl")
}

/// A trusted token issuer for OAuth clients of the submission listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer identifier (`iss`), also the base for discovery.
    pub url: String,
    /// The `aud` a token must carry.
    pub audience: String,
    /// Where the signing keys are; discovered from `url` when absent.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A scope every accepted token must carry.
    #[serde(default)]
    pub required_scope: Option<String>,
    /// Allows `http://` for a loopback issuer (the sandbox).
    #[serde(default)]
    pub insecure_loopback: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where `serve` listens for the HTTP API, `/metrics`, the health
    /// checks and the console, e.g. `127.0.0.1:8025`.
    pub addr: String,
    /// PEM certificate chain and key: HTTPS. Without them the server speaks
    /// plain HTTP, which is allowed on a loopback address only.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The address people and browsers use to reach this server, when it
    /// differs from `addr` (behind a proxy): the console's OAuth redirect
    /// and the OpenAPI document's server are built from it.
    pub public_url: Option<String>,
    /// A bearer token `/metrics` asks for (`env:NAME` or `file:PATH`);
    /// without it the route is open to whoever reaches `addr`.
    pub metrics_token: Option<SecretRef>,
}

impl HttpConfig {
    /// The socket address `addr` names (validated when the config is read).
    pub fn socket_addr(&self) -> Result<std::net::SocketAddr, String> {
        self.addr.parse().map_err(|e| {
            format!(
                "[http] addr {:?} is not an IP address and port ({e}); write e.g. \"127.0.0.1:8025\"",
                self.addr
            )
        })
    }

    fn validate(&self) -> Result<(), String> {
        let addr = self.socket_addr()?;
        match (&self.cert, &self.key) {
            (Some(_), Some(_)) => {}
            (None, None) if addr.ip().is_loopback() => {}
            (None, None) => {
                return Err(format!(
                    "[http] addr {addr} is not a loopback address, so it needs HTTPS: set cert and key (PEM files), or listen on 127.0.0.1"
                ));
            }
            _ => return Err("[http] needs both cert and key, or neither".to_string()),
        }
        if let Some(url) = &self.public_url {
            let parsed = url::Url::parse(url)
                .map_err(|e| format!("[http] public_url {url:?} is not a URL ({e})"))?;
            if !matches!(parsed.scheme(), "https" | "http") {
                return Err(format!("[http] public_url {url:?} must be an http(s) URL"));
            }
        }
        Ok(())
    }
}

/// A receiver of events over HTTP (`[[webhook]]`; `src/webhooks`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the endpoint in `oxirelay webhook list|test`, the store's
    /// cursor and the logs.
    pub name: String,
    /// Where events are POSTed: `https://`, or `http://` to a loopback host.
    pub url: String,
    /// The HMAC-SHA256 key the receiver checks signatures with.
    pub secret: SecretRef,
    /// Event kinds sent: exact (`message.bounced`) or a family
    /// (`account.*`). Absent: message outcomes, account state changes and
    /// notifications ([`WebhookConfig::DEFAULT_EVENTS`]).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Only events of messages submitted with this API key
    /// (`submitted_by = "api:NAME"`); absent: every event.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Wait after the first failed POST, doubling up to `retry_max`.
    #[serde(default, deserialize_with = "positive_period")]
    pub retry_first: Option<Duration>,
    #[serde(default, deserialize_with = "positive_period")]
    pub retry_max: Option<Duration>,
    /// How long one POST may take, connection included.
    #[serde(default, deserialize_with = "positive_period")]
    pub timeout: Option<Duration>,
}

impl WebhookConfig {
    /// What an endpoint receives when it names no `events`: what happened
    /// to messages, changes of an account's state (not the routine
    /// `account.validated` of every validation, nor `token.issued`), and
    /// notifications.
    pub const DEFAULT_EVENTS: &'static [&'static str] = &[
        "message.delivered",
        "message.deferred",
        "message.bounced",
        "message.expired",
        "account.needs_consent",
        "account.consented",
        "account.revoked",
        "account.reinstated",
        "account.needs_admin",
        "account.admin_resolved",
        "account.validation_failed",
        "token.refresh_failed",
        "notify.*",
    ];

    pub fn events(&self) -> Vec<String> {
        match &self.events {
            Some(events) => events.clone(),
            None => Self::DEFAULT_EVENTS.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        // Messages name the URL's scheme and host only: webhook URLs often
        // carry a token in their path or query (chat services' hooks).
        let url = url::Url::parse(&self.url).map_err(|e| {
            format!("url is not a URL ({e}); write e.g. \"https://hooks.example.com/oxirelay\"")
        })?;
        let origin = url.origin().ascii_serialization();
        match url.scheme() {
            "https" => {}
            "http" if url.host_str().is_some_and(is_loopback_host) => {}
            "http" => {
                return Err(format!(
                    "url {origin} is plain HTTP to a host that is not loopback; events name accounts and recipients, so they travel over https:// (http:// is allowed only to 127.0.0.1, ::1 and localhost)"
                ));
            }
            other => {
                return Err(format!(
                    "url has scheme {other:?}; webhooks are POSTed over https://"
                ));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "url carries credentials; the receiver authenticates requests by their signature (secret), so leave user and password out of the URL"
                    .to_string(),
            );
        }
        for kind in self.events() {
            let family = kind.strip_suffix(".*").unwrap_or(&kind);
            if family.is_empty()
                || !family
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
            {
                return Err(format!(
                    "events: {kind:?} is not an event kind; write e.g. \"message.bounced\" or \"account.*\""
                ));
            }
        }
        if let (Some(first), Some(max)) = (self.retry_first, self.retry_max)
            && first > max
        {
            return Err("retry_first is longer than retry_max".to_string());
        }
        // A POST must end well within the relay's 30 s hold on the
        // endpoint, or a second relay could take it over mid-request.
        if self.timeout.is_some_and(|t| t > Duration::from_secs(20)) {
            return Err(
                "timeout is at most \"20s\": a receiver should answer at once and do the work afterwards"
                    .to_string(),
            );
        }
        Ok(())
    }
}

/// Telling the operator of accounts and a relay that need a person
/// (`[notify]`; `src/notify`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Run for each notification with the event in the environment
    /// (`OXIRELAY_EVENT`, `OXIRELAY_ACCOUNT`, `OXIRELAY_DETAIL`, ...):
    /// program and arguments, no shell.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// How long the command may run before it is killed.
    #[serde(default, deserialize_with = "positive_period")]
    pub command_timeout: Option<Duration>,
    /// An operator address that is mailed each notification...
    #[serde(default)]
    pub email_to: Option<String>,
    /// ...through the first of these accounts that is in a working state.
    #[serde(default, deserialize_with = "optional_one_or_many")]
    pub email_account: Option<Vec<String>>,
    /// While a condition lasts it is repeated this often, never more.
    #[serde(default, deserialize_with = "positive_period")]
    pub repeat_every: Option<Duration>,
    /// How often accounts and the lockdown flag are looked at.
    #[serde(default, deserialize_with = "positive_period")]
    pub check_every: Option<Duration>,
}

impl NotifyConfig {
    fn validate(&self, accounts: &std::collections::HashSet<&str>) -> Result<(), String> {
        if let Some(command) = &self.command
            && command
                .first()
                .is_none_or(|program| program.trim().is_empty())
        {
            return Err(
                "command is empty; give the program and its arguments, e.g. command = [\"/usr/local/bin/page-oncall\", \"oxirelay\"]"
                    .to_string(),
            );
        }
        match (&self.email_to, &self.email_account) {
            (Some(to), Some(names)) => {
                if crate::message::check_address("email_to", to).is_err() {
                    return Err(format!("email_to {to:?} is not an e-mail address"));
                }
                if names.is_empty() {
                    return Err(
                        "email_account is empty; name the account(s) that send the operator's mail"
                            .to_string(),
                    );
                }
                for name in names {
                    if !accounts.contains(name.as_str()) {
                        return Err(format!(
                            "email_account names {name:?}, which is not an [[account]]"
                        ));
                    }
                }
            }
            (Some(_), None) => {
                return Err("email_to needs email_account: the account(s) the operator's mail is sent through (list two, so that mail about one can go through the other)".to_string());
            }
            (None, Some(_)) => {
                return Err(
                    "email_account without email_to: give the operator's address".to_string(),
                );
            }
            (None, None) => {}
        }
        Ok(())
    }
}

/// The web console (`[console]`; `src/console`), served under `/console`
/// on the `[http]` listener. Operators log in with the admin password or
/// with an API key of scope `admin`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where the admin password is (`env:NAME` or `file:PATH`): the
    /// password itself, or its Argon2 hash (a PHC string, `$argon2id$...`).
    /// Without it only admin API keys log in.
    #[serde(default)]
    pub admin_password: Option<SecretRef>,
    /// A session unused this long ends (default 30 minutes).
    #[serde(default, deserialize_with = "positive_period")]
    pub session_idle: Option<Duration>,
    /// A session ends this long after its login, however busy (default 12 hours).
    #[serde(default, deserialize_with = "positive_period")]
    pub session_max: Option<Duration>,
    /// The sandbox's inbox to show (the `--dir` of `oxirelay sandbox`, or
    /// its `inbox` directory), when a sandbox runs beside the relay.
    #[serde(default)]
    pub sandbox_inbox: Option<PathBuf>,
}

/// A period (`clock::parse_period`) that must not be zero: a zero
/// interval or timeout is a typo, not a policy.
fn positive_period<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    match crate::clock::parse_period(&text) {
        Ok(period) if !period.is_zero() => Ok(Some(period)),
        Ok(_) => Err(serde::de::Error::custom(format!(
            "{text:?} is zero; give a length such as \"30s\" or \"6h\", or leave the key out"
        ))),
        Err(e) => Err(serde::de::Error::custom(e)),
    }
}

fn optional_one_or_many<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    one_or_many(deserializer).map(Some)
}

impl Config {
    /// Reads the file named by `-c`, else `$OXIRELAY_CONFIG`, else `./oxirelay.toml`.
    pub fn locate(explicit: Option<&Path>) -> PathBuf {
        explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("oxirelay.toml"))
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: describe_toml_error(text, &e),
        })?;
        config.path = path.to_path_buf();
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.rebase_paths(&base);
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Relative paths in a config file are relative to that file, so a
    /// config and its CA or key files can move together.
    fn rebase_paths(&mut self, base: &Path) {
        self.secrets.master_key.rebase(base);
        for key in &mut self.secrets.previous_master_keys {
            key.rebase(base);
        }
        if self.audit.path.is_relative() {
            self.audit.path = base.join(&self.audit.path);
        }
        if let Some(rest) = self.store.url.strip_prefix("sqlite://") {
            let file = Path::new(rest);
            if file.is_relative() && !rest.starts_with(':') {
                self.store.url = format!("sqlite://{}", base.join(file).display());
            }
        }
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for account in &mut self.accounts {
            if let Some(secret) = &mut account.client_secret {
                secret.rebase(base);
            }
            if let Some(secret) = &mut account.service_account_key {
                secret.rebase(base);
            }
            if let Some(ca) = &mut account.ca_file {
                rebase(ca);
            }
        }
        if let Some(sendmail) = &mut self.sendmail {
            rebase(&mut sendmail.spool);
        }
        for webhook in &mut self.webhooks {
            webhook.secret.rebase(base);
        }
        if let Some(http) = &mut self.http {
            if let Some(cert) = &mut http.cert {
                rebase(cert);
            }
            if let Some(key) = &mut http.key {
                rebase(key);
            }
            if let Some(token) = &mut http.metrics_token {
                token.rebase(base);
            }
        }
        if let Some(console) = &mut self.console {
            if let Some(password) = &mut console.admin_password {
                password.rebase(base);
            }
            if let Some(inbox) = &mut console.sandbox_inbox {
                rebase(inbox);
            }
        }
        for listener in &mut self.listeners {
            if let Some(cert) = &mut listener.cert {
                rebase(cert);
            }
            if let Some(key) = &mut listener.key {
                rebase(key);
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(http) = &self.http {
            http.validate()?;
        }
        let mut seen = std::collections::HashSet::new();
        for account in &self.accounts {
            if !seen.insert(account.name.as_str()) {
                return Err(format!("account {:?} is defined twice", account.name));
            }
            crate::oauth::account::validate_account(account)
                .map_err(|e| format!("account {:?}: {e}", account.name))?;
        }
        for user in &self.users {
            match (&user.password_hash, &user.issuer) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "user {:?} has both password_hash and issuer; a user logs in with a password or with tokens of one issuer, not both: make two users",
                        user.name
                    ));
                }
                (None, None) => {
                    return Err(format!(
                        "user {:?} has neither password_hash nor issuer, so it could never log in; add a password_hash (from `oxirelay user add`) or the issuer whose tokens name it",
                        user.name
                    ));
                }
                (None, Some(issuer)) => {
                    if !self.issuers.iter().any(|i| same_issuer(&i.url, issuer)) {
                        return Err(format!(
                            "user {:?} names issuer {issuer:?}, which is not an [[issuer]]",
                            user.name
                        ));
                    }
                }
                (Some(_), None) => {
                    if user.subject.is_some() {
                        return Err(format!(
                            "user {:?} has a subject but no issuer; subject is for bearer users (with issuer)",
                            user.name
                        ));
                    }
                }
            }
            if !seen.contains(user.account.as_str()) {
                return Err(format!(
                    "user {:?} refers to account {:?}, which is not defined",
                    user.name, user.account
                ));
            }
        }
        let mut networks = std::collections::HashSet::new();
        for network in &self.networks {
            if !networks.insert(network.name.as_str()) {
                return Err(format!("network {:?} is defined twice", network.name));
            }
            if !seen.contains(network.account.as_str()) {
                return Err(format!(
                    "network {:?} refers to account {:?}, which is not defined",
                    network.name, network.account
                ));
            }
            if network.addrs.is_empty() {
                return Err(format!(
                    "network {:?} has no addrs; list the devices' addresses or CIDR blocks, e.g. addrs = [\"192.168.10.0/24\"]",
                    network.name
                ));
            }
            if network.allowed_from.is_empty() {
                return Err(format!(
                    "network {:?} has no allowed_from; name the senders its devices may use, e.g. allowed_from = [\"scanner@contoso.com\"]",
                    network.name
                ));
            }
        }
        for listener in &self.listeners {
            for name in &listener.networks {
                if !networks.contains(name.as_str()) {
                    return Err(format!(
                        "listener {}: networks names {name:?}, which is not a [[network]]",
                        listener.addr
                    ));
                }
            }
            if !listener.networks.is_empty() && listener.allow_ips.is_empty() {
                return Err(format!(
                    "listener {}: networks (submission without AUTH) needs allow_ips, so that only those networks can connect",
                    listener.addr
                ));
            }
            if listener.tls == TlsMode::None && listener.allow_ips.is_empty() {
                return Err(format!(
                    "listener {}: tls = \"none\" needs allow_ips; a plaintext listener open to every address would let passwords cross the network unencrypted",
                    listener.addr
                ));
            }
            if listener.tls != TlsMode::None && (listener.cert.is_none() || listener.key.is_none())
            {
                return Err(format!(
                    "listener {}: tls = {:?} needs cert and key (PEM files)",
                    listener.addr, listener.tls
                ));
            }
        }
        if let Some(sendmail) = &self.sendmail {
            let mut names = std::collections::HashSet::new();
            for local in &sendmail.locals {
                let what = format!("[[sendmail.local]] {:?}", local.name);
                if !names.insert(local.name.as_str()) {
                    return Err(format!("{what} is defined twice"));
                }
                if !seen.contains(local.account.as_str()) {
                    return Err(format!(
                        "{what} refers to account {:?}, which is not defined",
                        local.account
                    ));
                }
                if local.users.is_empty() && local.groups.is_empty() {
                    return Err(format!(
                        "{what} names no users and no groups; list who it is, e.g. users = [\"www-data\"] or groups = [\"cron-mail\"]"
                    ));
                }
                if local.allowed_from.is_empty() {
                    return Err(format!(
                        "{what} has no allowed_from; name the senders its users may use, e.g. allowed_from = [\"cron@contoso.com\"]"
                    ));
                }
            }
        }
        for issuer in &self.issuers {
            validate_issuer(issuer).map_err(|e| format!("issuer {:?}: {e}", issuer.url))?;
        }
        let mut webhooks = std::collections::HashSet::new();
        for webhook in &self.webhooks {
            if !webhooks.insert(webhook.name.as_str()) {
                return Err(format!("[[webhook]] {:?} is defined twice", webhook.name));
            }
            webhook
                .validate()
                .map_err(|e| format!("[[webhook]] {:?}: {e}", webhook.name))?;
        }
        if let Some(notify) = &self.notify {
            notify
                .validate(&seen)
                .map_err(|e| format!("[notify]: {e}"))?;
        }
        if self.console.is_some() && self.http.is_none() {
            return Err("[console] needs [http]: the console is served on the HTTP listener; add [http] addr = \"127.0.0.1:8025\" (and cert, key off loopback)".to_string());
        }
        Ok(())
    }

    pub fn account(&self, name: &str) -> Result<&AccountConfig, ConfigError> {
        self.accounts
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| ConfigError::UnknownAccount {
                name: name.to_string(),
                known: if self.accounts.is_empty() {
                    "none".to_string()
                } else {
                    self.accounts
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }

    /// The master key, able to open values sealed by the previous keys.
    pub fn master_key(&self) -> Result<MasterKey, ConfigError> {
        let previous = self
            .secrets
            .previous_master_keys
            .iter()
            .map(load_key)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(load_key(&self.secrets.master_key)?.with_previous(previous))
    }
}

/// Whether two issuer identifiers name the same issuer (a trailing slash
/// is not a difference: configs write it either way).
pub fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

pub fn load_key(reference: &SecretRef) -> Result<MasterKey, ConfigError> {
    Ok(match reference {
        SecretRef::Env(name) => MasterKey::from_env(name)?,
        SecretRef::File(path) => MasterKey::from_file(path)?,
    })
}

fn validate_issuer(issuer: &IssuerConfig) -> Result<(), String> {
    use crate::oauth::account::require_secure_url;
    let url = url::Url::parse(&issuer.url).map_err(|e| {
        format!(
            "url is not a URL ({e}); give the issuer identifier, e.g. https://login.example.com"
        )
    })?;
    require_secure_url(&url, issuer.insecure_loopback)?;
    if let Some(jwks) = &issuer.jwks_url {
        let jwks = url::Url::parse(jwks).map_err(|e| format!("jwks_url is not a URL ({e})"))?;
        require_secure_url(&jwks, issuer.insecure_loopback)?;
    }
    if issuer.audience.trim().is_empty() {
        return Err(
            "audience is empty; give the aud value the issuer puts in tokens meant for this relay"
                .into(),
        );
    }
    Ok(())
}

/// `key = "a"` or `key = ["a", "b"]`, as a list either way.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a string or a list of strings")]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(value) => vec![value],
        OneOrMany::Many(values) => values,
    })
}

/// `host:port`, `[v6]:port` or `v6-address:port` (the last colon splits),
/// with the brackets taken off the host.
pub fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} must be host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{text:?}: {port:?} is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{text:?} has no host before the port"));
    }
    Ok((host.to_string(), port))
}

/// toml's message already names the line, column and key; keep it and add
/// the offending line so the reader sees it without opening the file.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end().to_string();
    match error.span() {
        Some(span) => {
            let line_number = text[..span.start].matches('\n').count() + 1;
            let line = text.lines().nth(line_number - 1).unwrap_or_default();
            if message.contains(SECRET_REFUSAL) {
                let key = line.split('=').next().unwrap_or_default().trim_end();
                format!("line {line_number}: {message}\n    {key} = (value not shown)")
            } else {
                format!("line {line_number}: {message}\n    {line}")
            }
        }
        None => message,
    }
}

/// Whether `host` names this machine: 127.0.0.0/8, ::1 (also IPv4-mapped)
/// or `localhost`. Only such a host may be spoken to without TLS.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    host.parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/oxirelay/oxirelay.toml"))
    }

    const GOOD_ACCOUNT: &str = r#"
[[account]]
name = "office"
provider = "microsoft"
grant = "client_credentials"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
client_secret = "env:OFFICE_CLIENT_SECRET"
user = "noreply@contoso.com"
"#;

    #[test]
    fn a_refused_secret_is_not_repeated_in_the_error() {
        for value in ["hunter2-very-secret", "env:hunter2 very secret"] {
            let text = GOOD_ACCOUNT.replace("env:OFFICE_CLIENT_SECRET", value);
            let error = parse(&text).expect_err(value).to_string();
            assert!(error.contains(SECRET_REFUSAL), "{error}");
            assert!(
                error.contains("client_secret = (value not shown)"),
                "{error}"
            );
            assert!(!error.contains("hunter2"), "the value leaked: {error}");
        }
    }

    #[test]
    fn http_needs_tls_off_loopback() {
        let with = |http: &str| parse(&format!("[http]\n{http}\n{GOOD_ACCOUNT}"));
        let config = with("addr = \"127.0.0.1:8025\"").expect("plain HTTP on loopback");
        assert!(config.http.expect("http").cert.is_none());
        let config =
            with("addr = \"[::]:8443\"\ncert = \"c.pem\"\nkey = \"k.pem\"").expect("HTTPS");
        let http = config.http.expect("http");
        assert_eq!(http.cert, Some(PathBuf::from("/etc/oxirelay/c.pem")));
        for (bad, says) in [
            ("addr = \"0.0.0.0:8025\"", "needs HTTPS"),
            ("addr = \"192.0.2.1:80\"", "needs HTTPS"),
            (
                "addr = \"127.0.0.1:8025\"\ncert = \"c.pem\"",
                "both cert and key",
            ),
            ("addr = \"localhost:8025\"", "not an IP address and port"),
            (
                "addr = \"127.0.0.1:1\"\npublic_url = \"ftp://x\"",
                "http(s) URL",
            ),
        ] {
            let error = with(bad).expect_err(bad).to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn store_retention_defaults_and_values() {
        let config = parse(GOOD_ACCOUNT).expect("valid");
        let day = Duration::from_secs(86_400);
        assert_eq!(config.store.keep_delivered, KeepFor::Duration(7 * day));
        assert_eq!(config.store.keep_events, KeepFor::Duration(30 * day));
        let config = parse(&format!(
            "[store]\nkeep_delivered = \"12h\"\nkeep_events = \"forever\"\n{GOOD_ACCOUNT}"
        ))
        .expect("valid");
        assert_eq!(
            config.store.keep_delivered.duration(),
            Some(Duration::from_secs(12 * 3600))
        );
        assert_eq!(config.store.keep_events, KeepFor::Forever);
        for bad in ["7", "7 days", "-1d", "d", "forever!"] {
            let error = parse(&format!("[store]\nkeep_delivered = \"{bad}\"\n"))
                .expect_err(bad)
                .to_string();
            assert!(
                error.contains("is not a period") && error.contains("forever"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn webhooks_and_notify_are_checked() {
        let hook = |extra: &str| {
            parse(&format!(
                "[[webhook]]\nname = \"ops\"\nurl = \"https://hooks.example.com/x\"\nsecret = \"env:HOOK\"\n{extra}"
            ))
        };
        let webhook = hook("").expect("a plain webhook");
        assert_eq!(
            webhook.webhooks[0].events(),
            WebhookConfig::DEFAULT_EVENTS.to_vec()
        );
        let error = hook("events = [\"Message Delivered\"]").expect_err("not a kind");
        assert!(error.to_string().contains("not an event kind"), "{error}");
        let error = hook("timeout = \"1m\"").expect_err("too long");
        assert!(error.to_string().contains("at most"), "{error}");
        let error = hook("retry_first = \"0s\"").expect_err("zero");
        assert!(error.to_string().contains("is zero"), "{error}");
        let twice = format!(
            "{0}{0}",
            "[[webhook]]\nname = \"ops\"\nurl = \"https://h.example.com/\"\nsecret = \"env:HOOK\"\n"
        );
        assert!(
            parse(&twice)
                .expect_err("twice")
                .to_string()
                .contains("defined twice")
        );

        let notify = |text: &str| parse(&format!("{GOOD_ACCOUNT}\n[notify]\n{text}"));
        assert!(
            notify("repeat_every = \"6h\"\ncommand = [\"/usr/local/bin/page\", \"ops\"]").is_ok()
        );
        for (text, says) in [
            ("command = []", "command is empty"),
            ("email_to = \"ops@contoso.com\"", "needs email_account"),
            ("email_account = \"office\"", "without email_to"),
            (
                "email_to = \"ops@contoso.com\"\nemail_account = [\"nope\"]",
                "not an [[account]]",
            ),
            (
                "email_to = \"not an address\"\nemail_account = \"office\"",
                "not an e-mail address",
            ),
            ("repeat_every = \"6\"", "not a period"),
        ] {
            let error = notify(text).expect_err(text).to_string();
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn design_example_account_parses() {
        let config = parse(GOOD_ACCOUNT).expect("valid");
        assert_eq!(config.accounts[0].name, "office");
        assert_eq!(config.store.url, "sqlite:///etc/oxirelay/oxirelay.db");
    }

    #[test]
    fn literal_secret_is_refused_with_the_reason_and_line() {
        let text = GOOD_ACCOUNT.replace("env:OFFICE_CLIENT_SECRET", "s3cr3t-value");
        let err = parse(&text).expect_err("literal secret").to_string();
        assert!(err.contains("never the value itself"), "{err}");
        assert!(err.contains("line 8"), "{err}");
        assert!(
            !err.contains("s3cr3t-value\n") || err.contains("client_secret"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let text = format!("{GOOD_ACCOUNT}colour = \"blue\"\n");
        let err = parse(&text).expect_err("unknown key").to_string();
        assert!(err.contains("colour"), "{err}");
        assert!(err.contains("line 10"), "{err}");
    }

    #[test]
    fn networks_are_explicit_and_need_a_restricted_listener() {
        let account = "[[account]]\nname = \"office\"\nprovider = \"microsoft\"\ngrant = \"client_credentials\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"00000000-0000-0000-0000-000000000000\"\nclient_secret = \"env:X\"\nuser = \"noreply@contoso.com\"\n";
        let network = |delivering: &str, senders: &str| {
            format!(
                "{account}[[network]]\nname = \"printers\"\naddrs = [\"192.168.10.0/24\"]\naccount = \"{delivering}\"\n{senders}"
            )
        };
        let senders = "allowed_from = [\"scanner@contoso.com\"]\n";
        let plaintext =
            |keys: &str| format!("[[listener]]\naddr = \"0.0.0.0:25\"\ntls = \"none\"\n{keys}");
        let mapped = plaintext("allow_ips = [\"192.168.10.0/24\"]\nnetworks = [\"printers\"]\n");
        let config = parse(&format!("{}{mapped}", network("office", senders))).expect("mapped");
        assert_eq!(config.networks[0].account, "office");
        assert_eq!(config.listeners[0].networks, ["printers"]);
        let starttls_open = "[[listener]]\naddr = \"0.0.0.0:587\"\ntls = \"starttls\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nnetworks = [\"printers\"]\n";
        for (text, expected) in [
            (network("office", ""), "missing field `allowed_from`"),
            (
                network("office", "allowed_from = []\n"),
                "has no allowed_from",
            ),
            (network("nobody", senders), "refers to account \"nobody\""),
            (
                format!(
                    "{}{}",
                    network("office", senders),
                    plaintext("allow_ips = [\"10.0.0.0/8\"]\nnetworks = [\"scanners\"]\n")
                ),
                "networks names \"scanners\", which is not a [[network]]",
            ),
            (
                format!("{}{starttls_open}", network("office", senders)),
                "networks (submission without AUTH) needs allow_ips",
            ),
        ] {
            let err = parse(&text).expect_err(expected).to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn token_endpoint_auth_takes_the_rfc_names_only() {
        let text = format!("{GOOD_ACCOUNT}token_endpoint_auth = \"client_secret_post\"\n");
        let config = parse(&text).expect("valid");
        assert_eq!(
            config.accounts[0].token_endpoint_auth,
            Some(crate::oauth::grant::ClientAuth::Post)
        );
        let text = format!("{GOOD_ACCOUNT}token_endpoint_auth = \"post\"\n");
        let err = parse(&text).expect_err("not a method name").to_string();
        assert!(err.contains("client_secret_basic"), "{err}");
        assert!(err.contains("line 10"), "{err}");
    }

    #[test]
    fn users_log_in_with_a_password_or_an_issuer_never_both_nor_neither() {
        let issuer = "[[issuer]]\nurl = \"https://id.example.net/\"\naudience = \"smtp\"\n";
        let user = |keys: &str| {
            format!("{GOOD_ACCOUNT}{issuer}[[user]]\nname = \"app\"\naccount = \"office\"\n{keys}")
        };
        let bearer = parse(&user(
            "issuer = \"https://id.example.net\"\nsubject = \"app-1\"\n",
        ))
        .expect("a bearer user");
        assert_eq!(bearer.users[0].subject.as_deref(), Some("app-1"));
        assert!(bearer.users[0].check_header_from, "on by default");
        let lenient = parse(&user(
            "password_hash = \"$argon2id$x\"\ncheck_header_from = false\n",
        ))
        .expect("the header check turned off");
        assert!(!lenient.users[0].check_header_from);
        parse(&user("password_hash = \"$argon2id$x\"\n")).expect("a password user");
        for (keys, expected) in [
            (
                "password_hash = \"$argon2id$x\"\nissuer = \"https://id.example.net\"\n",
                "has both password_hash and issuer",
            ),
            ("", "has neither password_hash nor issuer"),
            (
                "issuer = \"https://other.example.net\"\n",
                "names issuer \"https://other.example.net\", which is not an [[issuer]]",
            ),
            (
                "password_hash = \"$argon2id$x\"\nsubject = \"app-1\"\n",
                "has a subject but no issuer",
            ),
        ] {
            let err = parse(&user(keys)).expect_err(expected).to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn plaintext_listener_needs_allow_list() {
        let text = "[[listener]]\naddr = \"0.0.0.0:25\"\ntls = \"none\"\n";
        let err = parse(text)
            .expect_err("open plaintext listener")
            .to_string();
        assert!(err.contains("allow_ips"), "{err}");
    }

    #[test]
    fn secret_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "value\n").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let err = SecretRef::File(path.clone())
                .resolve()
                .expect_err("too open")
                .to_string();
            assert!(err.contains("chmod 600"), "{err}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        assert_eq!(
            SecretRef::File(path).resolve().expect("readable").expose(),
            "value"
        );
    }

    #[test]
    fn issuers_must_be_https_unless_marked_loopback() {
        let issuer = |url: &str, loopback: bool| {
            format!(
                "[[issuer]]\nurl = \"{url}\"\naudience = \"smtp\"\ninsecure_loopback = {loopback}\n"
            )
        };
        let config = parse(&issuer("https://id.example.net", false)).expect("valid");
        assert_eq!(config.issuers[0].audience, "smtp");
        assert!(parse(&issuer("http://127.0.0.1:8080", true)).is_ok());
        let err = parse(&issuer("http://id.example.net", false))
            .expect_err("plain HTTP issuer")
            .to_string();
        assert!(err.contains("not HTTPS"), "{err}");
        let err = parse("[[issuer]]\nurl = \"https://id.example.net\"\naudience = \"\"\n")
            .expect_err("empty audience")
            .to_string();
        assert!(err.contains("audience"), "{err}");
    }

    #[test]
    fn pins_are_one_string_or_a_list() {
        let one = format!("{GOOD_ACCOUNT}tls_pin_sha256 = \"a\"\n");
        let config = Config::parse(&one, Path::new("x.toml"));
        // "a" is no pin: the account's validation says so, after parsing.
        let err = config.expect_err("not a pin").to_string();
        assert!(err.contains("tls_pin_sha256"), "{err}");
        let text: AccountConfig = toml::from_str(
            "name = \"n\"\nprovider = \"generic\"\ngrant = \"client_credentials\"\nclient_id = \"c\"\nuser = \"u@x\"\ntls_pin_sha256 = [\"a\", \"b\"]\n",
        )
        .expect("a list parses");
        assert_eq!(text.tls_pin_sha256, ["a", "b"]);
        let err = toml::from_str::<AccountConfig>(
            "name = \"n\"\nprovider = \"generic\"\ngrant = \"client_credentials\"\nclient_id = \"c\"\nuser = \"u@x\"\ntls_pin_sha256 = 3\n",
        )
        .expect_err("a number is not a pin")
        .to_string();
        assert!(err.contains("a string or a list of strings"), "{err}");
    }

    /// The words of a config file: tables, the keys of DESIGN.md, values
    /// of every TOML type, quotes and brackets alone, multi-byte text
    /// (error messages cut the file at byte offsets), and now and then any
    /// characters at all.
    fn config_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            8 => prop::sample::select(vec![
                "\n", "\r\n", " ", " = ", "[store]", "[secrets]", "[[account]]", "[[listener]]",
                "[[user]]", "[[network]]", "[[issuer]]", "[http]", "[audit]", "url", "name",
                "provider", "grant", "tenant", "client_id", "client_secret", "user", "send_as",
                "smtp", "tls", "sasl", "scopes", "addr", "cert", "key", "allow_ips", "networks",
                "postmaster", "password_hash", "issuer", "subject", "account", "allowed_from",
                "addrs", "audience", "required_scope", "insecure_loopback", "master_key",
                "tls_pin_sha256", "refresh_skew_secs", "\"microsoft\"", "\"generic\"",
                "\"client_credentials\"", "\"device_code\"", "\"starttls\"", "\"none\"",
                "\"env:X\"", "\"file:k\"", "\"s3cret\"", "\"a@b.c\"", "\"127.0.0.1:0\"",
                "\"https://id.example\"", "\"http://127.0.0.1:1\"", "\"sqlite://x.db\"",
                "[\"a\", \"b\"]", "[]", "true", "false", "0", "-1", "99999999999999999999",
                "1.5", "\"", "'", "\"\"\"", "[", "]", "{", "}", ",", "#", "=", "\\",
                "\u{e9}", "\u{4e2d}\u{6587}", "\u{1f600}",
            ])
            .prop_map(str::to_string),
            1 => "\\PC{0,6}",
        ];
        prop::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config(1024))]

        /// No text makes loading panic; a refusal that names a line names
        /// one the file has.
        #[test]
        fn fuzz_config_parse_never_panics(text in config_text()) {
            if let Err(error) = parse(&text) {
                let message = error.to_string();
                if let Some(rest) = message.split("line ").nth(1) {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    if let Ok(line) = digits.parse::<usize>() {
                        prop_assert!(
                            line >= 1 && line <= text.lines().count() + 1,
                            "line {} of {}: {}", line, text.lines().count(), message
                        );
                    }
                }
            }
        }

        /// A key DESIGN.md does not define, anywhere in a valid file's
        /// table, is refused with its name and its line.
        #[test]
        fn fuzz_config_unknown_keys_are_named_with_their_line(
            key in "[a-z][a-z0-9_]{0,16}",
            at in 2..9usize,
        ) {
            let known = [
                "name", "provider", "grant", "tenant", "client_id", "client_secret",
                "service_account_key", "user", "send_as", "issuer", "token_url",
                "authorize_url", "device_url", "revoke_url", "introspect_url", "jwks_url",
                "scopes", "smtp", "tls", "ca_file", "tls_pin_sha256", "sasl",
                "insecure_loopback", "audience", "refresh_skew_secs", "token_endpoint_auth",
            ];
            prop_assume!(!known.contains(&key.as_str()));
            // GOOD_ACCOUNT: an empty line, the header on line 2, keys on 3 to 9.
            let mut lines: Vec<&str> = GOOD_ACCOUNT.split('\n').collect();
            let added = format!("{key} = 1");
            lines.insert(at, &added);
            let error = parse(&lines.join("\n")).expect_err("an unknown key").to_string();
            prop_assert!(error.contains(&format!("`{key}`")), "{}", error);
            prop_assert!(error.contains(&format!("line {}", at + 1)), "{}", error);
        }
    }

    #[test]
    fn host_port() {
        assert_eq!(
            parse_host_port("mail.example:587"),
            Ok(("mail.example".into(), 587))
        );
        assert_eq!(parse_host_port("[::1]:465"), Ok(("::1".into(), 465)));
        assert!(parse_host_port("mail.example").is_err());
        assert!(parse_host_port("mail.example:smtp").is_err());
        assert!(parse_host_port(":25").is_err());
    }

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["10.0.0.1", "smtp.office365.com", "0.0.0.0"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
