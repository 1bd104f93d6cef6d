//! `oxirelay doctor`: a self-audit of a deployment against the practices
//! oxirelay is built on. Each check says pass, warn or fail, why, and how
//! to fix it; the result is data so the CLI can print it or emit JSON.

use crate::config::{Config, SecretRef, TlsMode, Transport, is_loopback_host};
use crate::delivery::classify::AdminStep;
use crate::oauth::preset::{GrantKind, ProviderKind, api_preset, preset};
use crate::store::{AccountState, Store, TokenRecord};
use serde::Serialize;
use std::path::Path;

const DAY: i64 = 86_400;
/// Microsoft refresh tokens die after 90 days unused; warn with a margin.
const MICROSOFT_IDLE_WARN_DAYS: i64 = 75;
/// Google refresh tokens of apps of the External user type in "Testing"
/// publishing status die 7 days after consent.
const GOOGLE_TESTING_LIFETIME_DAYS: i64 = 7;
const UNUSED_WARN_DAYS: i64 = 30;
const KEY_AGE_WARN_DAYS: i64 = 365;
/// `serve` validates every 30 minutes by default; a day without a check
/// means no relay is running or validation is failing silently.
const VALIDATION_WARN_HOURS: i64 = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: String,
    pub status: Status,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn finding(
    check: impl Into<String>,
    status: Status,
    message: impl Into<String>,
    fix: Option<String>,
) -> Finding {
    Finding {
        check: check.into(),
        status,
        message: message.into(),
        fix,
    }
}

fn pass(check: impl Into<String>, message: impl Into<String>) -> Finding {
    finding(check, Status::Pass, message, None)
}

/// Runs every check. The store is optional: without one (it cannot be
/// opened), the checks that need account history are reported as skipped.
pub async fn run(config: &Config, store: Option<&dyn Store>) -> Vec<Finding> {
    let mut findings = Vec::new();
    check_master_key(config, &mut findings);
    check_config_file(&config.path, &mut findings);
    check_store_file(config, &mut findings);
    if let Some(finding) = check_store_tls(&config.store.url) {
        findings.push(finding);
    }
    for account in &config.accounts {
        check_account_config(account, &mut findings);
    }
    check_listeners(config, &mut findings);
    check_users(config, &mut findings);
    match store {
        Some(store) => match store.token_records().await {
            Ok(records) => {
                let now = crate::clock::now_unix();
                check_store_usage(config, store, now, &mut findings).await;
                let events = store.events(10_000).await.unwrap_or_default();
                for account in &config.accounts {
                    let record = records.iter().find(|r| r.account == account.name);
                    check_account_health(account, record, now, &mut findings);
                    check_last_validation(account, &events, now, &mut findings);
                    recommend_graph(account, record, &events, &mut findings);
                }
            }
            Err(e) => findings.push(finding(
                "store",
                Status::Fail,
                format!("cannot read account state from the store: {e}"),
                None,
            )),
        },
        None => findings.push(finding(
            "store",
            Status::Warn,
            "the store could not be opened; account history checks were skipped",
            Some("check [store] url and that the master key is available".into()),
        )),
    }
    findings
}

#[cfg(unix)]
fn mode_of(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

#[cfg(not(unix))]
fn mode_of(_path: &Path) -> Option<u32> {
    None
}

fn check_secret_file(check: &str, reference: &SecretRef, findings: &mut Vec<Finding>) {
    match reference {
        SecretRef::Env(name) => {
            if std::env::var_os(name).is_some() {
                findings.push(pass(check, format!("from environment variable {name}")));
            } else {
                findings.push(finding(
                    check,
                    Status::Fail,
                    format!("environment variable {name} is not set"),
                    Some(format!("set {name} in the service's environment (systemd: EnvironmentFile= with mode 0600)")),
                ));
            }
        }
        SecretRef::File(path) => match mode_of(path) {
            None if !path.exists() => findings.push(finding(
                check,
                Status::Fail,
                format!("{} does not exist", path.display()),
                Some("create it, or fix the path".into()),
            )),
            Some(mode) if mode & 0o077 != 0 => findings.push(finding(
                check,
                Status::Fail,
                format!(
                    "{} is readable by group or others (mode {mode:o})",
                    path.display()
                ),
                Some(format!("chmod 600 {}", path.display())),
            )),
            _ => findings.push(pass(check, format!("{} is private", path.display()))),
        },
    }
}

fn check_master_key(config: &Config, findings: &mut Vec<Finding>) {
    check_secret_file("master key", &config.secrets.master_key, findings);
    match config.master_key() {
        Ok(_) => {}
        Err(e) => findings.push(finding("master key", Status::Fail, e.to_string(), None)),
    }
    if let SecretRef::File(path) = &config.secrets.master_key
        && let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified())
    {
        let age_days = (crate::clock::now_unix() - crate::clock::to_unix(modified)) / DAY;
        if age_days > KEY_AGE_WARN_DAYS {
            findings.push(finding(
                "master key age",
                Status::Warn,
                format!("the master key file was last changed {age_days} days ago"),
                Some("rotate it: oxirelay rotate-key".into()),
            ));
        }
    }
}

fn check_config_file(path: &Path, findings: &mut Vec<Finding>) {
    if let Some(mode) = mode_of(path)
        && mode & 0o022 != 0
    {
        findings.push(finding(
            "config file",
            Status::Warn,
            format!("{} is writable by group or others (mode {mode:o}); whoever can edit it can redirect mail and tokens", path.display()),
            Some(format!("chmod go-w {}", path.display())),
        ));
    }
}

fn check_store_file(config: &Config, findings: &mut Vec<Finding>) {
    let Some(file) = config.store.url.strip_prefix("sqlite://") else {
        return;
    };
    let path = Path::new(file.split('?').next().unwrap_or(file));
    if let Some(mode) = mode_of(path)
        && mode & 0o077 != 0
    {
        findings.push(finding(
            "store file",
            Status::Warn,
            format!("{} is readable by group or others (mode {mode:o}); tokens in it are sealed, but queued mail is not", path.display()),
            Some(format!("chmod 600 {}", path.display())),
        ));
    }
}

/// A PostgreSQL store off this machine carries sealed tokens and every
/// queued message over the network: only `sslmode=verify-full` both
/// encrypts and checks that the server is the one named (`require` and
/// `verify-ca` accept any server with a certificate from the CA, and the
/// default `prefer` falls back to plaintext). `None` for other stores.
fn check_store_tls(url: &str) -> Option<Finding> {
    const CHECK: &str = "store tls";
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return None;
    }
    let shown = crate::store::redact_url(url);
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(e) => {
            return Some(finding(
                CHECK,
                Status::Warn,
                format!("cannot read the store URL {shown}: {e}"),
                Some(
                    "write [store] url as postgres://user@host:5432/database?sslmode=verify-full"
                        .into(),
                ),
            ));
        }
    };
    let query = |name: &str| {
        parsed
            .query_pairs()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    };
    // `host=` in the query wins over the URL's host, as in libpq; a path
    // there (or no host at all) is a Unix socket: on this machine.
    let host = query("host").unwrap_or_else(|| parsed.host_str().unwrap_or_default().to_string());
    if host.is_empty() || host.starts_with('/') {
        return Some(pass(
            CHECK,
            "the store is reached through a local Unix socket",
        ));
    }
    if crate::config::is_loopback_host(&host) {
        return Some(pass(
            CHECK,
            format!("the store is on this machine ({host})"),
        ));
    }
    let mode = query("sslmode").unwrap_or_else(|| "prefer".to_string());
    if mode == "verify-full" {
        return Some(pass(
            CHECK,
            format!(
                "the store at {host} is reached over TLS with its certificate and name verified (sslmode=verify-full)"
            ),
        ));
    }
    let risk = match mode.as_str() {
        "verify-ca" => {
            "TLS, but any server with a certificate from the CA is accepted, whatever its name"
        }
        "require" => {
            "TLS, but any certificate is accepted: whoever sits on the path can pose as the server"
        }
        _ => {
            "possibly in plaintext: the server may refuse TLS and the connection goes on without it"
        }
    };
    Some(finding(
        CHECK,
        Status::Warn,
        format!("the store at {host} is reached over the network with sslmode={mode}: {risk}; sealed tokens and queued mail cross that connection"),
        Some("add sslmode=verify-full to [store] url (and sslrootcert=/path/to/ca.pem for a private CA), e.g. postgres://oxirelay@db.example.net/oxirelay?sslmode=verify-full".into()),
    ))
}

/// Retention runs in `serve` every few minutes; an item this much past its
/// time means no relay has been removing anything (or it fails).
const RETENTION_LATE_WARN: i64 = DAY;

/// The store's size and the oldest item that retention governs (issue 10).
async fn check_store_usage(
    config: &Config,
    store: &dyn Store,
    now: i64,
    findings: &mut Vec<Finding>,
) {
    let usage = match store.usage().await {
        Ok(usage) => usage,
        Err(crate::store::StoreError::Unsupported(_)) => return,
        Err(e) => {
            findings.push(finding(
                "store size",
                Status::Warn,
                format!("cannot read the store's size: {e}"),
                None,
            ));
            return;
        }
    };
    let megabytes = |bytes: u64| bytes as f64 / 1_000_000.0;
    let age = |at: Option<i64>| match at {
        Some(at) => format_age(now.saturating_sub(at)),
        None => "none".to_string(),
    };
    let message = format!(
        "{:.1} MB ({:.1} MB free); oldest kept: body of a finished message {}, finished message {}, event {}",
        megabytes(usage.bytes),
        megabytes(usage.free_bytes),
        age(usage.oldest_body_at),
        age(usage.oldest_record_at),
        age(usage.oldest_event_at),
    );
    let late = |at: Option<i64>, keep: crate::config::KeepFor| match (at, keep.duration()) {
        (Some(at), Some(keep)) => {
            now.saturating_sub(at)
                > i64::try_from(keep.as_secs()).unwrap_or(i64::MAX) + RETENTION_LATE_WARN
        }
        _ => false,
    };
    let store_config = &config.store;
    if !usage.reclaims_space {
        findings.push(finding(
            "store size",
            Status::Warn,
            format!("{message}; the file cannot give freed space back (auto_vacuum is off)"),
            Some("restart oxirelay while nothing else has the store open: it converts the file once (a VACUUM)".into()),
        ));
    } else if late(usage.oldest_body_at, store_config.keep_delivered)
        || late(usage.oldest_record_at, store_config.keep_events)
        || late(usage.oldest_event_at, store_config.keep_events)
    {
        findings.push(finding(
            "store size",
            Status::Warn,
            format!("{message}: older than [store] keep_delivered / keep_events allow, so retention has not been running"),
            Some("retention runs inside `oxirelay serve`; check that a relay is running and its log for retention errors".into()),
        ));
    } else {
        findings.push(pass("store size", message));
    }
}

fn format_age(seconds: i64) -> String {
    match seconds {
        s if s < 3_600 => format!("{} min ago", s / 60),
        s if s < 2 * DAY => format!("{} h ago", s / 3_600),
        s => format!("{} days ago", s / DAY),
    }
}

fn check_account_config(account: &crate::config::AccountConfig, findings: &mut Vec<Finding>) {
    let name = format!("account {}", account.name);
    if let Some(secret) = &account.client_secret {
        check_secret_file(&format!("{name}: client secret"), secret, findings);
    }
    if let Some(key) = &account.service_account_key {
        check_secret_file(&format!("{name}: service account key"), key, findings);
    }
    if account.insecure_loopback {
        findings.push(finding(
            format!("{name}: transport"),
            Status::Warn,
            "insecure_loopback is on: plain HTTP and SMTP without TLS are allowed to loopback hosts",
            Some("fine for the sandbox; remove it for a real provider".into()),
        ));
    }
    if account.tls == Some(TlsMode::None) {
        findings.push(finding(
            format!("{name}: TLS"),
            Status::Warn,
            "tls = \"none\": tokens cross the (loopback) connection unencrypted",
            Some("use starttls or implicit for anything but the sandbox".into()),
        ));
    }
    if !account.tls_pin_sha256.is_empty() {
        let pins = account.tls_pin_sha256.len();
        findings.push(if account.provider == ProviderKind::Generic {
            pass(
                format!("{name}: TLS"),
                format!(
                    "the upstream server is trusted by its pinned key ({pins} pin{}), not by a CA chain, its name or its dates; add the next key's pin before the server's key changes",
                    if pins == 1 { "" } else { "s" }
                ),
            )
        } else {
            finding(
                format!("{name}: TLS"),
                Status::Warn,
                "tls_pin_sha256 pins a public provider's key: delivery stops the day it rotates its certificate's key",
                Some("remove tls_pin_sha256; the system roots verify public providers".into()),
            )
        });
    }
    recommend_gmail_api(account, findings);
    let preset = preset(account.provider);
    if account.provider != ProviderKind::Generic
        && let Some(scopes) = &account.scopes
    {
        // The transport's least scopes: an HTTP API's, or the SMTP ones.
        let least = api_preset(account.transport).map_or(preset.scopes_for(account.grant), |api| {
            api.scopes_for(account.grant)
        });
        let extra: Vec<&String> = scopes
            .iter()
            .filter(|s| !least.contains(&s.as_str()))
            .collect();
        if extra.is_empty() {
            findings.push(pass(
                format!("{name}: scopes"),
                "no wider than the preset needs",
            ));
        } else {
            findings.push(finding(
                format!("{name}: scopes"),
                Status::Warn,
                format!(
                    "asks for more than its transport ({}) needs: {}",
                    account.transport,
                    extra
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(format!(
                    "remove `scopes` to use the least scopes: {}",
                    least.join(" ")
                )),
            ));
        }
    }
}

/// Google accounts on SMTP need the full-mailbox scope; the Gmail API
/// sends with `gmail.send` alone.
fn recommend_gmail_api(account: &crate::config::AccountConfig, findings: &mut Vec<Finding>) {
    if account.provider != ProviderKind::Google || account.transport != Transport::Smtp {
        return;
    }
    findings.push(finding(
        format!("account {}: upstream transport", account.name),
        Status::Warn,
        "sends over SMTP, which needs the full-mailbox scope https://mail.google.com/ (read, delete, send); the Gmail API sends with https://www.googleapis.com/auth/gmail.send alone",
        Some(format!(
            "enable the Gmail API for the Google Cloud project, set transport = \"gmail_api\" on account {} (its scope becomes gmail.send; for a service account, list that scope under domain-wide delegation), then run `oxirelay account login {}` again",
            account.name, account.name
        )),
    ));
}

/// Microsoft accounts on SMTP whose tenant refuses SMTP AUTH (`5.7.139`):
/// Microsoft Graph sends without it.
fn recommend_graph(
    account: &crate::config::AccountConfig,
    record: Option<&TokenRecord>,
    events: &[crate::store::Event],
    findings: &mut Vec<Finding>,
) {
    if account.provider != ProviderKind::Microsoft || account.transport != Transport::Smtp {
        return;
    }
    let smtp_auth_off = |reason: &str| {
        matches!(
            AdminStep::of_reason(reason),
            Some(AdminStep::SmtpAuthDisabled | AdminStep::SecurityDefaults)
        ) || reason.contains("5.7.139")
    };
    let in_state = record
        .filter(|r| r.state == AccountState::NeedsAdmin)
        .and_then(|r| r.state_reason.as_deref())
        .is_some_and(smtp_auth_off);
    let in_events = events
        .iter()
        .any(|e| e.account.as_deref() == Some(account.name.as_str()) && smtp_auth_off(&e.detail));
    if !(in_state || in_events) {
        return;
    }
    findings.push(finding(
        format!("account {}: upstream transport", account.name),
        Status::Warn,
        "Exchange Online refused SMTP AUTH for this account (5.7.139: SMTP AUTH turned off, or security defaults); Microsoft Graph sends without SMTP AUTH",
        Some(format!(
            "grant the app the Microsoft Graph permission Mail.Send (delegated, or application with an application access policy or RBAC for Applications limiting it to {}), set transport = \"graph\" on account {}, and run `oxirelay account login {}` again for a delegated grant",
            account.user, account.name, account.name
        )),
    ));
}

fn check_listeners(config: &Config, findings: &mut Vec<Finding>) {
    for listener in &config.listeners {
        let check = format!("listener {}", listener.addr);
        if listener.tls == TlsMode::None {
            let broad: Vec<&String> = listener
                .allow_ips
                .iter()
                .filter(|net| {
                    let (ip, prefix) = net.split_once('/').unwrap_or((net, "32"));
                    let prefix: u8 = prefix.parse().unwrap_or(0);
                    let private = ip.starts_with("10.")
                        || ip.starts_with("192.168.")
                        || ip.starts_with("172.")
                        || is_loopback_host(ip)
                        || ip.starts_with("fd")
                        || ip.starts_with("fe80");
                    !private || prefix < 8
                })
                .collect();
            if broad.is_empty() {
                findings.push(finding(
                    check,
                    Status::Warn,
                    format!("plaintext listener limited to {}", listener.allow_ips.join(", ")),
                    Some("use it only for devices that cannot do TLS; give every other client the TLS listener".into()),
                ));
            } else {
                findings.push(finding(
                    check,
                    Status::Fail,
                    format!("plaintext listener allows public or very wide ranges: {}", broad.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
                    Some("restrict allow_ips to the LAN segment of the devices (e.g. 192.168.10.0/24)".into()),
                ));
            }
        } else {
            findings.push(pass(
                check,
                format!("{:?} with authentication required", listener.tls),
            ));
        }
    }
}

fn check_users(config: &Config, findings: &mut Vec<Finding>) {
    for user in &config.users {
        let check = format!("user {}", user.name);
        match &user.password_hash {
            Some(hash) if hash.starts_with("$argon2id$") => {}
            Some(_) => findings.push(finding(
                check.clone(),
                Status::Fail,
                "password_hash is not an Argon2id hash",
                Some("make one with `oxirelay user add`".into()),
            )),
            None => {}
        }
        if user.allowed_from.is_empty() {
            findings.push(finding(
                check,
                Status::Warn,
                "allowed_from is empty: this user can authenticate but send as nobody",
                Some("list the sender addresses it may use".into()),
            ));
        }
    }
}

fn check_account_health(
    account: &crate::config::AccountConfig,
    record: Option<&TokenRecord>,
    now: i64,
    findings: &mut Vec<Finding>,
) {
    let check = format!("account {}: health", account.name);
    let Some(record) = record else {
        findings.push(finding(
            check,
            if account.grant.uses_refresh_token() {
                Status::Warn
            } else {
                Status::Pass
            },
            "no token obtained yet",
            account
                .grant
                .uses_refresh_token()
                .then(|| format!("oxirelay account login {}", account.name)),
        ));
        return;
    };
    match record.state {
        AccountState::NeedsConsent | AccountState::Revoked => findings.push(finding(
            check.clone(),
            Status::Fail,
            format!(
                "state {}: {}",
                record.state,
                record.state_reason.as_deref().unwrap_or("")
            ),
            Some(format!("oxirelay account login {}", account.name)),
        )),
        AccountState::NeedsAdmin => findings.push(finding(
            check.clone(),
            Status::Fail,
            "the provider refuses this account until an administrator acts; its mail stays queued"
                .to_string(),
            record.state_reason.clone(),
        )),
        AccountState::Failing => findings.push(finding(
            check.clone(),
            Status::Warn,
            format!("failing: {}", record.state_reason.as_deref().unwrap_or("")),
            None,
        )),
        AccountState::Valid | AccountState::New => {
            findings.push(pass(check.clone(), format!("state {}", record.state)))
        }
    }
    let last_use = record.last_success_at.unwrap_or(record.updated_at);
    let idle_days = (now - last_use) / DAY;
    if account.provider == ProviderKind::Microsoft
        && account.grant.uses_refresh_token()
        && idle_days >= MICROSOFT_IDLE_WARN_DAYS
    {
        findings.push(finding(
            format!("account {}: refresh token", account.name),
            Status::Warn,
            format!("no token refresh for {idle_days} days; Microsoft refresh tokens die after 90 days unused"),
            Some(format!("run `oxirelay token {}` (or keep the relay running) to renew it", account.name)),
        ));
    }
    if account.provider == ProviderKind::Google
        && account.grant == GrantKind::AuthorizationCode
        && let Some(consented) = record.consented_at
    {
        let dies = consented + GOOGLE_TESTING_LIFETIME_DAYS * DAY;
        findings.push(finding(
            format!("account {}: refresh token", account.name),
            Status::Warn,
            format!(
                "if the Google app is of the External user type and still in Testing status, this refresh token dies at {}",
                crate::clock::format_unix(dies)
            ),
            Some("publish the OAuth consent screen (In production), or for Workspace mailboxes make the app's user type Internal; then consent again".into()),
        ));
    }
    if idle_days >= UNUSED_WARN_DAYS {
        findings.push(finding(
            format!("account {}: usage", account.name),
            Status::Warn,
            format!("no successful token for {idle_days} days"),
            Some("remove the account if it is no longer used (and revoke its grant)".into()),
        ));
    }
}

fn check_last_validation(
    account: &crate::config::AccountConfig,
    events: &[crate::store::Event],
    now: i64,
    findings: &mut Vec<Finding>,
) {
    let check = format!("account {}: validation", account.name);
    let last = crate::oauth::status::last_validation(events, &account.name);
    match last {
        None => findings.push(finding(
            check,
            Status::Warn,
            "never validated",
            Some(format!("run `oxirelay account check {}`, and keep `oxirelay serve` running (it validates every 30 minutes)", account.name)),
        )),
        Some(event) if (now - event.at) / 3600 >= VALIDATION_WARN_HOURS => findings.push(finding(
            check,
            Status::Warn,
            format!("last validated {} ({})", crate::clock::format_unix(event.at), event.kind),
            Some("is `oxirelay serve` running? run `oxirelay account check` now".into()),
        )),
        Some(event) if event.kind == "account.validation_failed" => findings.push(finding(
            check,
            Status::Fail,
            format!("the last validation failed: {}", event.detail),
            None,
        )),
        Some(event) => findings.push(pass(check, format!("validated {}", crate::clock::format_unix(event.at)))),
    }
}

/// The exit status a deployment pipeline wants: failure if anything failed.
pub fn worst(findings: &[Finding]) -> Status {
    findings
        .iter()
        .map(|f| f.status)
        .max()
        .unwrap_or(Status::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(text: &str) -> crate::config::AccountConfig {
        toml::from_str(text).expect("account")
    }

    const GOOGLE: &str = "name = \"g\"\nprovider = \"google\"\ngrant = \"authorization_code\"\nclient_id = \"c\"\nuser = \"a@example.com\"\n";
    const MICROSOFT: &str = "name = \"m\"\nprovider = \"microsoft\"\ngrant = \"client_credentials\"\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret = \"env:X\"\nuser = \"a@contoso.com\"\n";

    #[test]
    fn google_on_smtp_is_pointed_to_the_gmail_api() {
        let mut findings = Vec::new();
        recommend_gmail_api(&account(GOOGLE), &mut findings);
        assert_eq!(findings.len(), 1);
        let fix = findings[0].fix.clone().unwrap_or_default();
        assert!(fix.contains("transport = \"gmail_api\""), "{fix}");
        let mut findings = Vec::new();
        recommend_gmail_api(
            &account(&format!("{GOOGLE}transport = \"gmail_api\"\n")),
            &mut findings,
        );
        assert!(findings.is_empty());
    }

    #[test]
    fn microsoft_that_met_5_7_139_is_pointed_to_graph() {
        let config = account(MICROSOFT);
        let mut findings = Vec::new();
        recommend_graph(&config, None, &[], &mut findings);
        assert!(findings.is_empty(), "nothing met yet");
        let mut record = TokenRecord::new("m");
        record.state = AccountState::NeedsAdmin;
        record.state_reason = Some(AdminStep::SmtpAuthDisabled.instruction("a@contoso.com"));
        recommend_graph(&config, Some(&record), &[], &mut findings);
        assert_eq!(findings.len(), 1);
        let fix = findings[0].fix.clone().unwrap_or_default();
        assert!(
            fix.contains("transport = \"graph\"") && fix.contains("Mail.Send"),
            "{fix}"
        );
        // A delivery that met it, recorded as an event, counts too.
        let event = crate::store::Event {
            at: 0,
            kind: "message.deferred".into(),
            account: Some("m".into()),
            message_id: None,
            detail: "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant".into(),
        };
        let mut findings = Vec::new();
        recommend_graph(&config, None, &[event], &mut findings);
        assert_eq!(findings.len(), 1);
    }

    #[test]
    fn a_postgres_store_off_loopback_without_verify_full_is_warned_about() {
        let status = |url: &str| check_store_tls(url).map(|f| (f.status, f.message));
        assert_eq!(status("sqlite:///var/lib/oxirelay/oxirelay.db"), None);
        for local in [
            "postgres://oxirelay@127.0.0.1/oxirelay",
            "postgres://oxirelay@localhost:5432/oxirelay",
            "postgresql://oxirelay@[::1]/oxirelay",
            "postgres:///oxirelay?host=/run/postgresql",
        ] {
            assert_eq!(status(local).map(|s| s.0), Some(Status::Pass), "{local}");
        }
        let verified = "postgres://oxirelay@db.example.net/oxirelay?sslmode=verify-full";
        assert_eq!(status(verified).map(|s| s.0), Some(Status::Pass));
        for (url, says) in [
            (
                "postgres://oxirelay@db.example.net/oxirelay",
                "sslmode=prefer",
            ),
            (
                "postgres://oxirelay:hunter2@10.0.0.5/oxirelay?sslmode=require",
                "sslmode=require",
            ),
            (
                "postgres://oxirelay@db.example.net/oxirelay?sslmode=verify-ca",
                "whatever its name",
            ),
            // `host=` names the server even when the URL's host is local.
            (
                "postgres://oxirelay@localhost/oxirelay?host=db.example.net",
                "db.example.net",
            ),
        ] {
            let finding = check_store_tls(url).expect("a finding");
            assert_eq!(finding.status, Status::Warn, "{url}");
            assert!(finding.message.contains(says), "{}", finding.message);
            assert!(!finding.message.contains("hunter2"), "no password shown");
            assert!(finding.fix.expect("a fix").contains("sslmode=verify-full"));
        }
    }

    use crate::store::SqliteStore;

    async fn usage_finding(keep_delivered: &str, finished_ago: i64) -> Finding {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("d.db").display());
        let config = Config::parse(
            &format!("[store]\nurl = \"{url}\"\nkeep_delivered = \"{keep_delivered}\"\n"),
            Path::new("/etc/oxirelay/oxirelay.toml"),
        )
        .expect("config");
        let store = SqliteStore::open(&url).await.expect("store");
        let id = store
            .enqueue(crate::store::NewMessage {
                account: "office".into(),
                mail_from: "a@x".into(),
                recipients: vec!["r@x".into()],
                body: b"Subject: t\r\n\r\nbody\r\n".to_vec(),
                submitted_by: "test".into(),
            })
            .await
            .expect("enqueue");
        let now = crate::clock::now_unix();
        let claimed = store.claim("w", now + 1, now + 60, 1).await.expect("claim");
        store
            .complete_attempt(
                &id,
                &claimed[0].lease,
                &crate::store::AttemptOutcome {
                    recipients: vec![(0, crate::store::RecipientState::Delivered, None)],
                    next_attempt_at: None,
                    error: None,
                },
            )
            .await
            .expect("delivered");
        let mut findings = Vec::new();
        check_store_usage(&config, &store, now + finished_ago, &mut findings).await;
        findings.pop().expect("a finding")
    }

    #[tokio::test]
    async fn store_size_and_oldest_kept_item_are_reported() {
        let fresh = usage_finding("7d", 3 * 3_600).await;
        assert_eq!(fresh.status, Status::Pass, "{fresh:?}");
        assert!(fresh.message.contains(" MB ("), "{}", fresh.message);
        assert!(
            fresh.message.contains("body of a finished message 3 h ago"),
            "{}",
            fresh.message
        );
        // A body kept two days past a 12-hour retention: nobody is removing.
        let late = usage_finding("12h", 3 * DAY).await;
        assert_eq!(late.status, Status::Warn, "{late:?}");
        assert!(late.message.contains("retention has not been running"));
    }
}
