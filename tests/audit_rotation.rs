//! Rotation by age and retention of the audit log through the built
//! binary: a log written day by day (by the library, with its clock driven
//! by hand into the past) is cut to `[audit] keep` by an ordinary command,
//! `audit verify` says from which line it checked and that the start went
//! by retention, and a rotated file deleted by hand makes it fail.

use oxirelay::audit::{AuditClock, AuditEntry, AuditLog, AuditOptions};
use oxirelay::config::Config;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: u64 = 86_400;

fn oxirelay(args: &[&str], cwd: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_oxirelay"))
        .args(args)
        .current_dir(cwd)
        .env_remove("OXIRELAY_MASTER_KEY")
        .env_remove("OXIRELAY_CONFIG")
        .output()
        .expect("the binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn write_private(path: &Path, contents: &str) {
    std::fs::write(path, contents).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

fn rotated(log: &Path) -> Vec<PathBuf> {
    let dir = log.parent().expect("a directory");
    let prefix = format!(
        "{}.",
        log.file_name().and_then(|n| n.to_str()).expect("name")
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|d| d.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    files.sort();
    files
}

fn verify_json(dir: &Path) -> (bool, serde_json::Value) {
    let output = oxirelay(&["-c", "oxirelay.toml", "audit", "verify", "--json"], dir);
    let value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("json from verify ({e}): {}", text(&output)));
    (output.status.success(), value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_cuts_the_start_verify_says_so_and_a_file_deleted_by_hand_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    write_private(
        &cwd.join("master.key"),
        &oxirelay::secret::generate_master_key(),
    );
    std::fs::write(
        cwd.join("oxirelay.toml"),
        "[store]\nurl = \"sqlite://oxirelay.db\"\n[secrets]\nmaster_key = \"file:master.key\"\n\
         [audit]\npath = \"audit.jsonl\"\nrotate_every = \"1d\"\nkeep = \"3d\"\n",
    )
    .expect("config");
    let config = Config::load(&cwd.join("oxirelay.toml")).expect("config loads");
    let log_path = config.audit.path.clone();

    // Ten days of a relay's life, one line a day, ending half a day ago
    // (so that no boundary falls within the seconds this test takes).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let clock = Arc::new(AtomicU64::new(now - 10 * DAY + DAY / 2));
    {
        let secs = clock.clone();
        let store = oxirelay::store::open(&config.store.url)
            .await
            .expect("store");
        let log = AuditLog::open(
            &log_path,
            &config.master_key().expect("key"),
            AuditOptions {
                rotate_every: Some(Duration::from_secs(DAY)),
                clock: AuditClock::from_fn(move || {
                    UNIX_EPOCH + Duration::from_secs(secs.load(Ordering::SeqCst))
                }),
                ..AuditOptions::default()
            },
        )
        .expect("open")
        .with_anchor(store);
        for day in 0..10 {
            if day > 0 {
                clock.fetch_add(DAY, Ordering::SeqCst);
            }
            log.append(AuditEntry {
                actor: "relay".into(),
                action: "message.delivered".into(),
                account: None,
                token_fingerprint: None,
                message_id: Some(format!("day-{day}")),
                detail: String::new(),
            })
            .expect("append");
        }
        assert!(log.sync_anchor(Duration::from_secs(20)), "anchored");
    }
    let before = rotated(&log_path);
    assert_eq!(before.len(), 9, "a file a day: {before:?}");
    let (intact, report) = verify_json(cwd);
    assert!(intact, "{report}");
    assert_eq!(report["checked"].as_array().map(Vec::len), Some(10));
    assert!(report["removed_by_retention"].is_null(), "{report}");

    // Any command opens the log, and with it applies keep = 3d: the files
    // of days 0..6 (newest line 3.5 days old or more) go, days 7 and 8
    // stay, and the file being written stays.
    let listed = oxirelay(&["-c", "oxirelay.toml", "account", "list"], cwd);
    assert!(listed.status.success(), "{}", text(&listed));
    let after = rotated(&log_path);
    assert_eq!(after, before[7..].to_vec(), "exactly the old files went");
    assert!(log_path.exists());

    let (intact, report) = verify_json(cwd);
    assert!(intact, "{report}");
    let start = &report["removed_by_retention"];
    assert_eq!(start["through_seq"], 7, "{report}");
    assert_eq!(start["files"].as_array().map(Vec::len), Some(7), "{report}");
    assert_eq!(report["first_seq"], 8);
    let checked: Vec<&str> = report["checked"]
        .as_array()
        .expect("checked files")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert_eq!(checked.len(), 3, "{report}");

    let output = oxirelay(&["-c", "oxirelay.toml", "audit", "verify"], cwd);
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("removed by retention: lines 1..7") && said.contains("checked from line 8"),
        "{said}"
    );
    assert_eq!(said.matches("  checked: ").count(), 3, "{said}");
    assert!(!said.contains("not anchored yet"), "{said}");

    // The oldest kept file deleted by hand: the same shape, no record.
    std::fs::remove_file(&after[0]).expect("delete by hand");
    let output = oxirelay(&["-c", "oxirelay.toml", "audit", "verify"], cwd);
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("TAMPERED OR DAMAGED") && said.contains("no retention line records"),
        "{said}"
    );
}
