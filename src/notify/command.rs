//! `[notify] command`: a program run for each notification with the event
//! in its environment, as pizauth's `auth_notify_cmd` is: no shell, its
//! standard input empty and its output discarded, killed after the
//! timeout. It runs in its own task, so a slow or hanging command never
//! holds delivery or the next notification; its failure is logged.

use super::conditions::Condition;
use std::time::Duration;

/// How long the command may run unless `command_timeout` says otherwise:
/// paging and chat scripts answer within seconds; a minute is generous
/// and still ends a hung one well before the next check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment the command gets, beside the relay's own.
pub fn environment(condition: &Condition, at: i64) -> Vec<(&'static str, String)> {
    vec![
        ("OXIRELAY_EVENT", condition.kind.to_string()),
        ("OXIRELAY_CONDITION", condition.key.clone()),
        (
            "OXIRELAY_ACCOUNT",
            condition.account.clone().unwrap_or_default(),
        ),
        ("OXIRELAY_DETAIL", condition.detail.clone()),
        ("OXIRELAY_AT", at.to_string()),
        ("OXIRELAY_TIME", crate::clock::format_unix(at)),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start {program}: {source}; check [notify] command")]
    Start {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} failed ({status})")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
    },
    #[error("cannot wait for {program}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// Runs the command to its end or its timeout.
pub async fn run(
    command: &[String],
    condition: &Condition,
    at: i64,
    timeout: Duration,
) -> Result<(), CommandError> {
    let Some((program, args)) = command.split_first() else {
        // The config refuses an empty command; nothing to run.
        return Ok(());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(environment(condition, at))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CommandError::Start {
            program: program.clone(),
            source,
        })?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(CommandError::Failed {
            program: program.clone(),
            status,
        }),
        Ok(Err(source)) => Err(CommandError::Wait {
            program: program.clone(),
            source,
        }),
        Err(_) => {
            let _ = child.kill().await;
            Err(CommandError::Timeout {
                program: program.clone(),
                timeout,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition() -> Condition {
        Condition {
            key: "lockdown".into(),
            kind: "notify.lockdown",
            account: None,
            detail: "drill".into(),
        }
    }

    #[tokio::test]
    async fn the_command_gets_the_event_and_is_bounded() {
        let dir = tempfile::tempdir().expect("dir");
        let out = dir.path().join("out");
        let script = format!(
            "printf '%s|%s|%s' \"$OXIRELAY_EVENT\" \"$OXIRELAY_DETAIL\" \"$OXIRELAY_ACCOUNT\" > {}",
            out.display()
        );
        let command = vec!["sh".to_string(), "-c".to_string(), script];
        run(&command, &condition(), 1, Duration::from_secs(10))
            .await
            .expect("runs");
        assert_eq!(
            std::fs::read_to_string(&out).expect("written"),
            "notify.lockdown|drill|"
        );

        let slow = vec!["sleep".to_string(), "30".to_string()];
        let started = std::time::Instant::now();
        let error = run(&slow, &condition(), 1, Duration::from_millis(200))
            .await
            .expect_err("killed");
        assert!(matches!(error, CommandError::Timeout { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));

        let failing = vec!["false".to_string()];
        assert!(matches!(
            run(&failing, &condition(), 1, Duration::from_secs(10)).await,
            Err(CommandError::Failed { .. })
        ));
        let missing = vec!["/nonexistent/notify".to_string()];
        assert!(matches!(
            run(&missing, &condition(), 1, Duration::from_secs(10)).await,
            Err(CommandError::Start { .. })
        ));
    }
}
