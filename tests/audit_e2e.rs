//! The audit log through the built binary: `serve` and `sendmail` take mail
//! with a damaged log, `audit verify` catches a truncated end and says
//! clearly when it has no key, and `rotate-key` re-seals a service-account
//! key so that the account still signs after the old key is destroyed.

mod common;
#[path = "line_client/mod.rs"]
mod line_client;

use common::*;
use oxirelay::audit::AuditEntry;
use oxirelay::sandbox::USER;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn oxirelay(args: &[&str], cwd: &Path, stdin: &[u8]) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
        .args(args)
        .current_dir(cwd)
        .env_remove("OXIRELAY_MASTER_KEY")
        .env_remove("OXIRELAY_CONFIG")
        .env("USER", "auditor")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("stdin written");
    drop(input);
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("finishes in time")
        .expect("output")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn audit_path(harness: &Harness) -> PathBuf {
    harness.dir.path().join("oxirelay-audit.jsonl")
}

/// Lines as the unkeyed writer of earlier versions wrote them: the hash of
/// the fields in this order, each line's `prev` the hash before it.
fn legacy_lines(details: &[String]) -> String {
    use sha2::Digest;
    #[derive(serde::Serialize)]
    struct Unsealed<'a> {
        seq: u64,
        at: &'a str,
        #[serde(flatten)]
        entry: &'a AuditEntry,
        prev: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Sealed<'a> {
        #[serde(flatten)]
        unsealed: Unsealed<'a>,
        hash: &'a str,
    }
    let mut prev = "0".repeat(64);
    let mut text = String::new();
    for (i, detail) in details.iter().enumerate() {
        let entry = AuditEntry {
            actor: "relay".into(),
            action: "message.deferred".into(),
            account: Some(ACCOUNT.into()),
            token_fingerprint: None,
            message_id: None,
            detail: detail.clone(),
        };
        let unsealed = Unsealed {
            seq: i as u64 + 1,
            at: "2024-12-31T23:59:59.000Z",
            entry: &entry,
            prev: &prev,
        };
        let hash: String = sha2::Sha256::digest(serde_json::to_vec(&unsealed).expect("json"))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        text.push_str(
            &serde_json::to_string(&Sealed {
                unsealed,
                hash: &hash,
            })
            .expect("json"),
        );
        text.push('\n');
        prev = hash;
    }
    text
}

const MESSAGE: &[u8] = b"From: alice@sandbox.test\r\nTo: someone@example.net\r\nSubject: through a damaged log\r\n\r\nstill delivered\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_sendmail_take_mail_with_a_long_legacy_line_and_a_torn_end() {
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    harness.add_network_relay();
    // What used to stop mail: an upstream reply over 64 KiB in the last
    // line (the old tail reader could not see the chain's end), then a
    // write cut short by a full disk.
    let mut log = legacy_lines(&[
        "421 4.3.2 busy".into(),
        format!("550 {}", "x".repeat(70 * 1024)),
    ]);
    log.push_str("{\"seq\":3,\"at\":\"2025-01-");
    std::fs::write(audit_path(&harness), &log).expect("write the log");

    let relay = RelayProcess::start(&harness.config_path, &[]);
    let mut device =
        line_client::Client::connect_from(relay.addr, IpAddr::from(DEVICE_IP), WAIT).await;
    assert!(device.reply().await.starts_with("220 "));
    device.command("EHLO scanner.lan").await;
    let reply = device.send(USER, "someone@example.net", MESSAGE).await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    harness
        .sandbox
        .smtp
        .inbox()
        .wait_for_count(1, WAIT)
        .await
        .expect("delivered upstream");

    let config = harness.config_path.to_str().expect("utf-8");
    let sendmail = oxirelay(
        &["-c", config, "sendmail", "-t", "-i"],
        harness.dir.path(),
        format!("From: {USER}\nTo: cron@example.net\nSubject: nightly\n\nok\n").as_bytes(),
    )
    .await;
    assert!(sendmail.status.success(), "{}", text(&sendmail));
    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success());
    assert!(harness.context.audit.sync_anchor(WAIT));

    let verify = oxirelay(&["-c", config, "audit", "verify"], harness.dir.path(), b"").await;
    let output = text(&verify);
    assert!(verify.status.success(), "{output}");
    assert!(
        output.contains(": intact, ") && output.contains("MACs checked"),
        "{output}"
    );
    assert!(
        output.contains("the first 2 lines are an unkeyed legacy chain"),
        "{output}"
    );
    assert!(
        output.contains("bytes after line 2 were not a whole audit line"),
        "{output}"
    );
    let written = std::fs::read_to_string(audit_path(&harness)).expect("log");
    assert!(
        written
            .lines()
            .all(|l| l.len() <= oxirelay::audit::MAX_LINE_BYTES || l.contains("\"hash\""))
    );
    assert!(written.contains("\"message.delivered\""), "{written}");
    let aside = std::fs::read_dir(harness.dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().contains(".torn-"))
        .expect("the torn bytes are kept beside the log");
    assert_eq!(
        std::fs::read_to_string(aside.path()).expect("read"),
        "{\"seq\":3,\"at\":\"2025-01-"
    );
}

#[tokio::test]
async fn audit_verify_finds_a_truncated_end_and_says_what_it_needs() {
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    for action in ["drill.one", "drill.two", "drill.three", "drill.four"] {
        harness.context.audit(action, None, "");
    }
    assert!(harness.context.audit.sync_anchor(WAIT));
    let config = harness.config_path.to_str().expect("utf-8");
    let dir = harness.dir.path();
    let verify = oxirelay(&["-c", config, "audit", "verify", "--json"], dir, b"").await;
    assert!(verify.status.success(), "{}", text(&verify));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).expect("json");
    assert_eq!(report["intact"], true);
    assert_eq!(report["lines"], 4);
    assert_eq!(report["anchored_at"], 4);

    // The last two lines deleted: a valid, shorter chain.
    let log = std::fs::read_to_string(audit_path(&harness)).expect("log");
    let kept: String = log.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(audit_path(&harness), kept).expect("truncate");
    let verify = oxirelay(&["-c", config, "audit", "verify"], dir, b"").await;
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(
        text(&verify).contains("TAMPERED OR DAMAGED: TRUNCATED: the store's anchor says line 4 was written, but the log ends at line 2"),
        "{}",
        text(&verify)
    );
    // Without the key and the store that goes unnoticed, and the output
    // says what was not checked.
    let path = audit_path(&harness);
    let path = path.to_str().expect("utf-8");
    let keyless = oxirelay(&["audit", "verify", "--without-key", path], dir, b"").await;
    assert!(keyless.status.success(), "{}", text(&keyless));
    assert!(
        text(&keyless).contains("MACs not checked"),
        "{}",
        text(&keyless)
    );
    assert!(
        text(&keyless).contains("anchor was not checked"),
        "{}",
        text(&keyless)
    );

    // No config: the error says why one is needed and what else to do.
    let empty = tempfile::tempdir().expect("tempdir");
    let without = oxirelay(&["audit", "verify", path], empty.path(), b"").await;
    assert_eq!(without.status.code(), Some(1));
    let message = text(&without);
    assert!(
        message.contains("audit verify needs the relay's config (for the master key")
            && message.contains("pass -c PATH")
            && message.contains("--without-key"),
        "{message}"
    );
}

/// Google's token endpoint as far as the JWT bearer grant goes: it checks
/// the assertion's signature with the service account's public key. Its
/// tokens live one second (the broker replaces a token half its lifetime
/// before expiry at the latest, so at once), so that each `oxirelay token`
/// signs a new assertion instead of using the stored token.
struct TokenEndpoint {
    url: String,
    assertions: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct EndpointState {
    key: Arc<jsonwebtoken::DecodingKey>,
    assertions: Arc<Mutex<Vec<String>>>,
    url: String,
}

async fn token_request(
    axum::extract::State(state): axum::extract::State<EndpointState>,
    axum::extract::Form(form): axum::extract::Form<std::collections::HashMap<String, String>>,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[&state.url]);
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    let grant = form.get("grant_type").map(String::as_str);
    match jsonwebtoken::decode::<serde_json::Value>(&assertion, &state.key, &validation) {
        Ok(data) if grant == Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let subject = data.claims["sub"].to_string();
            state.assertions.lock().expect("lock").push(subject);
            let token = serde_json::json!({
                "access_token": "ya29.service-account",
                "token_type": "Bearer",
                "expires_in": 1,
            });
            (axum::http::StatusCode::OK, axum::Json(token))
        }
        _ => (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({
                "error": "invalid_grant",
                "error_description": "Invalid JWT Signature.",
            })),
        ),
    }
}

async fn google_token_endpoint(public_key_pem: String) -> TokenEndpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/token", listener.local_addr().expect("addr"));
    let state = EndpointState {
        key: Arc::new(
            jsonwebtoken::DecodingKey::from_rsa_pem(public_key_pem.as_bytes()).expect("public key"),
        ),
        assertions: Arc::new(Mutex::new(Vec::new())),
        url: url.clone(),
    };
    let assertions = state.assertions.clone();
    let app = axum::Router::new()
        .route("/token", axum::routing::post(token_request))
        .with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    TokenEndpoint { url, assertions }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_key_reseals_an_imported_service_account_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_path = dir.path();
    write_private(
        &dir_path.join("master.key"),
        &oxirelay::secret::generate_master_key(),
    );
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let endpoint = google_token_endpoint(rsa.public_key_pem()).await;
    let config_path = dir_path.join("oxirelay.toml");
    let config_text = format!(
        "[store]\nurl = \"sqlite://oxirelay.db\"\n[secrets]\nmaster_key = \"file:master.key\"\n\n\
         [[account]]\nname = \"workspace\"\nprovider = \"google\"\ngrant = \"jwt_bearer\"\n\
         client_id = \"1234567890\"\nuser = \"noreply@example.com\"\n\
         token_url = \"{}\"\ninsecure_loopback = true\n",
        endpoint.url
    );
    std::fs::write(&config_path, &config_text).expect("config");
    let config = config_path.to_str().expect("utf-8");
    let key_json = serde_json::json!({
        "type": "service_account",
        "client_email": "relay@project.iam.gserviceaccount.com",
        "private_key": rsa.serialize_pem(),
        "token_uri": endpoint.url,
    })
    .to_string();

    let import = oxirelay(
        &["-c", config, "account", "import-key", "workspace"],
        dir_path,
        key_json.as_bytes(),
    )
    .await;
    assert!(import.status.success(), "{}", text(&import));
    let token = oxirelay(&["-c", config, "token", "workspace"], dir_path, b"").await;
    assert!(token.status.success(), "{}", text(&token));

    // Rotate: a new key, the old one kept as previous until rotate-key ran.
    write_private(
        &dir_path.join("master-2.key"),
        &oxirelay::secret::generate_master_key(),
    );
    let rotating = config_text.replace(
        "master_key = \"file:master.key\"",
        "master_key = \"file:master-2.key\"\nprevious_master_keys = [\"file:master.key\"]",
    );
    std::fs::write(&config_path, &rotating).expect("config");
    let rotate = oxirelay(&["-c", config, "rotate-key"], dir_path, b"").await;
    assert!(rotate.status.success(), "{}", text(&rotate));
    assert!(
        text(&rotate).contains("1 sealed secrets (service-account keys) re-sealed"),
        "{}",
        text(&rotate)
    );

    // The old key removed from the config and destroyed.
    let old =
        oxirelay::secret::MasterKey::from_file(&dir_path.join("master.key")).expect("old key");
    std::fs::write(
        &config_path,
        config_text.replace("file:master.key", "file:master-2.key"),
    )
    .expect("config");
    std::fs::remove_file(dir_path.join("master.key")).expect("destroy the old key");
    let store = oxirelay::store::open(&format!(
        "sqlite://{}",
        dir_path.join("oxirelay.db").display()
    ))
    .await
    .expect("store");
    let sealed = store
        .sealed_secret("workspace", oxirelay::oauth::account::SERVICE_ACCOUNT_KEY)
        .await
        .expect("store")
        .expect("sealed");
    assert!(
        old.open(
            &oxirelay::oauth::account::seal_context("workspace"),
            &sealed
        )
        .is_err(),
        "the old key opens nothing"
    );

    // The account still signs an assertion the provider accepts.
    let token = oxirelay(&["-c", config, "token", "workspace"], dir_path, b"").await;
    assert!(token.status.success(), "{}", text(&token));
    assert_eq!(
        String::from_utf8_lossy(&token.stdout).trim(),
        "ya29.service-account"
    );
    assert_eq!(
        endpoint.assertions.lock().expect("lock").len(),
        2,
        "two signed assertions, before and after the rotation"
    );

    // The audit log, keyed first with the old key and then the new one,
    // still verifies with the new key alone.
    let verify = oxirelay(&["-c", config, "audit", "verify"], dir_path, b"").await;
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(
        text(&verify).contains("covered by the chain"),
        "{}",
        text(&verify)
    );
}
