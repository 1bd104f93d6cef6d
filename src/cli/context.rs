//! What most commands need: the config, the store, the master key and the
//! token broker, built once from the config file.

use crate::config::Config;
use crate::oauth::account::Account;
use crate::oauth::broker::Broker;
use crate::secret::MasterKey;
use crate::store::Store;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Who runs this command, for the audit log: `cli:<unix user>`.
pub fn actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into())
    )
}

pub struct Context {
    pub config: Config,
    pub audit: Arc<crate::audit::AuditLog>,
    pub store: Arc<dyn Store>,
    pub key: Arc<MasterKey>,
    pub broker: Arc<Broker>,
}

impl Context {
    pub async fn load(config_path: Option<PathBuf>) -> anyhow::Result<Context> {
        Self::load_as(config_path, &actor()).await
    }

    /// Loads the config; the audit log names `actor` for the broker's events.
    pub async fn load_as(config_path: Option<PathBuf>, actor: &str) -> anyhow::Result<Context> {
        let path = Config::locate(config_path.as_deref());
        let config = Config::load(&path).with_context(|| {
            if config_path.is_none() && !path.exists() {
                format!(
                    "no config file at {}; pass -c PATH or set OXIRELAY_CONFIG (see README.md, \"Configuration\")",
                    path.display()
                )
            } else {
                "the config file is not usable".to_string()
            }
        })?;
        Self::from_config_as(config, actor).await
    }

    pub async fn from_config(config: Config) -> anyhow::Result<Context> {
        Self::from_config_as(config, &actor()).await
    }

    pub async fn from_config_as(config: Config, actor: &str) -> anyhow::Result<Context> {
        let key = Arc::new(config.master_key()?);
        let store = crate::store::open(&config.store.url).await?;
        let accounts = config
            .accounts
            .iter()
            .map(Account::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        let audit = Arc::new(
            crate::audit::AuditLog::open(&config.audit.path, &key, (&config.audit).into())?
                .with_anchor(store.clone()),
        );
        let broker = Arc::new(
            Broker::new(store.clone(), key.clone(), accounts).with_audit(audit.clone(), actor),
        );
        Ok(Context {
            config,
            audit,
            store,
            key,
            broker,
        })
    }

    /// Records a person's action in the audit log. A line that cannot be
    /// written does not undo or stop the action: the log has said so
    /// loudly, and its next line records the gap.
    pub fn audit(&self, action: &str, account: Option<&str>, detail: impl Into<String>) {
        let _ = self.audit.append(crate::audit::AuditEntry {
            actor: actor(),
            action: action.to_string(),
            account: account.map(str::to_string),
            token_fingerprint: None,
            message_id: None,
            detail: detail.into(),
        });
    }

    pub fn config_path(&self) -> &Path {
        &self.config.path
    }
}
