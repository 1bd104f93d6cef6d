//! The backends the store suite runs on: a fresh SQLite file in a temporary
//! directory, or a fresh schema in the PostgreSQL database that
//! `OXIRELAY_TEST_POSTGRES_URL` names (`.ci/run` sets it). Each test gets
//! its own file or schema, dropped at the end, so tests and other people's
//! runs on the same database never see each other's rows.

#![allow(dead_code)]

use oxirelay::store::{NewMessage, Store};
use std::sync::Arc;

pub const POSTGRES_URL_VAR: &str = "OXIRELAY_TEST_POSTGRES_URL";

pub struct Backend {
    pub store: Arc<dyn Store>,
    /// Opens another store on the same data (another instance).
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// The database's URL and the schema to drop at the end.
    schema: Option<(String, String)>,
}

impl Backend {
    pub async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("suite.db").display());
        Backend {
            store: oxirelay::store::open(&url).await.expect("open sqlite"),
            url,
            _dir: Some(dir),
            schema: None,
        }
    }

    /// `None` (after saying so) when no PostgreSQL is configured.
    pub async fn postgres() -> Option<Backend> {
        let (base, schema) = fresh_schema().await?;
        let url = with_search_path(&base, &schema);
        let store = oxirelay::store::open(&url).await.expect("open postgres");
        Some(Backend {
            store,
            url,
            _dir: None,
            schema: Some((base, schema)),
        })
    }

    pub async fn reopen(&self) -> Arc<dyn Store> {
        oxirelay::store::open(&self.url).await.expect("reopen")
    }

    pub fn is_postgres(&self) -> bool {
        self.schema.is_some()
    }
}

/// The database URL, or `None` after printing that the test is skipped.
pub fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("SKIPPED: {POSTGRES_URL_VAR} is not set (PostgreSQL tests)");
            None
        }
    }
}

/// A new, empty schema: (database URL, schema name). Not yet migrated.
pub async fn fresh_schema() -> Option<(String, String)> {
    let base = postgres_url()?;
    let schema = format!("oxr_test_{:016x}", rand_u64());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("connect to OXIRELAY_TEST_POSTGRES_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .expect("create schema");
    Some((base, schema))
}

/// `base` with the connection's `search_path` set to `schema`, and the
/// schema's name as the connections' `application_name`, so that the
/// cleanup can find them.
pub fn with_search_path(base: &str, schema: &str) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options[search_path]={schema}&application_name={schema}")
}

/// Drops a schema made by [`fresh_schema`], from a thread of its own so
/// that it works in `Drop`, whatever runtime the test ran on. The test's
/// connections are ended first: a pool hands a connection back (and rolls
/// back what it left open) from a task of the test's runtime, which is
/// blocked here, so a lock it holds would keep `DROP SCHEMA` waiting.
pub fn drop_schema(base: &str, schema: &str) {
    let (base, name) = (base.to_string(), schema.to_string());
    let done = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base).await?;
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&name)
            .execute(&mut conn)
            .await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET lock_timeout = '20s'; DROP SCHEMA IF EXISTS {name} CASCADE"
            )))
            .execute(&mut conn)
            .await
            .map(|_| ())
        })
    })
    .join();
    if let Ok(Err(error)) = done {
        eprintln!("could not drop the test schema {schema}: {error}");
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some((base, schema)) = &self.schema {
            drop_schema(base, schema);
        }
    }
}

/// A dropped schema whatever happens to the test that made it.
pub struct SchemaGuard(pub String, pub String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        drop_schema(&self.0, &self.1);
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process and per instance; the nanoseconds
    // tell apart two schemas made by one process at once.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

pub fn message(account: &str, recipients: &[&str]) -> NewMessage {
    NewMessage {
        account: account.into(),
        mail_from: "app@example.com".into(),
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
        body: b"Subject: t\r\n\r\nbody\r\n".to_vec(),
        submitted_by: "test".into(),
    }
}

pub fn now() -> i64 {
    oxirelay::clock::now_unix()
}
