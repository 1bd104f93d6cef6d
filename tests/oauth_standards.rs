//! OAuth2 as standard providers speak it, against the sandbox authorization
//! server in its stricter modes, over real HTTP on 127.0.0.1, with the
//! relay's own broker, consent, device flow, revocation and health check
//! reading the server's RFC 8414 metadata:
//!
//! - an OpenID provider that ignores `offline_access` without
//!   `prompt=consent` (OpenID Connect Core section 11);
//! - a provider that answers introspection of JWTs with
//!   `400 unsupported_token_type`;
//! - a provider that accepts `client_secret_post` only, and says so;
//! - a public client allowed to introspect.

use oxirelay::cli::Context;
use oxirelay::config::Config;
use oxirelay::oauth::consent;
use oxirelay::oauth::health::{CheckMethod, check_account};
use oxirelay::sandbox::authz::{
    AuthServer, AuthServerConfig, ClientAuthMethod, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_USER,
    RunningAuthServer, SandboxClient,
};
use oxirelay::secret::Secret;
use oxirelay::store::AccountState;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const ACCOUNT: &str = "acct";
const WAIT: Duration = Duration::from_secs(20);

/// A relay whose one account uses `server`, found by discovery.
struct Relay {
    dir: tempfile::TempDir,
    context: Context,
}

fn write_private(path: &Path, contents: &str) {
    std::fs::write(path, contents).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

impl Relay {
    /// `extra` is more account keys (TOML lines). No SMTP server runs:
    /// `smtp` points at a closed port, so an SMTP check cannot pass.
    async fn start(server: &RunningAuthServer, grant: &str, extra: &str) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        write_private(
            &dir.path().join("master.key"),
            &oxirelay::secret::generate_master_key(),
        );
        write_private(&dir.path().join("client.secret"), DEMO_CLIENT_SECRET);
        let text = format!(
            r#"[store]
url = "sqlite://oxirelay.db"

[secrets]
master_key = "file:master.key"

[[account]]
name = "{ACCOUNT}"
provider = "generic"
grant = "{grant}"
issuer = "{issuer}"
user = "{DEMO_USER}"
smtp = "127.0.0.1:1"
insecure_loopback = true
{extra}
"#,
            issuer = server.issuer_id(),
        );
        let path = dir.path().join("oxirelay.toml");
        std::fs::write(&path, &text).expect("config");
        let config = Config::load(&path).expect("the test config is valid");
        let context = Context::from_config(config).await.expect("context");
        Relay { dir, context }
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("oxirelay.toml")
    }

    /// What `account login` does, the auto-approving server standing in
    /// for the person: the authorization URL the relay built, followed.
    async fn consent(&self, strip: Option<&str>) -> consent::Consent {
        let broker = &self.context.broker;
        let endpoints = broker.endpoints(ACCOUNT).await.expect("endpoints");
        let account = broker.account(ACCOUNT).expect("account");
        let mut request =
            consent::begin(account, &endpoints, "http://127.0.0.1/callback", None).expect("begin");
        if let Some(parameter) = strip {
            let kept: Vec<(String, String)> = request
                .url
                .query_pairs()
                .into_owned()
                .filter(|(k, _)| k != parameter)
                .collect();
            request.url.query_pairs_mut().clear().extend_pairs(kept);
        }
        let callback = follow(request.url.as_str()).await;
        let code =
            consent::code_from_callback(&request, callback.query().unwrap_or_default(), ACCOUNT)
                .expect("code");
        consent::finish(broker, ACCOUNT, &request, &code)
            .await
            .expect("code exchanged")
    }

    async fn has_refresh_token(&self) -> bool {
        self.context
            .store
            .token_record(ACCOUNT)
            .await
            .expect("store")
            .is_some_and(|r| r.refresh_token.is_some())
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The browser at an auto-approving server: where it is redirected.
async fn follow(url: &str) -> url::Url {
    let answer = http().get(url).send().await.expect("authorize");
    let location = answer
        .headers()
        .get("location")
        .unwrap_or_else(|| panic!("no redirect: HTTP {}", answer.status()))
        .to_str()
        .expect("ascii");
    url::Url::parse(location).expect("redirect URL")
}

async fn start(config: AuthServerConfig) -> RunningAuthServer {
    AuthServer::bind("127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("server starts")
}

/// The demo client with the loopback redirects `account login` uses.
fn demo_client() -> SandboxClient {
    SandboxClient {
        redirect_uris: vec![
            "http://127.0.0.1/callback".into(),
            "http://127.0.0.1/".into(),
        ],
        app_subject: Some(DEMO_USER.into()),
        ..SandboxClient::confidential(DEMO_CLIENT_ID, Secret::new(DEMO_CLIENT_SECRET))
    }
}

/// An OpenID provider that follows Core section 11 to the letter.
fn strict_openid_provider() -> AuthServerConfig {
    AuthServerConfig {
        auto_approve: true,
        scopes: vec!["openid".into(), "smtp".into(), "offline_access".into()],
        offline_access_needs_consent_prompt: true,
        clients: vec![demo_client()],
        ..AuthServerConfig::default()
    }
}

const SECRET_KEYS: &str = "client_id = \"oxirelay-demo\"\nclient_secret = \"file:client.secret\"";

#[tokio::test]
async fn offline_access_is_asked_with_prompt_consent_and_a_refresh_token_comes_back() {
    let server = start(strict_openid_provider()).await;
    let relay = Relay::start(
        &server,
        "authorization_code",
        &format!("{SECRET_KEYS}\nscopes = [\"openid\", \"smtp\", \"offline_access\"]"),
    )
    .await;
    let endpoints = relay.context.broker.endpoints(ACCOUNT).await.expect("e");
    assert!(
        endpoints.metadata.openid,
        "discovery saw an OpenID provider"
    );
    let consent = relay.consent(None).await;
    assert!(consent.refresh_token_issued);
    assert!(relay.has_refresh_token().await);

    // The request as oxirelay used to send it, without prompt=consent: the
    // provider ignores offline_access, and the consent says so.
    let relay = Relay::start(
        &server,
        "authorization_code",
        &format!("{SECRET_KEYS}\nscopes = [\"openid\", \"smtp\", \"offline_access\"]"),
    )
    .await;
    let consent = relay.consent(Some("prompt")).await;
    assert!(!consent.refresh_token_issued);
    assert!(!relay.has_refresh_token().await);
    server.shutdown().await.expect("shutdown");
}

/// `account login --no-browser` to the end, the test following the URL it prints.
async fn login(relay: &Relay) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oxirelay"))
        .arg("-c")
        .arg(relay.config_path())
        .args([
            "account",
            "login",
            ACCOUNT,
            "--no-browser",
            "--timeout",
            "20s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("login starts");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim_start().starts_with("http") && line.contains("code_challenge=") {
                let _ = sender.send(line.trim().to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let url = receiver
        .recv_timeout(WAIT)
        .expect("the login prints its URL");
    let callback = follow(&url).await;
    reqwest::get(callback.as_str())
        .await
        .expect("the redirect reaches the login");
    tokio::task::spawn_blocking(move || {
        let output = child.wait_with_output().expect("login ends");
        (
            output.status.success(),
            reader.join().expect("reader"),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_without_a_refresh_token_warns_instead_of_claiming_one() {
    let server = start(strict_openid_provider()).await;
    let relay = Relay::start(
        &server,
        "authorization_code",
        &format!("{SECRET_KEYS}\nscopes = [\"smtp\"]"),
    )
    .await;
    let (ok, stdout, stderr) = login(&relay).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(!stdout.contains("refresh token sealed"), "{stdout}");
    for text in [&stdout, &stderr] {
        assert!(text.contains("issued NO refresh token"), "{text}");
        assert!(text.contains("scopes lack offline_access"), "{text}");
    }

    // With offline_access, the same login seals one and says so.
    let relay = Relay::start(
        &server,
        "authorization_code",
        &format!("{SECRET_KEYS}\nscopes = [\"smtp\", \"offline_access\"]"),
    )
    .await;
    let (ok, stdout, stderr) = login(&relay).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("refresh token sealed"), "{stdout}");
    assert!(!stdout.contains("NO refresh token"), "{stdout}");
}

#[tokio::test]
async fn introspection_that_declines_jwts_leaves_the_local_check_standing() {
    let server = start(AuthServerConfig {
        introspection_declines_jwts: true,
        ..AuthServerConfig::default()
    })
    .await;
    let relay = Relay::start(
        &server,
        "client_credentials",
        &format!("{SECRET_KEYS}\nscopes = [\"smtp\"]\naudience = \"smtp\""),
    )
    .await;
    let token = relay
        .context
        .broker
        .access_token(ACCOUNT)
        .await
        .expect("token");
    let report = check_account(&relay.context.broker, ACCOUNT).await;
    assert!(report.healthy, "{report:?}");
    assert_eq!(report.method, Some(CheckMethod::Jwt));
    assert!(
        report.detail.contains("unsupported_token_type"),
        "{}",
        report.detail
    );
    assert_eq!(server.stats().introspections, 1, "the provider was asked");
    // Not wiped, not failing: the same token is still the account's.
    let record = relay
        .context
        .store
        .token_record(ACCOUNT)
        .await
        .expect("store")
        .expect("record");
    assert_eq!(record.state, AccountState::Valid);
    let again = relay
        .context
        .broker
        .access_token(ACCOUNT)
        .await
        .expect("token");
    assert_eq!(again.fingerprint(), token.fingerprint());
    assert_eq!(server.stats().token_requests, 1, "no refresh was needed");
    server.shutdown().await.expect("shutdown");
}

fn post_only() -> AuthServerConfig {
    AuthServerConfig {
        client_auth_methods: vec![ClientAuthMethod::SecretPost],
        device_interval: Duration::ZERO,
        clients: vec![demo_client()],
        ..AuthServerConfig::default()
    }
}

#[tokio::test]
async fn a_post_only_provider_gets_client_secret_post_at_every_endpoint() {
    let server = start(post_only()).await;
    assert_eq!(
        server.metadata().token_endpoint_auth_methods_supported,
        ["client_secret_post"]
    );
    let relay = Relay::start(
        &server,
        "device_code",
        &format!("{SECRET_KEYS}\nscopes = [\"smtp\", \"offline_access\"]"),
    )
    .await;
    let broker = &relay.context.broker;
    let endpoint = broker.token_endpoint(ACCOUNT).await.expect("endpoint");
    assert_eq!(endpoint.client_auth.as_str(), "client_secret_post");

    // Device authorization, then the token endpoint.
    let http = broker.http(ACCOUNT).expect("http");
    let device_url = broker
        .endpoints(ACCOUNT)
        .await
        .expect("endpoints")
        .device
        .expect("device endpoint");
    let scopes = vec!["smtp".to_string(), "offline_access".to_string()];
    let authorization = oxirelay::oauth::device::start(&http, &device_url, &endpoint, &scopes)
        .await
        .expect("device authorization with client_secret_post");
    server
        .approve_device(&authorization.user_code, DEMO_USER)
        .expect("approve");
    let response = oxirelay::oauth::device::poll(&http, &endpoint, &authorization, |_| {})
        .await
        .expect("token with client_secret_post");
    assert!(response.refresh_token.is_some());
    broker
        .store_consent(ACCOUNT, response)
        .await
        .expect("stored");

    // Introspection (the health check) and revocation.
    let report = check_account(broker, ACCOUNT).await;
    assert!(report.healthy, "{report:?}");
    assert_eq!(report.method, Some(CheckMethod::Introspection));
    let revoked = broker.revoke(ACCOUNT, "test").await.expect("revoke");
    assert_eq!(
        revoked.revoked_at_provider,
        ["refresh_token", "access_token"],
        "{:?}",
        revoked.provider_note
    );
    let stats = server.stats();
    assert_eq!((stats.token_failures, stats.revocations), (0, 2));
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn an_explicit_token_endpoint_auth_wins_and_basic_is_refused_by_a_post_only_provider() {
    let server = start(post_only()).await;
    let relay = Relay::start(
        &server,
        "client_credentials",
        &format!(
            "{SECRET_KEYS}\nscopes = [\"smtp\"]\ntoken_endpoint_auth = \"client_secret_basic\""
        ),
    )
    .await;
    let error = relay
        .context
        .broker
        .access_token(ACCOUNT)
        .await
        .expect_err("Basic is refused");
    let text = error.to_string();
    assert!(text.contains("invalid_client"), "{text}");
    assert!(text.contains("client_secret_post"), "{text}");

    let relay = Relay::start(
        &server,
        "client_credentials",
        &format!(
            "{SECRET_KEYS}\nscopes = [\"smtp\"]\ntoken_endpoint_auth = \"client_secret_post\""
        ),
    )
    .await;
    relay
        .context
        .broker
        .access_token(ACCOUNT)
        .await
        .expect("post is accepted");
    server.shutdown().await.expect("shutdown");
}

fn with_public_client(may_introspect: bool) -> AuthServerConfig {
    AuthServerConfig {
        auto_approve: true,
        client_auth_methods: vec![
            ClientAuthMethod::SecretBasic,
            ClientAuthMethod::SecretPost,
            ClientAuthMethod::None,
        ],
        clients: vec![SandboxClient {
            redirect_uris: vec!["http://127.0.0.1/callback".into()],
            may_introspect,
            ..SandboxClient::public("native-app")
        }],
        ..AuthServerConfig::default()
    }
}

#[tokio::test]
async fn a_public_client_is_validated_by_introspection_where_the_provider_allows_it() {
    let server = start(with_public_client(true)).await;
    let relay = Relay::start(
        &server,
        "authorization_code",
        "client_id = \"native-app\"\nscopes = [\"smtp\", \"offline_access\"]",
    )
    .await;
    assert!(relay.consent(None).await.refresh_token_issued);
    let report = check_account(&relay.context.broker, ACCOUNT).await;
    assert!(report.healthy, "{report:?}");
    assert_eq!(report.method, Some(CheckMethod::Introspection));
    assert_eq!(server.stats().introspections, 1);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_public_client_refused_at_introspection_falls_back_to_the_smtp_check() {
    let server = start(with_public_client(false)).await;
    let relay = Relay::start(
        &server,
        "authorization_code",
        "client_id = \"native-app\"\nscopes = [\"smtp\", \"offline_access\"]",
    )
    .await;
    relay.consent(None).await;
    let report = check_account(&relay.context.broker, ACCOUNT).await;
    // The refusal was no verdict: the SMTP check decided (and, with no SMTP
    // server in this test, failed).
    assert_eq!(report.method, Some(CheckMethod::SmtpAuth), "{report:?}");
    assert!(server.stats().introspections >= 1);
    server.shutdown().await.expect("shutdown");
}
