//! `oxirelay sendmail` as a local user who holds no key (issue 9): the
//! built binary run through `setpriv` as `oxirelay-test`, a member of the
//! drop group only, against a relay whose master key, client secret and
//! store are root's and 0600. The message waits in the maildrop while no
//! relay runs and is delivered to the sandbox once `serve` starts; while it
//! runs, a new drop is delivered within seconds; that user can open none of
//! the relay's files; unmapped users and forbidden senders are refused.
//! Needs root (to become another user); elsewhere it prints SKIPPED.

mod common;

use common::{ACCOUNT, Harness, RelayProcess, WAIT};
use oxirelay::sandbox::USER as SANDBOX_USER;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Made by `scripts/install-test-tools` (or here): a system user in the
/// drop group and nothing else.
const LOCAL_USER: &str = "oxirelay-test";
const DROP_GROUP: &str = "oxirelay-test-drop";

fn skip(reason: &str) -> bool {
    println!("SKIPPED: {reason}");
    true
}

/// Makes the test user and group if they are missing; false (and a
/// SKIPPED line) where that cannot be done.
fn cannot_become_another_user() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return skip("running `oxirelay sendmail` as another user needs root");
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        return skip("setpriv (util-linux) is not installed");
    }
    let ok = |command: &mut Command| command.status().is_ok_and(|s| s.success());
    if !ok(Command::new("getent")
        .args(["group", DROP_GROUP])
        .stdout(Stdio::null()))
        && !ok(Command::new("groupadd").args(["--system", DROP_GROUP]))
    {
        return skip("cannot create the group oxirelay-test-drop");
    }
    if !ok(Command::new("id")
        .args(["-u", LOCAL_USER])
        .stdout(Stdio::null()))
        && !ok(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--groups",
            DROP_GROUP,
            LOCAL_USER,
        ]))
    {
        return skip("cannot create the user oxirelay-test");
    }
    false
}

fn uid_of(user: &str) -> u32 {
    nix::unistd::User::from_name(user)
        .expect("user database")
        .expect("the user exists")
        .uid
        .as_raw()
}

/// Runs `program args` as `user` (its own groups, nothing of root's), with
/// `stdin` on its standard input.
fn run_as(user: &str, program: &str, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let primary_group = nix::unistd::User::from_name(user)
        .expect("user database")
        .expect("the user exists")
        .gid;
    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={primary_group}"),
            "--init-groups",
            "--",
            program,
        ])
        .args(args)
        .env_remove("OXIRELAY_MASTER_KEY")
        .env_remove("OXIRELAY_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("stdin written");
    child.wait_with_output().expect("finishes")
}

fn sendmail_as(user: &str, config: &Path, args: &[&str], message: &str) -> Output {
    let config = config.to_str().expect("utf-8");
    let mut all = vec!["-c", config, "sendmail"];
    all.extend_from_slice(args);
    run_as(
        user,
        env!("CARGO_BIN_EXE_oxirelay"),
        &all,
        message.as_bytes(),
    )
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Waits for `done`, checking every 50 ms: the pickup's effect on the
/// spool is files in directories, which offer no event to wait on.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The relay of the harness with `[sendmail]`: the spool laid out as the
/// README says, the test user mapped to the account, the config readable
/// by that user, the key and the secret not.
struct Setup {
    harness: Harness,
    spool: PathBuf,
}

async fn setup() -> Setup {
    // As `oxirelay` itself does at start: what the harness creates in this
    // process (the store and its -wal and -shm files) is root's alone.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let harness = Harness::start("client_credentials", "xoauth2", Duration::from_secs(3600)).await;
    harness.add_relay();
    let dir = harness.dir.path().to_path_buf();
    let spool = dir.join("spool");
    let mut config = std::fs::read_to_string(&harness.config_path).expect("config");
    config.push_str(&format!(
        "\n[sendmail]\nspool = \"spool\"\n\n[[sendmail.local]]\nname = \"cron\"\nusers = [\"{LOCAL_USER}\"]\naccount = \"{ACCOUNT}\"\nallowed_from = [\"{SANDBOX_USER}\"]\n"
    ));
    std::fs::write(&harness.config_path, config).expect("write config");
    // The test user may pass through the directory and read the config,
    // which holds references to secrets, never secrets.
    chmod(&dir, 0o711);
    chmod(&harness.config_path, 0o644);
    // README, "sendmail for local users": spool 0755, maildrop 3770 in the
    // drop group.
    std::fs::create_dir(&spool).expect("spool");
    chmod(&spool, 0o755);
    let maildrop = spool.join("maildrop");
    std::fs::create_dir(&maildrop).expect("maildrop");
    let group = nix::unistd::Group::from_name(DROP_GROUP)
        .expect("group database")
        .expect("the drop group exists");
    std::os::unix::fs::chown(&maildrop, None, Some(group.gid.as_raw())).expect("chgrp");
    chmod(&maildrop, 0o3770);
    Setup { harness, spool }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_the_keys_sends_through_the_maildrop() {
    if cannot_become_another_user() {
        return;
    }
    let Setup { harness, spool } = setup().await;
    let config = harness.config_path.clone();
    let maildrop = spool.join("maildrop");
    let uid = uid_of(LOCAL_USER);

    // No relay is running: the message waits, and nothing alarming is said.
    let message = format!(
        "From: Cron <{SANDBOX_USER}>\nTo: ops@example.net\nBcc: audit@example.net\nSubject: nightly backup\n\nall good\n"
    );
    let first = sendmail_as(LOCAL_USER, &config, &["-t", "-i"], &message);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        first.stdout.is_empty() && first.stderr.is_empty(),
        "{}",
        text(&first)
    );
    let dropped = names(&maildrop);
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    let drop_meta = std::fs::metadata(maildrop.join(&dropped[0])).expect("stat");
    assert_eq!(drop_meta.uid(), uid, "the drop is the writer's");
    assert_eq!(drop_meta.mode() & 0o7777, 0o604);

    // That user can open none of the relay's files.
    let dir = harness.dir.path();
    let mut private: Vec<PathBuf> = ["master.key", "client.secret"]
        .iter()
        .map(|name| dir.join(name))
        .collect();
    private.extend(
        names(dir)
            .iter()
            .filter(|n| n.starts_with("oxirelay.db") || n.starts_with("oxirelay-audit"))
            .map(|n| dir.join(n)),
    );
    assert!(
        private.iter().any(|p| p.ends_with("oxirelay.db")),
        "{private:?}"
    );
    for path in &private {
        let read = run_as(LOCAL_USER, "cat", &[path.to_str().expect("utf-8")], b"");
        assert!(
            !read.status.success(),
            "{} readable: {}",
            path.display(),
            text(&read)
        );
        assert!(
            String::from_utf8_lossy(&read.stderr).contains("Permission denied"),
            "{}: {}",
            path.display(),
            text(&read)
        );
    }
    let listing = run_as(LOCAL_USER, "ls", &[maildrop.to_str().expect("utf-8")], b"");
    assert!(
        listing.status.success(),
        "members may list names: {}",
        text(&listing)
    );
    let read = run_as(
        LOCAL_USER,
        "cat",
        &[maildrop.join(&dropped[0]).to_str().expect("utf-8")],
        b"",
    );
    assert!(
        read.status.success(),
        "its own drop, through the owner bits"
    );
    let queue = run_as(
        LOCAL_USER,
        env!("CARGO_BIN_EXE_oxirelay"),
        &["-c", config.to_str().expect("utf-8"), "queue", "list"],
        b"",
    );
    assert!(
        !queue.status.success(),
        "the queue is not this user's: {}",
        text(&queue)
    );

    // Refused at once, with sendmail's exit codes, and nothing dropped.
    let stranger = sendmail_as(
        LOCAL_USER,
        &config,
        &["-f", "stranger@example.com", "ops@example.net"],
        "Subject: x\n\nb\n",
    );
    assert_eq!(stranger.status.code(), Some(67), "{}", text(&stranger));
    assert!(
        String::from_utf8_lossy(&stranger.stderr)
            .contains("local:oxirelay-test may not send as <stranger@example.com>"),
        "{}",
        text(&stranger)
    );
    let nobody = sendmail_as("nobody", &config, &["ops@example.net"], "Subject: x\n\nb\n");
    assert_eq!(nobody.status.code(), Some(77), "{}", text(&nobody));
    assert!(
        String::from_utf8_lossy(&nobody.stderr)
            .contains("local user nobody (uid 65534) may not send mail: no [[sendmail.local]]"),
        "{}",
        text(&nobody)
    );
    let long = format!("Subject: long\n\n{}\n", "x".repeat(1200));
    let too_long = sendmail_as(
        LOCAL_USER,
        &config,
        &["-f", SANDBOX_USER, "ops@example.net"],
        &long,
    );
    assert_eq!(too_long.status.code(), Some(65), "{}", text(&too_long));
    assert!(String::from_utf8_lossy(&too_long.stderr).contains("longer than 998 octets"));
    assert_eq!(names(&maildrop).len(), 1, "nothing more was dropped");

    // A drop made without sendmail, by a user no [[sendmail.local]] names,
    // is refused by the relay and set aside with the reason.
    let forged = maildrop.join("1.forged");
    std::fs::write(
        &forged,
        format!("oxirelay-drop 1\nfrom {SANDBOX_USER}\nto ops@example.net\n\nSubject: forged\r\n\r\nb\r\n"),
    )
    .expect("forged drop");
    std::os::unix::fs::chown(&forged, Some(uid_of("nobody")), None).expect("chown");
    chmod(&forged, 0o604);

    let relay = RelayProcess::start(&config, &[]);
    let inbox = harness.sandbox.smtp.inbox();
    inbox
        .wait_for_count(1, WAIT)
        .await
        .expect("the waiting drop is delivered");
    let entry = &inbox.list().expect("inbox")[0];
    assert_eq!(entry.rcpt_to, ["ops@example.net", "audit@example.net"]);
    let body = String::from_utf8(inbox.read(&entry.id).expect("read")).expect("utf-8");
    assert!(
        body.contains(&format!("(oxirelay sendmail, from userid {uid})")),
        "{body}"
    );
    assert!(
        body.contains("Subject: nightly backup\r\n") && !body.contains("Bcc:"),
        "{body}"
    );
    let rejected = spool.join("rejected");
    wait_until("the forged drop is set aside", || {
        names(&rejected).iter().any(|n| n.ends_with(".rejected"))
    });
    let note_name = names(&rejected)
        .into_iter()
        .find(|n| n.ends_with(".rejected"))
        .expect("a note");
    let note = std::fs::read_to_string(rejected.join(note_name)).expect("note");
    assert!(
        note.contains("local user nobody (uid 65534) may not send mail"),
        "{note}"
    );
    assert!(note.contains("owner: uid 65534 (nobody)"), "{note}");

    // While the relay runs, a new drop goes out within seconds.
    let second = sendmail_as(
        LOCAL_USER,
        &config,
        &["-f", SANDBOX_USER, "later@example.net"],
        "Subject: while serve runs\n\nsecond\n",
    );
    assert!(second.status.success(), "{}", text(&second));
    inbox
        .wait_for_count(2, WAIT)
        .await
        .expect("the second drop is delivered");
    assert!(names(&maildrop).is_empty(), "{:?}", names(&maildrop));
    assert!(names(&spool.join("claimed")).is_empty());
    let queued = harness
        .context
        .store
        .messages(None, 10)
        .await
        .expect("store");
    assert_eq!(queued.len(), 2, "each drop queued once");
    assert!(
        queued
            .iter()
            .all(|m| m.submitted_by == "local:oxirelay-test")
    );

    let status = tokio::task::spawn_blocking(move || relay.terminate())
        .await
        .expect("join");
    assert!(status.success());
}
