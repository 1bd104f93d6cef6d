//! An account as the broker and the delivery code use it: the config entry
//! with the preset's defaults filled in and every rule about endpoints and
//! transport security checked once, here.

use crate::config::{
    AccountConfig, ConfigError, LargeMessages, TlsMode, Transport, is_loopback_host,
    parse_host_port,
};
use crate::oauth::grant::ClientAuth;
use crate::oauth::preset::{ApiPreset, GrantKind, Preset, ProviderKind, api_preset, preset};
use crate::secret::Secret;
use crate::smtp::sasl::Mechanism;
use crate::tls::{ServerTrust, SpkiPin};
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// Endpoints of an authorization server, from the preset, the config or
/// RFC 8414 discovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub token: Option<Url>,
    pub authorize: Option<Url>,
    pub device: Option<Url>,
    pub revoke: Option<Url>,
    pub introspect: Option<Url>,
    pub jwks: Option<Url>,
    /// What discovery said besides the endpoints (empty without discovery).
    pub metadata: ProviderMetadata,
}

/// What a provider's metadata document says that shapes our requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderMetadata {
    /// `token_endpoint_auth_methods_supported`, if the document has it.
    pub token_auth_methods: Option<Vec<String>>,
    /// `scopes_supported`, if the document has it.
    pub scopes_supported: Option<Vec<String>>,
    /// The document describes an OpenID provider (OpenID Connect
    /// Discovery fields, or `openid` among its scopes).
    pub openid: bool,
}

impl ProviderMetadata {
    /// False only when the provider lists its scopes and `scope` is not one.
    pub fn may_support_scope(&self, scope: &str) -> bool {
        self.scopes_supported
            .as_ref()
            .is_none_or(|scopes| scopes.iter().any(|s| s == scope))
    }
}

#[derive(Debug, Clone)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// From `ca_file` or `tls_pin_sha256` (at most one of them is set).
    pub trust: ServerTrust,
}

/// Where an HTTP transport sends, and how its server is checked.
#[derive(Debug, Clone)]
pub struct ApiTarget {
    pub preset: &'static ApiPreset,
    /// The base URL (no trailing slash); always `https://`.
    pub base: Url,
    /// The same trust as the SMTP server's (`ca_file`, `tls_pin_sha256`).
    pub trust: ServerTrust,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub preset: &'static Preset,
    pub grant: GrantKind,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub service_account_key: Option<Secret>,
    pub user: String,
    pub send_as: Vec<String>,
    pub tenant: Option<String>,
    pub issuer: Option<Url>,
    /// Endpoints known without discovery (preset or config).
    pub endpoints: Endpoints,
    pub scopes: Vec<String>,
    pub smtp: SmtpTarget,
    pub sasl: Mechanism,
    pub insecure_loopback: bool,
    pub refresh_skew: Duration,
    /// The `aud` of the account's JWT access tokens, if configured.
    pub audience: Option<String>,
    /// `token_endpoint_auth` from the config, if set.
    pub token_endpoint_auth: Option<ClientAuth>,
    pub transport: Transport,
    /// The HTTP API, for `graph` and `gmail_api`.
    pub api: Option<ApiTarget>,
    pub large_messages: LargeMessages,
    /// The preset's sending limits with `[account.limits]` applied.
    pub limits: crate::oauth::preset::ProviderLimits,
}

impl Account {
    /// Builds the runtime account, reading its secrets.
    pub fn from_config(config: &AccountConfig) -> Result<Account, ConfigError> {
        validate_account(config).map_err(|message| ConfigError::Invalid {
            path: PathBuf::from(format!("account {:?}", config.name)),
            message,
        })?;
        let preset = preset(config.provider);
        let tenant = config.tenant.clone();
        let template = |value: Option<&str>| -> Option<Url> {
            let text = value?.replace("{tenant}", tenant.as_deref().unwrap_or("common"));
            Url::parse(&text).ok()
        };
        let configured = |value: &Option<String>| value.as_deref().and_then(|u| Url::parse(u).ok());
        let endpoints = Endpoints {
            token: configured(&config.token_url).or_else(|| template(preset.token_url)),
            authorize: configured(&config.authorize_url).or_else(|| template(preset.authorize_url)),
            device: configured(&config.device_url).or_else(|| template(preset.device_url)),
            revoke: configured(&config.revoke_url).or_else(|| template(preset.revoke_url)),
            introspect: configured(&config.introspect_url),
            jwks: configured(&config.jwks_url),
            metadata: ProviderMetadata::default(),
        };
        let (host, port) = smtp_host_port(config, preset)?;
        let api = api_target(config)?;
        Ok(Account {
            name: config.name.clone(),
            preset,
            grant: config.grant,
            client_id: config.client_id.clone(),
            client_secret: config
                .client_secret
                .as_ref()
                .map(|s| s.resolve())
                .transpose()?,
            service_account_key: config
                .service_account_key
                .as_ref()
                .map(|s| s.resolve())
                .transpose()?,
            user: config.user.clone(),
            send_as: config.send_as.clone(),
            tenant,
            issuer: configured(&config.issuer),
            endpoints,
            scopes: config.scopes.clone().unwrap_or_else(|| {
                api_preset(config.transport)
                    .map_or(preset.scopes_for(config.grant), |api| {
                        api.scopes_for(config.grant)
                    })
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }),
            transport: config.transport,
            api,
            large_messages: config.large_messages,
            limits: crate::oauth::preset::ProviderLimits {
                messages_per_minute: config
                    .limits
                    .messages_per_minute
                    .or(preset.limits.messages_per_minute),
                messages_per_day: config
                    .limits
                    .messages_per_day
                    .or(preset.limits.messages_per_day),
                recipients_per_day: config
                    .limits
                    .recipients_per_day
                    .or(preset.limits.recipients_per_day),
                recipients_per_message: config
                    .limits
                    .recipients_per_message
                    .or(preset.limits.recipients_per_message),
            },
            smtp: SmtpTarget {
                host,
                port,
                tls: config.tls.unwrap_or(preset.tls),
                trust: server_trust(config)?,
            },
            sasl: config.sasl.unwrap_or(preset.sasl),
            insecure_loopback: config.insecure_loopback,
            audience: config.audience.clone(),
            token_endpoint_auth: config.token_endpoint_auth,
            refresh_skew: config
                .refresh_skew_secs
                .map(Duration::from_secs)
                .unwrap_or(preset.refresh_skew),
        })
    }

    /// How this account's client authenticates, at every endpoint that
    /// authenticates clients: the config's `token_endpoint_auth`, else the
    /// preset's (Microsoft and Google document the secret in the body),
    /// else what the provider's metadata offers (Basic when it says nothing).
    pub fn client_auth(&self, metadata: &ProviderMetadata) -> ClientAuth {
        self.token_endpoint_auth
            .or(self.preset.client_auth)
            .unwrap_or_else(|| ClientAuth::for_server(metadata.token_auth_methods.as_deref()))
    }

    /// The store's key for this account's sealed values: binding the
    /// ciphertext to the account stops a row being copied to another.
    pub fn seal_context(&self) -> String {
        seal_context(&self.name)
    }
}

pub fn seal_context(account: &str) -> String {
    format!("oxirelay account {account}")
}

/// The store's kind name for a sealed service-account key.
pub const SERVICE_ACCOUNT_KEY: &str = "service_account_key";

fn smtp_host_port(config: &AccountConfig, preset: &Preset) -> Result<(String, u16), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: PathBuf::from(format!("account {:?}", config.name)),
        message,
    };
    match &config.smtp {
        Some(text) => parse_host_port(text).map_err(|e| invalid(format!("smtp = {e}"))),
        // A generic account on an HTTP API needs no SMTP server: nothing
        // opens an SMTP session for it (large_messages = "smtp" requires
        // `smtp`, checked in `validate_transport`).
        None if preset.smtp_host.is_none() && config.transport != Transport::Smtp => {
            Ok((String::new(), 0))
        }
        None => preset
            .smtp_host
            .map(|h| (h.to_string(), preset.smtp_port))
            .ok_or_else(|| invalid("a generic account needs smtp = \"host:port\"".to_string())),
    }
}

fn api_target(config: &AccountConfig) -> Result<Option<ApiTarget>, ConfigError> {
    let Some(api) = api_preset(config.transport) else {
        return Ok(None);
    };
    let invalid = |message: String| ConfigError::Invalid {
        path: PathBuf::from(format!("account {:?}", config.name)),
        message,
    };
    let text = config.api_url.as_deref().unwrap_or(api.base_url);
    let base = Url::parse(text.trim_end_matches('/'))
        .map_err(|e| invalid(format!("api_url = {text:?} is not a URL: {e}")))?;
    Ok(Some(ApiTarget {
        preset: api,
        base,
        trust: server_trust(config)?,
    }))
}

/// The rules of `transport`, `api_url` and `large_messages`: an API the
/// provider has, HTTPS, and scopes that API sends with (least scope).
fn validate_transport(config: &AccountConfig) -> Result<(), String> {
    let Some(api) = api_preset(config.transport) else {
        if config.api_url.is_some() {
            return Err("api_url is for transport = \"graph\" or \"gmail_api\"; this account sends over SMTP".to_string());
        }
        return Ok(());
    };
    let transport = config.transport;
    if !api.providers.contains(&config.provider) {
        let alternative = match config.provider {
            ProviderKind::Microsoft => "transport = \"graph\" (or \"smtp\")",
            ProviderKind::Google => "transport = \"gmail_api\" (or \"smtp\")",
            ProviderKind::Generic => "transport = \"smtp\"",
        };
        return Err(format!(
            "transport = \"{transport}\" is {}, which provider = \"{}\" does not have; use {alternative}",
            api.title, config.provider
        ));
    }
    match &config.api_url {
        Some(text) => {
            let url =
                Url::parse(text).map_err(|e| format!("api_url = {text:?} is not a URL: {e}"))?;
            // Tokens go in every request: HTTPS always. The sandbox serves
            // its APIs over HTTPS too, with its CA in ca_file.
            if url.scheme() != "https" {
                return Err(format!(
                    "api_url = {text:?} is not HTTPS; every request carries the access token, so the API must be https:// (for the sandbox, its https:// address with ca_file = its CA)"
                ));
            }
        }
        None if config.provider == ProviderKind::Generic => {
            return Err(format!(
                "a generic account with transport = \"{transport}\" needs api_url = \"https://host:port\" (the server that speaks {})",
                api.title
            ));
        }
        None => {}
    }
    let smtp_too = config.large_messages == LargeMessages::Smtp;
    if smtp_too && config.provider == ProviderKind::Microsoft {
        return Err("large_messages = \"smtp\" cannot work with Microsoft: an access token is for one resource (Graph or Exchange Online's SMTP), and an account has one token. Leave large_messages = \"bounce\" (the sender gets a DSN naming the 4 MB limit), and send large messages through a second account with transport = \"smtp\"".to_string());
    }
    if let Some(scopes) = &config.scopes
        && let Some(reason) = api.scope_refusal(config.provider, config.grant, scopes, smtp_too)
    {
        return Err(reason);
    }
    if config.large_messages == LargeMessages::Smtp
        && config.provider == ProviderKind::Generic
        && config.smtp.is_none()
    {
        return Err("large_messages = \"smtp\" sends oversized messages over SMTP: a generic account then needs smtp = \"host:port\"".to_string());
    }
    Ok(())
}

/// How the upstream server is checked: pinned keys, a CA file, or the
/// system roots.
fn server_trust(config: &AccountConfig) -> Result<ServerTrust, ConfigError> {
    let pins = parse_pins(config).map_err(|message| ConfigError::Invalid {
        path: PathBuf::from(format!("account {:?}", config.name)),
        message,
    })?;
    Ok(if pins.is_empty() {
        ServerTrust::from_ca_file(config.ca_file.as_deref())
    } else {
        ServerTrust::Pinned(pins)
    })
}

fn parse_pins(config: &AccountConfig) -> Result<Vec<SpkiPin>, String> {
    config
        .tls_pin_sha256
        .iter()
        .map(|text| SpkiPin::parse(text).map_err(|e| format!("tls_pin_sha256: {e}")))
        .collect()
}

/// The rules of `ca_file` and `tls_pin_sha256` together.
fn validate_trust(config: &AccountConfig) -> Result<(), String> {
    let pins = parse_pins(config)?;
    if pins.is_empty() {
        return Ok(());
    }
    if config.ca_file.is_some() {
        return Err("ca_file and tls_pin_sha256 are both set; a pin replaces the certificate chain check, so ca_file would be ignored: keep one (the pin, for a server whose certificate webpki refuses)".to_string());
    }
    if config.tls == Some(TlsMode::None) {
        return Err(
            "tls_pin_sha256 needs TLS; with tls = \"none\" there is no key to check".to_string(),
        );
    }
    Ok(())
}

/// Every rule a single account entry must meet; the message names the fix.
pub fn validate_account(config: &AccountConfig) -> Result<(), String> {
    let preset = preset(config.provider);
    if let Some(reason) = preset.grant_refusal(config.grant) {
        return Err(reason);
    }
    if config.provider == ProviderKind::Microsoft && config.tenant.is_none() {
        return Err(
            "Microsoft accounts need tenant = \"<your tenant>.onmicrosoft.com\" (or the tenant id)"
                .to_string(),
        );
    }
    if config.grant == GrantKind::ClientCredentials && config.client_secret.is_none() {
        return Err(
            "the client_credentials grant needs client_secret = \"env:NAME\" or \"file:PATH\""
                .to_string(),
        );
    }
    if config.provider == ProviderKind::Generic
        && config.issuer.is_none()
        && config.token_url.is_none()
    {
        return Err(
            "a generic account needs issuer (for RFC 8414 discovery) or token_url".to_string(),
        );
    }
    if config.user.trim().is_empty() || !config.user.contains('@') {
        return Err(format!(
            "user = {:?} must be the mailbox address used as the SASL user",
            config.user
        ));
    }
    for (key, value) in [
        ("issuer", &config.issuer),
        ("token_url", &config.token_url),
        ("authorize_url", &config.authorize_url),
        ("device_url", &config.device_url),
        ("revoke_url", &config.revoke_url),
        ("introspect_url", &config.introspect_url),
        ("jwks_url", &config.jwks_url),
    ] {
        if let Some(text) = value {
            let url =
                Url::parse(text).map_err(|e| format!("{key} = {text:?} is not a URL: {e}"))?;
            require_secure_url(&url, config.insecure_loopback)
                .map_err(|e| format!("{key}: {e}"))?;
        }
    }
    validate_trust(config)?;
    validate_transport(config)?;
    if config.tls == Some(TlsMode::None) {
        let host = config
            .smtp
            .as_deref()
            .and_then(|s| s.rsplit_once(':'))
            .map(|(h, _)| h)
            .unwrap_or_default();
        if !(config.insecure_loopback && is_loopback_host(host)) {
            return Err("tls = \"none\" would send tokens unencrypted; it is allowed only with insecure_loopback = true and a loopback smtp host (the sandbox)".to_string());
        }
    }
    Ok(())
}

/// HTTPS for every OAuth request, except loopback hosts of an account
/// marked `insecure_loopback` (the sandbox).
pub fn require_secure_url(url: &Url, insecure_loopback: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if insecure_loopback && url.host_str().map(is_loopback_host).unwrap_or(false) => {
            Ok(())
        }
        "http" if insecure_loopback => Err(format!(
            "{url} is plain HTTP to a host that is not loopback; insecure_loopback allows http:// only for 127.0.0.1, ::1 and localhost"
        )),
        _ => Err(format!(
            "{url} is not HTTPS; OAuth requests carry secrets and must use https://"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(extra: &str) -> AccountConfig {
        toml::from_str(&format!(
            "name = \"lab\"\nprovider = \"generic\"\ngrant = \"client_credentials\"\ntoken_url = \"https://id.example.net/token\"\nclient_id = \"relay\"\nclient_secret = \"env:LAB_SECRET\"\nuser = \"a@example.net\"\nsmtp = \"mail.example.net:587\"\n{extra}"
        ))
        .expect("parses")
    }

    #[test]
    fn trust_is_the_system_a_ca_file_or_pins() {
        let pin = SpkiPin::of_spki(b"key");
        let other = SpkiPin::of_spki(b"next key");
        assert_eq!(
            server_trust(&generic("")).expect("ok"),
            ServerTrust::SystemRoots
        );
        assert_eq!(
            server_trust(&generic("ca_file = \"/etc/ca.pem\"\n")).expect("ok"),
            ServerTrust::CaFile(PathBuf::from("/etc/ca.pem"))
        );
        let one = generic(&format!("tls_pin_sha256 = \"{pin}\"\n"));
        validate_account(&one).expect("valid");
        assert_eq!(
            server_trust(&one).expect("ok"),
            ServerTrust::Pinned(vec![pin])
        );
        let two = generic(&format!(
            "tls_pin_sha256 = [\"{pin}\", \"sha256//{other}\"]\n"
        ));
        assert_eq!(
            server_trust(&two).expect("ok"),
            ServerTrust::Pinned(vec![pin, other])
        );
    }

    #[test]
    fn pins_are_checked_with_their_neighbours() {
        let pin = SpkiPin::of_spki(b"key");
        let err = validate_account(&generic(&format!(
            "tls_pin_sha256 = \"{pin}\"\nca_file = \"/etc/ca.pem\"\n"
        )))
        .expect_err("both");
        assert!(
            err.contains("ca_file and tls_pin_sha256 are both set"),
            "{err}"
        );
        let err = validate_account(&generic("tls_pin_sha256 = \"abc\"\n")).expect_err("bad pin");
        assert!(err.starts_with("tls_pin_sha256: \"abc\""), "{err}");
        let err = validate_account(&generic(&format!(
            "tls_pin_sha256 = \"{pin}\"\ntls = \"none\"\n"
        )))
        .expect_err("no TLS");
        assert!(err.contains("needs TLS"), "{err}");
    }

    #[test]
    fn http_transports_are_checked_with_the_alternative() {
        let graph = |extra: &str| {
            let text = format!(
                "name = \"lab\"\nprovider = \"generic\"\ngrant = \"authorization_code\"\ntoken_url = \"https://id.example.net/token\"\nclient_id = \"relay\"\nuser = \"a@example.net\"\ntransport = \"graph\"\n{extra}"
            );
            toml::from_str::<AccountConfig>(&text).expect("parses")
        };
        let err = validate_account(&graph("")).expect_err("no api_url");
        assert!(err.contains("needs api_url"), "{err}");
        let err = validate_account(&graph("api_url = \"http://127.0.0.1:9443\"\n"))
            .expect_err("plain HTTP");
        assert!(err.contains("is not HTTPS"), "{err}");
        let ok = graph("api_url = \"https://127.0.0.1:9443\"\n");
        validate_account(&ok).expect("valid");
        let account = Account::from_config(&ok).expect("no smtp needed");
        assert_eq!(
            account.scopes,
            ["https://graph.microsoft.com/Mail.Send", "offline_access"]
        );
        let api = account.api.expect("an API target");
        assert_eq!(api.base.as_str(), "https://127.0.0.1:9443/");
        let err = validate_account(&graph(
            "api_url = \"https://127.0.0.1:9443\"\nlarge_messages = \"smtp\"\n",
        ))
        .expect_err("fallback without smtp");
        assert!(err.contains("smtp = \"host:port\""), "{err}");
        let google: AccountConfig = toml::from_str(
            "name = \"g\"\nprovider = \"google\"\ngrant = \"authorization_code\"\nclient_id = \"c\"\nuser = \"a@example.com\"\ntransport = \"graph\"\n",
        )
        .expect("parses");
        let err = validate_account(&google).expect_err("Google has no Graph");
        assert!(err.contains("transport = \"gmail_api\""), "{err}");
    }

    #[test]
    fn http_only_for_marked_loopback() {
        let url = |s| Url::parse(s).expect("url");
        assert!(require_secure_url(&url("https://login.microsoftonline.com/x"), false).is_ok());
        assert!(require_secure_url(&url("http://127.0.0.1:8080/token"), true).is_ok());
        assert!(require_secure_url(&url("http://127.0.0.1:8080/token"), false).is_err());
        assert!(require_secure_url(&url("http://id.example.net/token"), true).is_err());
    }
}
