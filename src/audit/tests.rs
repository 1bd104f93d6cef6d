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
fn entries_appended_together_keep_their_order_among_other_writers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let log = open(&path);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for _ in 0..20 {
                log.append(entry("single")).expect("append");
            }
        });
        scope.spawn(|| {
            for _ in 0..10 {
                log.append_all(THREE.iter().map(|action| entry(action)).collect())
                    .expect("append all");
            }
        });
    });
    assert!(
        log.append_all(Vec::new()).is_ok(),
        "nothing to write is no error"
    );
    assert_eq!(keyed(&path).expect("one intact chain").lines, 50);
    // Each group of three is whole and in order, whatever came between groups.
    let actions: Vec<String> = lines(&path)
        .iter()
        .map(|line| field(line, "action"))
        .filter(|action| action != "single")
        .collect();
    for group in actions.chunks(3) {
        assert_eq!(group, THREE, "{actions:?}");
    }
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
    let anchor = store
        .audit_anchor(&super::chain_id(&path))
        .await
        .expect("store")
        .expect("anchor");
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
    let anchor = store
        .audit_anchor(&super::chain_id(&path))
        .await
        .expect("store")
        .expect("anchor");
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
            mac: None,
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
            ..AuditOptions::default()
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

    // Removing one from the middle breaks the chain; so does removing the
    // oldest by hand (see the retention tests).
    std::fs::remove_file(&renamed.files[1]).expect("remove a middle file");
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
    let anchor = store
        .audit_anchor(&super::chain_id(&path))
        .await
        .expect("store")
        .expect("anchor");
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

// Rotation by age and retention, with the clock driven by hand.

const DAY: u64 = 86_400;
/// 2025-01-01T00:00:00Z: the test clock's start.
const T0: u64 = 1_735_689_600;

/// A clock that stands still until the test moves it.
struct HandClock(Arc<std::sync::atomic::AtomicU64>);

impl HandClock {
    fn new() -> HandClock {
        HandClock(Arc::new(std::sync::atomic::AtomicU64::new(T0)))
    }

    fn audit_clock(&self) -> AuditClock {
        let secs = self.0.clone();
        AuditClock::from_fn(move || {
            std::time::UNIX_EPOCH
                + Duration::from_secs(secs.load(std::sync::atomic::Ordering::SeqCst))
        })
    }

    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }

    fn now(&self) -> std::time::SystemTime {
        self.audit_clock().now()
    }
}

fn open_with(path: &Path, clock: &HandClock, every: Option<u64>, keep: Option<u64>) -> AuditLog {
    AuditLog::open(
        path,
        &master(1),
        AuditOptions {
            rotate_every: every.map(Duration::from_secs),
            keep: keep.map(Duration::from_secs),
            clock: clock.audit_clock(),
            ..AuditOptions::default()
        },
    )
    .expect("open")
}

/// The rotated files beside `path`, by name.
fn rotated(path: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = files::chain_files(path)
        .expect("list")
        .files
        .into_iter()
        .filter(|f| f != path)
        .collect();
    names.sort();
    names
}

fn retention_lines(path: &Path) -> Vec<RemovedFile> {
    let mut records = Vec::new();
    for file in files::chain_files(path).expect("list").files {
        for text in lines(&file) {
            let line = line::parse(text.as_bytes()).expect("a line");
            if line.entry.action == retention::ACTION {
                records.push(RemovedFile::parse(&line.entry.detail).expect("a record"));
            }
        }
    }
    records
}

#[test]
fn the_log_rotates_at_the_first_append_after_its_age_and_the_chain_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let clock = HandClock::new();
    let log = open_with(&path, &clock, Some(DAY), None);
    log.append(entry("first")).expect("append");
    clock.advance(DAY - 1);
    log.append(entry("a second short of a day"))
        .expect("append");
    assert!(rotated(&path).is_empty(), "not a day old yet");
    clock.advance(1);
    log.append(entry("a day old")).expect("append");
    let after_one = rotated(&path);
    assert_eq!(
        after_one.len(),
        1,
        "rotated once the first line is a day old"
    );
    // Named by the clock that drove it, and holding the lines before.
    assert_eq!(
        after_one[0],
        dir.path().join("audit.jsonl.20250102T000000Z")
    );
    assert_eq!(lines(&after_one[0]).len(), 2);
    assert_eq!(lines(&path).len(), 1);
    // The age counts from the new file's first line, not the old one's.
    clock.advance(DAY / 2);
    log.append(entry("half a day later")).expect("append");
    assert_eq!(rotated(&path).len(), 1);
    clock.advance(DAY / 2);
    log.append(entry("two days")).expect("append");
    assert_eq!(rotated(&path).len(), 2);

    let report = keyed(&path).expect("one chain across the files");
    assert_eq!((report.lines, report.files.len()), (5, 3));
    assert_eq!(
        report
            .checked
            .iter()
            .map(|f| (f.first_seq, f.last_seq, f.lines))
            .collect::<Vec<_>>(),
        vec![
            (Some(1), Some(2), 2),
            (Some(3), Some(4), 2),
            (Some(5), Some(5), 1)
        ]
    );
    assert!(report.removed_by_retention.is_none());
}

#[test]
fn a_log_older_than_its_period_is_rotated_on_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let clock = HandClock::new();
    {
        let log = open_with(&path, &clock, None, None);
        log.append(entry("written without rotation"))
            .expect("append");
    }
    clock.advance(3 * DAY);
    let log = open_with(&path, &clock, Some(DAY), None);
    assert_eq!(rotated(&path).len(), 1, "rotated by opening alone");
    assert!(lines(&path).is_empty());
    log.append(entry("after")).expect("append");
    let report = keyed(&path).expect("the chain goes on");
    assert_eq!((report.lines, report.last_seq), (2, Some(2)));
}

#[test]
fn size_and_age_rotation_combine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let clock = HandClock::new();
    let log = AuditLog::open(
        &path,
        &master(1),
        AuditOptions {
            rotate_bytes: Some(1500),
            rotate_every: Some(Duration::from_secs(DAY)),
            clock: clock.audit_clock(),
            ..AuditOptions::default()
        },
    )
    .expect("open");
    // Size first: about 400 bytes a line, so every fourth line or so.
    for i in 0..8 {
        log.append(entry(&format!("busy.{i}"))).expect("append");
    }
    let by_size = rotated(&path).len();
    assert!(by_size >= 1, "rotated by size within a day");
    // Then age, on a file far below the size.
    assert!(!lines(&path).is_empty() && lines(&path).len() < 4);
    clock.advance(DAY);
    log.append(entry("quiet")).expect("append");
    assert_eq!(rotated(&path).len(), by_size + 1, "rotated by age");
    assert_eq!(lines(&path).len(), 1);
    assert_eq!(keyed(&path).expect("one chain").lines, 9);
}

/// One line a day for `days` days, rotating daily, keeping `keep` days.
fn daily_log(path: &Path, clock: &HandClock, days: u64, keep: Option<u64>) -> AuditLog {
    let log = open_with(path, clock, Some(DAY), keep.map(|k| k * DAY));
    for day in 0..days {
        if day > 0 {
            clock.advance(DAY);
        }
        log.append(entry(&format!("day.{day}"))).expect("append");
    }
    log
}

/// A fresh directory with [`daily_log`]'s log in it, written and closed.
fn daily(days: u64, keep: Option<u64>) -> (tempfile::TempDir, PathBuf, HandClock) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let clock = HandClock::new();
    drop(daily_log(&path, &clock, days, keep));
    (dir, path, clock)
}

#[test]
fn retention_removes_exactly_the_files_past_it_and_verify_still_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let clock = HandClock::new();
    // Without retention: a file per day, all kept.
    drop(daily_log(&path, &clock, 7, None));
    let all = rotated(&path);
    assert_eq!(all.len(), 6);
    // Reopened with keep = 3 days on day 6: the files whose every line is
    // older than day 3 go (days 0, 1 and 2), those of days 3, 4, 5 stay.
    let log = open_with(&path, &clock, Some(DAY), Some(3 * DAY));
    let cutoff = clock.now() - Duration::from_secs(3 * DAY);
    let kept = rotated(&path);
    for file in &all {
        let newest = files::last_line(file)
            .map(|l| line::written_at(&l.expect("a line")).expect("a time"))
            .ok();
        let expired = newest.is_some_and(|at| at < cutoff);
        assert_eq!(
            kept.contains(file),
            file.exists() && !expired,
            "{} (newest line {newest:?})",
            file.display()
        );
    }
    assert_eq!(kept, all[3..].to_vec());
    assert!(path.exists(), "the log being written stays");

    let records = retention_lines(&path);
    assert_eq!(
        records
            .iter()
            .map(|r| (r.first_seq, r.last_seq))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 2), (3, 3)]
    );
    let report = keyed(&path).expect("verifies after retention");
    assert_eq!(report.first_seq, Some(4));
    let start = report
        .removed_by_retention
        .expect("the start is accounted for");
    assert_eq!(start.through_seq, 3);
    assert_eq!(start.files.len(), 3);
    assert_eq!(report.files, [kept.clone(), vec![path.clone()]].concat());

    // The chain goes on, and retention goes on removing day by day.
    clock.advance(DAY);
    log.append(entry("day.7")).expect("append");
    drop(log);
    let report = keyed(&path).expect("still verifies");
    assert_eq!(report.removed_by_retention.map(|s| s.through_seq), Some(4));
}

#[test]
fn a_rotated_file_deleted_by_hand_fails_verify_even_after_retention() {
    let (_dir, path, _clock) = daily(5, None);
    let files = rotated(&path);
    // The oldest file, deleted by hand: the same shape retention leaves,
    // but nothing in the chain records it.
    std::fs::remove_file(&files[0]).expect("delete");
    let err = keyed(&path).expect_err("deleted by hand");
    assert!(
        matches!(&err, AuditError::Broken { reason, .. } if reason.contains("no retention line records the removal of line 1")),
        "{err}"
    );

    // With retention having removed the start, deleting the first kept
    // file by hand is caught too.
    let (_dir, path, _clock) = daily(6, Some(2));
    let report = keyed(&path).expect("retention alone verifies");
    assert!(
        report.removed_by_retention.is_some(),
        "removed by retention"
    );
    let first_kept = &report.checked[0];
    std::fs::remove_file(&first_kept.path).expect("delete the first kept file");
    let err = keyed(&path).expect_err("deleted by hand after retention");
    let last = first_kept.last_seq.expect("lines");
    assert!(
        matches!(&err, AuditError::Broken { reason, .. } if reason.contains(&format!("no retention line records the removal of line {last}"))),
        "{err}"
    );
}

#[test]
fn a_forged_retention_line_without_the_key_does_not_cover_a_deletion() {
    let (_dir, path, _clock) = daily(4, None);
    let files = rotated(&path);
    let removed = line::parse(lines(&files[0])[0].as_bytes()).expect("line");
    std::fs::remove_file(&files[0]).expect("delete");
    // Someone without the key appends a retention line for it, with the
    // unkeyed links recomputed.
    let mut all = lines(&path);
    let record = RemovedFile {
        file: "audit.jsonl.forged".into(),
        first_seq: 1,
        last_seq: 1,
        last_hash: removed.hash,
        last_mac: removed.mac,
        last_legacy_hash: None,
        newest_at: removed.at,
        keep_seconds: DAY,
    };
    let last = line::parse(all[all.len() - 1].as_bytes()).expect("line");
    let forged = line::keyed_line(
        last.seq + 1,
        &last.at,
        &note(retention::ACTION, record.detail()),
        &last.hash,
        &AuditKey::derive(&master(9)),
    );
    all.push(String::from_utf8(forged).expect("utf-8"));
    write_lines(&path, &all);
    assert!(keyed(&path).is_err(), "a line under another key is refused");
}

#[test]
fn retention_never_removes_the_log_being_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let clock = HandClock::new();
    // No rotation: the one file grows old, and stays whole.
    let log = open_with(&path, &clock, None, Some(DAY));
    log.append(entry("old")).expect("append");
    clock.advance(30 * DAY);
    log.append(entry("still the same file")).expect("append");
    drop(log);
    clock.advance(30 * DAY);
    let log = open_with(&path, &clock, None, Some(DAY));
    log.append(entry("and again")).expect("append");
    assert_eq!(lines(&path).len(), 3);
    assert!(retention_lines(&path).is_empty());
    assert_eq!(keyed(&path).expect("intact").first_seq, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_idle_past_retention_removes_even_the_newest_rotated_file_and_stays_anchored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path()).await;
    let path = dir.path().join("audit.jsonl");
    let clock = HandClock::new();
    {
        let log = daily_log(&path, &clock, 3, Some(7)).with_anchor(store.clone());
        log.append(entry("last before the pause")).expect("append");
        assert!(log.sync_anchor(Duration::from_secs(20)), "anchored");
    }
    // Idle for longer than the retention: on start the log is rotated for
    // its age, and then every rotated file (the newest, whose last line
    // the anchor names, too) is past retention.
    clock.advance(30 * DAY);
    let log = open_with(&path, &clock, Some(DAY), Some(7 * DAY)).with_anchor(store.clone());
    assert!(rotated(&path).is_empty(), "{:?}", rotated(&path));
    let kept = lines(&path);
    assert_eq!(kept.len(), 3, "one record per removed file: {kept:?}");
    log.append(entry("back")).expect("append");
    assert!(log.sync_anchor(Duration::from_secs(20)), "anchored");
    assert!(
        !std::fs::read_to_string(&path)
            .expect("read")
            .contains("audit.anchor_mismatch"),
        "retention is not mistaken for deletion by the anchor"
    );
    let anchor = store
        .audit_anchor(&super::chain_id(&path))
        .await
        .expect("store");
    let report = verify(&path, Some(&master(1)), AnchorCheck::Stored(anchor)).expect("verifies");
    assert_eq!(report.first_seq, Some(5));
    assert_eq!(report.anchored_at, Some(8));
    assert_eq!(report.removed_by_retention.map(|s| s.through_seq), Some(4));
}

#[test]
fn a_file_recorded_as_removed_but_still_there_is_noted_and_removed_next_time() {
    let (_dir, path, clock) = daily(4, None);
    let oldest = rotated(&path)[0].clone();
    let copy = std::fs::read(&oldest).expect("read");
    drop(open_with(&path, &clock, Some(DAY), Some(2 * DAY)));
    assert!(!oldest.exists());
    // A crash between the record and the removal leaves it there.
    std::fs::write(&oldest, &copy).expect("restore");
    let report = keyed(&path).expect("still whole");
    assert!(
        report
            .notices
            .iter()
            .any(|n| n.contains("removed by retention, but those lines are still here")),
        "{:?}",
        report.notices
    );
    drop(open_with(&path, &clock, Some(DAY), Some(2 * DAY)));
    assert!(!oldest.exists(), "the next pass removes it");
    keyed(&path).expect("verifies");
}

#[test]
fn the_periods_of_audit_parse_and_zero_or_nonsense_is_refused() {
    let parse = |text: &str| {
        crate::config::Config::parse(&format!("[audit]\n{text}\n"), Path::new("test.toml"))
    };
    let config = parse("rotate_every = \"1d12h\"\nkeep = \"400d\"").expect("parses");
    assert_eq!(
        config.audit.rotate_every,
        Some(Duration::from_secs(DAY + DAY / 2))
    );
    assert_eq!(config.audit.keep, Some(Duration::from_secs(400 * DAY)));
    assert_eq!(parse("").expect("defaults").audit.keep, None);
    for bad in ["\"0d\"", "\"90\"", "\"d\"", "\"1y\"", "90"] {
        let err = parse(&format!("keep = {bad}")).expect_err(bad).to_string();
        assert!(err.contains("keep"), "{bad}: {err}");
    }
}

#[test]
fn a_missing_start_beside_compressed_files_cannot_be_verified_rather_than_tampered() {
    let (dir, path, _clock) = daily(3, None);
    // logrotate's `compress`: the oldest file is there, but not readable.
    let oldest = rotated(&path)[0].clone();
    std::fs::rename(&oldest, dir.path().join("audit.jsonl.2.gz")).expect("rename");
    let err = keyed(&path).expect_err("the start is not readable");
    assert!(
        matches!(&err, AuditError::Unverifiable(m) if m.contains("audit.jsonl.2.gz") && m.contains("decompress")),
        "{err}"
    );
}
