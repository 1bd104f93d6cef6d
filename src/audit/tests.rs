//! The audit log over real files in temp dirs and a real SQLite store.

use super::*;
use crate::store::SqliteStore;

fn master(fill: u8) -> MasterKey {
    MasterKey::from_bytes([fill; 32])
}

fn entry(action: &str) -> AuditEntry {
    AuditEntry {
        actor: "relay".into(),
        action: action.into(),
        account: Some("office".into()),
        token_fingerprint: Some("fp:0123456789ab".into()),
        message_id: None,
        detail: String::new(),
    }
}

fn open(path: &Path) -> AuditLog {
    AuditLog::open(path, &master(1), AuditOptions::default()).expect("open")
}

fn write_log(dir: &Path, actions: &[&str]) -> PathBuf {
    let path = dir.join("audit.jsonl");
    let log = open(&path);
    for action in actions {
        log.append(entry(action)).expect("append");
    }
    path
}

const THREE: [&str; 3] = ["token.issued", "message.delivered", "account.revoked"];

fn keyed(path: &Path) -> Result<VerifyReport, AuditError> {
    verify(path, Some(&master(1)), AnchorCheck::NotChecked)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write");
}

fn field(line: &str, name: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(line).expect("json");
    value[name].as_str().expect("a string field").to_string()
}

async fn store(dir: &Path) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.join("store.db").display());
    Arc::new(SqliteStore::open(&url).await.expect("store"))
}

#[test]
fn intact_chain_verifies_and_reopening_continues_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), &THREE);
    let report = keyed(&path).expect("intact");
    assert_eq!((report.lines, report.macs_checked), (3, 3));
    assert_eq!(report.key_ids, vec![format!("{:08x}", master(1).key_id())]);
    open(&path).append(entry("lockdown")).expect("append");
    assert_eq!(keyed(&path).expect("intact").lines, 4);
    // Every line names its key and ends with its MAC.
    for line in lines(&path) {
        assert!(line.contains(&format!("\"key\":\"{:08x}\"", master(1).key_id())));
        assert!(
            line.ends_with("\"}") && line.contains(",\"mac\":\""),
            "{line}"
        );
    }
}

#[test]
fn two_writers_on_one_file_keep_one_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let (a, b) = (open(&path), open(&path));
    std::thread::scope(|scope| {
        for log in [&a, &b] {
            scope.spawn(move || {
                for _ in 0..20 {
                    log.append(entry("interleaved")).expect("append");
                }
            });
        }
    });
    assert_eq!(keyed(&path).expect("one intact chain").lines, 40);
}

#[test]
fn edited_line_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), &THREE);
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replace("message.delivered", "message.bounced")).expect("write");
    let err = keyed(&path).expect_err("edited");
    assert!(matches!(err, AuditError::Broken { line: 2, .. }), "{err}");
}

#[test]
fn deleted_line_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), &THREE);
    let mut kept = lines(&path);
    kept.remove(1);
    write_lines(&path, &kept);
    let err = keyed(&path).expect_err("deleted");
    assert!(matches!(err, AuditError::Broken { line: 2, .. }), "{err}");
}

/// Rewrites line `index` with `edit`, then recomputes every unkeyed link
/// after it, as someone without the key would.
fn rewrite_from(path: &Path, index: usize, edit: impl Fn(&str) -> String) {
    let mut all = lines(path);
    all[index] = edit(&all[index]);
    for i in index + 1..all.len() {
        let prev_hash = line::sha256_hex(all[i - 1].as_bytes());
        let old_prev = field(&all[i], "prev");
        all[i] = all[i].replace(&old_prev, &prev_hash);
    }
    write_lines(path, &all);
}

#[test]
fn an_edited_middle_line_with_recomputed_unkeyed_hashes_fails_its_mac() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(
        dir.path(),
        &["token.issued", "message.delivered", "unlock", "lockdown"],
    );
    rewrite_from(&path, 1, |l| {
        l.replace("message.delivered", "message.bounced")
    });
    // The unkeyed links all hold: that is what a keyless check sees.
    verify(&path, None, AnchorCheck::NotChecked).expect("the unkeyed chain is consistent");
    let err = keyed(&path).expect_err("the MAC catches it");
    match &err {
        AuditError::Broken {
            line: 2, reason, ..
        } => {
            assert!(reason.contains("MAC does not match"), "{reason}")
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn truncation_is_detected_by_the_anchor_and_recorded_by_the_next_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path()).await;
    let path = dir.path().join("audit.jsonl");
    {
        let log = open(&path).with_anchor(store.clone());
        for action in ["a", "b", "c", "d", "e"] {
            log.append(entry(action)).expect("append");
        }
        assert!(log.sync_anchor(Duration::from_secs(20)), "anchored in time");
    }
    let anchor = store.audit_anchor().await.expect("store").expect("anchor");
    assert_eq!(anchor.seq, 5);
    assert_eq!(anchor.hash, line::sha256_hex(lines(&path)[4].as_bytes()));
    let check = || {
        verify(
            &path,
            Some(&master(1)),
            AnchorCheck::Stored(Some(anchor.clone())),
        )
    };
    assert_eq!(check().expect("intact").anchored_at, Some(5));

    // Deleting the last two lines leaves a valid, shorter chain...
    let all = lines(&path);
    write_lines(&path, &all[..3]);
    keyed(&path).expect("the chain alone cannot tell");
    // ...which the anchor gives away.
    let err = check().expect_err("truncated");
    assert!(
        matches!(&err, AuditError::Anchor(m) if m.contains("TRUNCATED") && m.contains("line 5") && m.contains("ends at line 3")),
        "{err}"
    );

    // Rewriting the end (recomputed links): the MAC catches it, and the
    // anchor on its own too, as a check without the key shows.
    write_lines(&path, &all);
    rewrite_from(&path, 3, |l| {
        l.replace("\"action\":\"d\"", "\"action\":\"f\"")
    });
    let err = check().expect_err("rewritten");
    assert!(matches!(&err, AuditError::Broken { line: 4, .. }), "{err}");
    let err = verify(&path, None, AnchorCheck::Stored(Some(anchor.clone())))
        .expect_err("the anchored line changed");
    assert!(
        matches!(&err, AuditError::Anchor(m) if m.contains("line 5 is not the line the store anchored")),
        "{err}"
    );

    // A writer going on after a truncation records it in the chain itself,
    // so moving the anchor on afterwards hides nothing.
    write_lines(&path, &all[..3]);
    {
        let log = open(&path).with_anchor(store.clone());
        log.append(entry("after")).expect("append");
        assert!(log.sync_anchor(Duration::from_secs(20)));
    }
    let anchor = store.audit_anchor().await.expect("store").expect("anchor");
    let report_err = verify(&path, Some(&master(1)), AnchorCheck::Stored(Some(anchor)))
        .expect_err("the loss is on record");
    match &report_err {
        AuditError::Broken {
            line: 5, reason, ..
        } => {
            assert!(
                reason.contains("lines were lost") && reason.contains("line 5"),
                "{reason}"
            )
        }
        other => panic!("{other}"),
    }
    let actions: Vec<String> = lines(&path).iter().map(|l| field(l, "action")).collect();
    assert_eq!(actions, ["a", "b", "c", "after", "audit.anchor_mismatch"]);
}

#[test]
fn a_log_with_keyed_lines_and_no_anchor_in_the_store_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), &THREE);
    let err = verify(&path, Some(&master(1)), AnchorCheck::Stored(None)).expect_err("no anchor");
    assert!(
        matches!(&err, AuditError::Anchor(m) if m.contains("no anchor")),
        "{err}"
    );
}

#[test]
fn a_torn_last_line_is_set_aside_and_the_chain_goes_on_from_the_last_good_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), &THREE);
    let whole = std::fs::read(&path).expect("read");
    // A crash in the middle of the fourth line's write.
    let torn = b"{\"seq\":4,\"at\":\"2025-01-01T00:00:00.000Z\",\"actor\":\"re";
    let mut damaged = whole.clone();
    damaged.extend_from_slice(torn);
    std::fs::write(&path, &damaged).expect("write");

    let report = keyed(&path).expect("a torn end is not tampering");
    assert_eq!(report.lines, 3);
    assert!(
        report.notices.iter().any(|n| n.contains("torn line")),
        "{:?}",
        report.notices
    );

    // Opening (every command, serve, sendmail) repairs it.
    let log = open(&path);
    log.append(entry("message.delivered"))
        .expect("appends go on");
    let report = keyed(&path).expect("intact again");
    assert_eq!(report.lines, 5);
    let all = lines(&path);
    assert_eq!(field(&all[3], "action"), "audit.tail_set_aside");
    assert!(field(&all[3], "detail").contains(&format!("{} bytes after line 3", torn.len())));
    assert_eq!(field(&all[4], "action"), "message.delivered");
    assert_eq!(
        std::fs::read(&path).expect("read")[..whole.len()],
        whole[..]
    );
    assert!(
        report
            .notices
            .iter()
            .any(|n| n.contains("set aside") || n.contains("were not a whole audit line"))
    );

    // The torn bytes are kept, beside the log.
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().contains(".torn-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(&aside[0]).expect("read"), torn);
}

#[test]
fn a_whole_last_line_that_is_not_an_audit_line_is_set_aside_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), &THREE);
    let mut text = std::fs::read_to_string(&path).expect("read");
    text.push_str("\0\0\0\0\n");
    std::fs::write(&path, text).expect("write");
    open(&path).append(entry("next")).expect("append");
    let all = lines(&path);
    assert_eq!(all.len(), 5);
    assert_eq!(field(&all[3], "action"), "audit.tail_set_aside");
    keyed(&path).expect("intact");
}

#[test]
fn a_file_that_is_no_audit_log_is_moved_aside_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let junk = "x".repeat(100) + "\n";
    std::fs::write(
        &path,
        junk.repeat((files::MAX_SET_ASIDE as usize / junk.len()) + 10),
    )
    .expect("write");
    open(&path).append(entry("first")).expect("append");
    let all = lines(&path);
    assert_eq!(field(&all[0], "action"), "audit.log_set_aside");
    assert_eq!(keyed(&path).expect("a new chain").lines, 2);
    assert!(std::fs::read_dir(dir.path()).expect("dir").any(|e| {
        e.expect("entry")
            .file_name()
            .to_string_lossy()
            .contains(".damaged-")
    }));
}

#[test]
fn a_200_kb_upstream_reply_is_cut_and_the_log_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let log = open(&path);
    let reply = format!(
        "550-5.7.1 {}\r\n550 5.7.1 refused",
        "very long reply ".repeat(12_800)
    );
    assert!(reply.len() > 200_000);
    let mut deferred = entry("message.bounced");
    deferred.detail = reply.clone();
    log.append(deferred).expect("append");
    log.append(entry("message.delivered"))
        .expect("the next append works");
    drop(log);
    open(&path)
        .append(entry("lockdown"))
        .expect("and after reopening");
    let all = lines(&path);
    assert!(
        all.iter().all(|l| l.len() <= MAX_LINE_BYTES),
        "every line is bounded"
    );
    let detail = field(&all[0], "detail");
    assert!(detail.starts_with("550-5.7.1 very long reply"));
    assert!(
        detail.ends_with(&format!("[cut: {} bytes in all]", reply.len())),
        "{}",
        &detail[detail.len() - 60..]
    );
    assert_eq!(keyed(&path).expect("intact").lines, 3);
}

/// A log as the unkeyed writer of earlier versions wrote it.
fn legacy_log(path: &Path, details: &[String]) {
    let mut prev = line::GENESIS.to_string();
    let mut text = String::new();
    for (i, detail) in details.iter().enumerate() {
        let mut e = entry("message.deferred");
        e.detail = detail.clone();
        let mut parsed = line::Line {
            seq: i as u64 + 1,
            at: "2024-12-31T23:59:59.000Z".into(),
            entry: e,
            prev: prev.clone(),
            seal: line::Seal::Legacy {
                hash: String::new(),
            },
            hash: String::new(),
        };
        let hash = line::legacy_hash(&parsed);
        parsed.seal = line::Seal::Legacy { hash: hash.clone() };
        let mut value = serde_json::to_value(&parsed.entry).expect("json");
        let object = value.as_object_mut().expect("object");
        let mut ordered = serde_json::Map::new();
        ordered.insert("seq".into(), parsed.seq.into());
        ordered.insert("at".into(), parsed.at.clone().into());
        ordered.append(object);
        ordered.insert("prev".into(), prev.clone().into());
        ordered.insert("hash".into(), hash.clone().into());
        text.push_str(&serde_json::Value::Object(ordered).to_string());
        text.push('\n');
        prev = hash;
    }
    std::fs::write(path, text).expect("write");
}

#[test]
fn a_legacy_log_with_a_line_over_64_kib_is_continued_keyed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    // The old writer's bug: after a line over 64 KiB it could not find the
    // chain's end, and every append (and every start) failed.
    legacy_log(&path, &["421 busy".into(), "x".repeat(70 * 1024)]);
    let report = keyed(&path).expect("a legacy chain verifies");
    assert_eq!(report.legacy_lines, 2);
    assert!(
        report
            .notices
            .iter()
            .any(|n| n.contains("unkeyed legacy chain of 2 lines"))
    );

    open(&path)
        .append(entry("message.delivered"))
        .expect("append after a long line");
    let report = keyed(&path).expect("legacy then keyed");
    assert_eq!(
        (report.legacy_lines, report.keyed_lines, report.macs_checked),
        (2, 1, 1)
    );
    assert!(
        report
            .notices
            .iter()
            .any(|n| n.contains("the first 2 lines are an unkeyed legacy chain"))
    );

    // The first keyed line pins the legacy lines: rewriting one of them,
    // with the legacy hashes recomputed, breaks the link to it.
    let keyed_line = lines(&path)[2].clone();
    legacy_log(&path, &["421 edited".into(), "x".repeat(70 * 1024)]);
    let mut text = std::fs::read_to_string(&path).expect("read");
    text.push_str(&keyed_line);
    text.push('\n');
    std::fs::write(&path, text).expect("write");
    let err = keyed(&path).expect_err("pinned");
    assert!(matches!(err, AuditError::Broken { line: 3, .. }), "{err}");
}

#[test]
fn an_unkeyed_line_after_keyed_ones_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), &THREE);
    let legacy_path = dir.path().join("legacy.jsonl");
    legacy_log(
        &legacy_path,
        &["a".into(), "b".into(), "c".into(), "d".into()],
    );
    let mut all = lines(&path);
    all.push(lines(&legacy_path)[3].clone());
    write_lines(&path, &all);
    let err = keyed(&path).expect_err("refused");
    assert!(matches!(err, AuditError::Broken { line: 4, .. }), "{err}");
}

#[test]
fn rotated_files_are_one_chain_in_the_order_of_their_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(
        &path,
        &master(1),
        AuditOptions {
            rotate_bytes: Some(1500),
        },
    )
    .expect("open");
    for i in 0..20 {
        log.append(entry(&format!("event.{i}"))).expect("append");
    }
    let report = keyed(&path).expect("intact across files");
    assert_eq!(report.lines, 20);
    assert!(report.files.len() >= 4, "{:?}", report.files);
    assert_eq!(report.files.last(), Some(&path));

    // logrotate's numbering (.1 newest) is the opposite of the time order
    // of oxirelay's names: the order comes from the lines, not the names.
    let rotated: Vec<PathBuf> = report.files[..report.files.len() - 1].to_vec();
    for (i, file) in rotated.iter().rev().enumerate() {
        std::fs::rename(file, dir.path().join(format!("audit.jsonl.{}", i + 1))).expect("rename");
    }
    let renamed = keyed(&path).expect("still one chain");
    assert_eq!(renamed.lines, 20);
    assert_eq!(
        renamed.files[0],
        dir.path().join(format!("audit.jsonl.{}", rotated.len()))
    );

    // Removing the oldest file (retention) is said, not an error...
    std::fs::remove_file(&renamed.files[0]).expect("remove oldest");
    let report = keyed(&path).expect("retention");
    assert!(report.first_seq > Some(1));
    assert!(
        report
            .notices
            .iter()
            .any(|n| n.contains("the chain starts at line"))
    );
    // ...removing one from the middle breaks the chain.
    std::fs::remove_file(&report.files[1]).expect("remove a middle file");
    assert!(matches!(keyed(&path), Err(AuditError::Broken { .. })));
}

#[test]
fn an_empty_log_after_an_outside_rotation_goes_on_from_the_rotated_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), &THREE);
    let log = open(&path);
    // logrotate with `create`: the file is renamed and a new one made.
    std::fs::rename(&path, dir.path().join("audit.jsonl.1")).expect("rotate");
    std::fs::write(&path, "").expect("create");
    log.append(entry("after rotation"))
        .expect("append to the new file");
    let report = keyed(&path).expect("one chain");
    assert_eq!((report.lines, report.files.len()), (4, 2));
    assert_eq!(lines(&path).len(), 1);
}

#[test]
fn lines_keyed_with_a_destroyed_key_stay_covered_by_later_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), &THREE);
    let rotated = master(2).with_previous(vec![master(1)]);
    AuditLog::open(&path, &rotated, AuditOptions::default())
        .expect("open")
        .append(entry("key.rotated"))
        .expect("append");
    let both = verify(&path, Some(&rotated), AnchorCheck::NotChecked).expect("both keys");
    assert_eq!(both.macs_checked, 4);
    // The old key destroyed: its lines are pinned by the new key's line.
    let new_only = verify(&path, Some(&master(2)), AnchorCheck::NotChecked).expect("new key");
    assert_eq!(new_only.macs_checked, 1);
    assert!(
        new_only
            .notices
            .iter()
            .any(|n| n.contains("covered by the chain")),
        "{:?}",
        new_only.notices
    );
    // An old line edited (links recomputed) breaks the link to the new line.
    rewrite_from(&path, 1, |l| {
        l.replace("message.delivered", "message.bounced")
    });
    let err = verify(&path, Some(&master(2)), AnchorCheck::NotChecked).expect_err("edited");
    assert!(matches!(err, AuditError::Broken { line: 4, .. }), "{err}");
}

#[test]
fn a_config_without_the_writing_key_cannot_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), &THREE);
    let err = verify(&path, Some(&master(9)), AnchorCheck::NotChecked).expect_err("other key");
    assert!(
        matches!(&err, AuditError::Unverifiable(m) if m.contains(&format!("{:08x}", master(1).key_id()))),
        "{err}"
    );
    // Lines after the last one whose key is at hand are not authenticated.
    AuditLog::open(&path, &master(9), AuditOptions::default())
        .expect("open")
        .append(entry("other"))
        .expect("append");
    let err = keyed(&path).expect_err("tail under another key");
    assert!(
        matches!(&err, AuditError::Unverifiable(m) if m.contains("lines 4..4")),
        "{err}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn a_failed_append_does_not_stop_the_caller_and_the_gap_is_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), &["a", "b"]);
    let log = open(&path);
    // The disk fills up: /dev/full answers every write with ENOSPC.
    let kept = dir.path().join("kept");
    std::fs::rename(&path, &kept).expect("move");
    std::os::unix::fs::symlink("/dev/full", &path).expect("symlink");
    for _ in 0..2 {
        let err = log.append(entry("lost")).expect_err("disk full");
        assert!(err.to_string().contains("records the gap"), "{err}");
    }
    // Space again.
    std::fs::remove_file(&path).expect("unlink");
    std::fs::rename(&kept, &path).expect("move back");
    log.append(entry("c")).expect("append");
    let all = lines(&path);
    let actions: Vec<String> = all.iter().map(|l| field(l, "action")).collect();
    assert_eq!(actions, ["a", "b", "audit.gap", "c"]);
    assert!(field(&all[2], "detail").starts_with("2 audit events could not be written"));
    assert!(field(&all[2], "detail").contains("No space left on device"));
    let report = keyed(&path).expect("the chain goes on correctly");
    assert!(
        report
            .notices
            .iter()
            .any(|n| n.contains("2 audit events could not be written"))
    );
}

#[tokio::test]
async fn the_anchor_follows_several_writers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path()).await;
    let path = dir.path().join("audit.jsonl");
    let a = open(&path).with_anchor(store.clone());
    let b = open(&path).with_anchor(store.clone());
    for i in 0..10 {
        let log = if i % 3 == 0 { &a } else { &b };
        log.append(entry("interleaved")).expect("append");
    }
    assert!(a.sync_anchor(Duration::from_secs(20)) && b.sync_anchor(Duration::from_secs(20)));
    let anchor = store.audit_anchor().await.expect("store").expect("anchor");
    assert_eq!(anchor.seq, 10);
    let report =
        verify(&path, Some(&master(1)), AnchorCheck::Stored(Some(anchor))).expect("intact");
    assert_eq!(report.anchored_at, Some(10));
    assert!(
        !lines(&path)
            .iter()
            .any(|l| l.contains("audit.anchor_mismatch"))
    );
}

#[test]
fn concurrent_appends_share_flushes_and_keep_one_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let log = Arc::new(open(&path));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for n in 0..25 {
                    log.append(entry(&format!("message.delivered.{t}.{n}")))
                        .expect("append");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("join");
    }
    // Every append returned after its line was written: all 200 are there,
    // in one unbroken keyed chain, each exactly once.
    assert_eq!(keyed(&path).expect("intact").lines, 200);
    let text = std::fs::read_to_string(&path).expect("read");
    for t in 0..8 {
        for n in 0..25 {
            let action = format!("\"message.delivered.{t}.{n}\"");
            assert_eq!(text.matches(&action).count(), 1, "{action}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_appends_wait_for_the_disk_off_the_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let log = Arc::new(open(&path));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..50 {
        let log = log.clone();
        tasks.spawn(async move { log.append_async(entry(&format!("a{n}"))).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("join").expect("append");
    }
    assert_eq!(keyed(&path).expect("intact").lines, 50);
}
