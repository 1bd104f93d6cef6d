//! The web console in a real browser: Debian's headless Chromium through
//! chromedriver (WebDriver, with fantoccini), against a real `oxirelay
//! serve` and the sandbox. Log in, see the account, Connect it through
//! the sandbox's own consent page, retry a deferred message and see it
//! delivered, and a forged form post from another origin without the
//! CSRF token refused. A screenshot of the queue page is saved under
//! `target/test-output/console-queue.png`.
//!
//! chromedriver and chromium come from `scripts/install-test-tools`; the
//! test finds them on PATH (or in `CHROMEDRIVER` / `CHROMIUM`) and prints
//! `SKIPPED: ...` without them.

mod console_common;

use console_common::{ACCOUNT, Console, PASSWORD, WAIT};
use fantoccini::{ClientBuilder, Locator};
use oxirelay::store::MessageState;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A program from the environment variable `variable`, else the first of
/// `names` on PATH.
fn find_program(variable: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(variable).map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(program: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // Ready when /status says so; bounded.
        let client = reqwest::Client::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = match client.get(format!("{}/status", driver.url)).send().await {
                Ok(answer) => answer
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver was not ready within {WAIT:?}"
            );
            // Polling a process that has no other way to say it is ready.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A hostile site on another origin: one page with a form that posts to
/// the console without a CSRF token (what a forged request looks like).
async fn hostile_site(target: String) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let page = format!(
        "<!doctype html><html><body><h1>Win a prize</h1>\
         <form method=\"post\" action=\"{target}\"><input type=\"hidden\" name=\"back\" value=\"/console/queue\">\
         <button id=\"claim\" type=\"submit\">Claim</button></form></body></html>"
    );
    let task = tokio::spawn(async move {
        // A few page loads at most (and the favicon).
        for _ in 0..8 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut request = vec![0u8; 4096];
            let _ = stream.read(&mut request).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (url, task)
}

async fn element(client: &fantoccini::Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
}

async fn text_of(client: &fantoccini::Client, css: &str) -> String {
    element(client, css).await.text().await.expect("text")
}

async fn click(client: &fantoccini::Client, css: &str) {
    element(client, css)
        .await
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

/// Waits until the page's URL has `path` (bounded).
async fn wait_for_path(client: &fantoccini::Client, path: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let url = client.current_url().await.expect("url");
        if url.path() == path {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the browser is at {url}, not {path}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn output_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_connects_an_account_and_retries_mail_in_a_browser() {
    let Some(chromedriver) = find_program("CHROMEDRIVER", &["chromedriver"]) else {
        eprintln!(
            "SKIPPED: chromedriver is not installed (Debian: chromium-driver); run scripts/install-test-tools"
        );
        return;
    };
    let Some(chromium) = find_program("CHROMIUM", &["chromium", "chromium-browser"]) else {
        eprintln!(
            "SKIPPED: chromium is not installed (Debian: chromium); run scripts/install-test-tools"
        );
        return;
    };
    // The sandbox shows its consent page: the browser clicks Allow.
    let console = Console::start(false).await;
    // Two messages while the account has no consent: both deferred.
    let retried = console.submit("to be retried").await;
    let targeted = console.submit("target of a forged cancel").await;
    console.wait_for_attempt(&retried);
    console.wait_for_attempt(&targeted);
    assert_eq!(
        console.state_of(&retried).await,
        Some(MessageState::Deferred)
    );

    let driver = Driver::start(&chromedriver).await;
    let profile = tempfile::tempdir().expect("profile dir");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                // As root in CI: Chromium's sandbox needs user namespaces.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1400,900",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session");
    let base = &console.base;

    // Log in.
    client
        .goto(&format!("{base}/console/login"))
        .await
        .expect("login page");
    client
        .find(Locator::Css("input#password"))
        .await
        .expect("password field")
        .send_keys(PASSWORD)
        .await
        .expect("type");
    click(&client, "form.login button[type=submit]").await;
    wait_for_path(&client, "/console/accounts").await;
    let row = text_of(&client, &format!("tr[data-account=\"{ACCOUNT}\"]")).await;
    assert!(row.contains(ACCOUNT), "{row}");
    let state = text_of(
        &client,
        &format!("tr[data-account=\"{ACCOUNT}\"] span.state"),
    )
    .await;
    assert_ne!(state, "valid", "no consent yet");

    // A forged post from another origin, without the CSRF token: refused.
    let (hostile, site) = hostile_site(format!("{base}/console/queue/{targeted}/cancel")).await;
    client.goto(&hostile).await.expect("hostile page");
    click(&client, "#claim").await;
    let refusal = text_of(&client, "main").await;
    assert!(refusal.contains("Nothing was done"), "{refusal}");
    assert_eq!(
        console.state_of(&targeted).await,
        Some(MessageState::Deferred),
        "the forged cancel changed nothing"
    );
    site.abort();

    // Connect: the sandbox's consent page, Allow, and back.
    client
        .goto(&format!("{base}/console/accounts"))
        .await
        .expect("accounts");
    click(&client, "button.connect").await;
    wait_for_path(&client, "/authorize").await;
    let consent = text_of(&client, "body").await;
    assert!(consent.contains("Grant access"), "{consent}");
    click(&client, "button[value=allow]").await;
    wait_for_path(&client, "/console/accounts").await;
    let flash = text_of(&client, "p.flash").await;
    assert!(flash.contains("is connected"), "{flash}");
    let row = text_of(
        &client,
        &format!("tr[data-account=\"{ACCOUNT}\"] span.state"),
    )
    .await;
    assert_eq!(row, "valid");

    // Retry the deferred message; it is delivered.
    client
        .goto(&format!("{base}/console/queue?state=deferred"))
        .await
        .expect("queue");
    click(
        &client,
        &format!("tr[data-id=\"{retried}\"] form[action$=\"/retry\"] button"),
    )
    .await;
    let flash = text_of(&client, "p.flash").await;
    assert!(flash.contains("is due now"), "{flash}");
    let deadline = Instant::now() + WAIT;
    loop {
        client
            .goto(&format!("{base}/console/messages/{retried}"))
            .await
            .expect("message page");
        let state = text_of(&client, "dl.message span.state").await;
        if state == "delivered" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "message {retried} is still {state}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        console.state_of(&retried).await,
        Some(MessageState::Delivered)
    );
    let history = text_of(&client, "table.events").await;
    assert!(history.contains("delivered"), "{history}");

    // The queue page, as a person sees it.
    client
        .goto(&format!("{base}/console/queue"))
        .await
        .expect("queue");
    text_of(&client, "table.queue").await;
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.len() > 1000, "a real picture: {} bytes", png.len());
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let dir = output_dir();
    std::fs::create_dir_all(&dir).expect("output dir");
    let file = dir.join("console-queue.png");
    std::fs::write(&file, &png).expect("write the screenshot");
    assert!(std::fs::metadata(&file).expect("saved").len() > 0);
    eprintln!("screenshot: {}", file.display());

    client.close().await.expect("close the browser");
    drop(driver);
}
