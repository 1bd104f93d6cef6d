//! Third-party programs: whether they are installed, running them with a
//! deadline, ports, and output that never shows a token.

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::Command;

/// How long any single wait in these tests may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Whether `program` is installed (it answers `--version`). A test that
/// needs it and finds it missing says so and returns: CI installs
/// everything with `scripts/install-test-tools`, so CI never skips.
pub fn have(program: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        eprintln!("SKIPPED: {program} is not installed; run scripts/install-test-tools");
    }
    found
}

/// Whether swaks can do TLS (it needs Perl's Net::SSLeay for that).
pub fn have_swaks() -> bool {
    if !have("swaks") {
        return false;
    }
    let tls = std::process::Command::new("perl")
        .args(["-MNet::SSLeay", "-e", "1"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|output| output.status.success());
    if !tls {
        eprintln!(
            "SKIPPED: swaks cannot do TLS without Net::SSLeay (libnet-ssleay-perl); run scripts/install-test-tools"
        );
    }
    tls
}

/// Runs `command` to completion within [`WAIT`], without standard input; the
/// process is killed if the test fails or the deadline passes.
pub async fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Name the program only: its arguments may hold a token.
    let program = program_name(command);
    tokio::time::timeout(WAIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{program} could not run: {e}"))
}

/// [`run`] with `input` as standard input (msmtp, sendmail-style clients).
pub async fn run_with_input(command: &mut Command, input: &[u8]) -> Output {
    use tokio::io::AsyncWriteExt;
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let program = program_name(command);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{program} could not run: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let finished = async move {
        // A client that fails early stops reading: its exit status says why.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
        child.wait_with_output().await
    };
    tokio::time::timeout(WAIT, finished)
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{program} failed: {e}"))
}

fn program_name(command: &Command) -> String {
    command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned()
}

/// Standard output and error of a finished program, tokens redacted: what a
/// failing assertion may print.
pub fn describe(output: &Output) -> String {
    redact(&format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// Replaces every long run of base64/base64url/JWT characters (an access
/// token, a SASL payload carrying one) with its length, so that logs and
/// program output can be printed when a test fails.
pub fn redact(text: &str) -> String {
    const LONGEST_KEPT: usize = 48;
    let is_token_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-' | '.');
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() > LONGEST_KEPT {
            out.push_str(&format!("[redacted {} chars]", run.len()));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if is_token_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// A port on 127.0.0.1 that was free a moment ago, for a server that must be
/// told its port in a config file (Dovecot) rather than report it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// Waits until something accepts TCP connections on `addr`, or `alive`
/// says the server is gone, or [`WAIT`] passes. Returns whether it is up.
pub async fn wait_for_port(addr: SocketAddr, mut alive: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    // Connection attempts to a port nobody listens on fail at once; space
    // them out a little so a slow start does not become a busy loop.
    let mut pause = Duration::from_millis(5);
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        if !alive() {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    false
}

/// Writes a file readable by its owner only (secrets, keys, client configs
/// that msmtp insists be private).
pub fn write_private(path: &std::path::Path, contents: &[u8]) {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut file| file.write_all(contents))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
