//! `oxirelay account login`: the authorization code flow with PKCE and
//! state, driven by a real HTTP client standing in for the browser.

mod common;

use common::{ACCOUNT, Harness, WAIT};
use oxirelay::oauth::consent;
use oxirelay::oauth::grant::OAuthErrorCode;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running login: the process, the URL it printed, and the rest of its output.
struct Login {
    child: Child,
    stdout: std::thread::JoinHandle<String>,
}

/// Starts `account login --no-browser` and returns the authorization URL it printed.
fn start_login(harness: &Harness) -> (Login, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oxirelay"))
        .args([
            "-c",
            harness.config_path.to_str().expect("utf-8"),
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
        let mut url_sent = false;
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            if !url_sent
                && line.trim_start().starts_with("http")
                && line.contains("code_challenge=")
            {
                url_sent = sender.send(Ok(line.trim().to_string())).is_ok();
            }
        }
        if !url_sent {
            let _ = sender.send(Err(all.clone()));
        }
        all
    });
    let url = receiver
        .recv_timeout(WAIT)
        .expect("login prints its URL in time")
        .unwrap_or_else(|output| panic!("no URL in the login output:\n{output}"));
    (
        Login {
            child,
            stdout: reader,
        },
        url,
    )
}

/// The browser: follows the sandbox's auto-approve and returns where it redirects.
async fn authorize(url: &str) -> reqwest::Url {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let answer = browser.get(url).send().await.expect("authorize");
    let location = answer.headers()[reqwest::header::LOCATION]
        .to_str()
        .expect("location");
    reqwest::Url::parse(location).expect("redirect URL")
}

/// Waits for the login to end: its status, standard output and standard error.
async fn finish(login: Login) -> (std::process::ExitStatus, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = login.child.wait_with_output().expect("login ends");
        let stdout = login.stdout.join().expect("reader");
        (
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_in_the_browser_then_the_tokens_deliver_mail() {
    let harness = Harness::start("authorization_code", "xoauth2", Duration::from_secs(3600)).await;
    let (child, url) = start_login(&harness);
    assert!(
        url.contains("code_challenge_method=S256") && url.contains("state="),
        "{url}"
    );
    let redirect = authorize(&url).await;
    assert_eq!(
        redirect.host_str(),
        Some("127.0.0.1"),
        "loopback redirect (RFC 8252)"
    );
    let page = reqwest::get(redirect.as_str())
        .await
        .expect("redirect reaches the login");
    assert!(
        page.text()
            .await
            .expect("body")
            .contains("close this window")
    );
    let (status, stdout, stderr) = finish(child).await;
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("send mail over SMTP"),
        "the scopes are explained first: {stdout}"
    );
    assert!(stdout.contains("Consent stored"), "{stdout}");

    let mut harness = harness;
    harness.restart().await;
    harness.send(1).await.expect("the granted tokens deliver");
    harness
        .sandbox
        .smtp
        .inbox()
        .wait_for_count(1, WAIT)
        .await
        .expect("arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_with_the_wrong_state_is_refused() {
    let harness = Harness::start("authorization_code", "xoauth2", Duration::from_secs(3600)).await;
    let (child, url) = start_login(&harness);
    let mut redirect = authorize(&url).await;
    let forged: Vec<(String, String)> = redirect
        .query_pairs()
        .map(|(k, v)| {
            let value = if k == "state" {
                "forged-by-an-attacker".to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), value)
        })
        .collect();
    redirect.query_pairs_mut().clear().extend_pairs(forged);
    let _ = reqwest::get(redirect.as_str())
        .await
        .expect("reaches the listener");
    let (status, _, stderr) = finish(child).await;
    assert!(!status.success());
    assert!(stderr.contains("CSRF"), "{stderr}");
    assert_eq!(
        harness.sandbox.auth.stats().token_requests,
        0,
        "the code was never exchanged"
    );
}

#[tokio::test]
async fn a_pkce_verifier_mismatch_is_refused_by_the_sandbox() {
    let harness = Harness::start("authorization_code", "xoauth2", Duration::from_secs(3600)).await;
    let broker = &harness.context.broker;
    let endpoints = broker.endpoints(ACCOUNT).await.expect("endpoints");
    let account = harness.account();
    let mut request =
        consent::begin(&account, &endpoints, "http://127.0.0.1/callback", None).expect("begin");
    let redirect = authorize(request.url.as_str()).await;
    let code = consent::code_from_callback(&request, redirect.query().unwrap_or_default(), ACCOUNT)
        .expect("code");
    // An attacker who stole the code does not have the verifier.
    request.pkce = consent::Pkce::generate();
    let error = consent::finish(broker, ACCOUNT, &request, &code)
        .await
        .expect_err("refused");
    match error {
        oxirelay::oauth::broker::BrokerError::Token { source, .. } => {
            assert_eq!(
                source.oauth_error().map(|e| e.code),
                Some(OAuthErrorCode::InvalidGrant)
            );
        }
        other => panic!("unexpected error: {other}"),
    }
}
