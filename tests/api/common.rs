//! The test harness: starts the real `memhost` binary on a free port against
//! a fresh SQLite directory or a fresh PostgreSQL database, and speaks HTTP.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_memhost");
/// Per-org rate-limit overrides far above what any functional test sends.
pub const UNLIMITED: &str =
    r#"{"rate_limits": {"requests_per_minute": 10000000, "requests_per_day": 1000000000, "concurrent": 100000}}"#;
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs one async test case against both backends.
#[macro_export]
macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$case($crate::common::Backend::Postgres).await
            }
        }
    )*};
}

/// PostgreSQL server for tests (a superuser; each test gets its own database).
pub fn pg_admin_url() -> String {
    std::env::var("MEMHOST_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    child: Option<Child>,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    pg_database: Option<String>,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    /// Asserts an error envelope with this status and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.body["success"], Value::Bool(false), "body: {}", self.body);
        assert_eq!(self.code(), code, "body: {}", self.body);
        assert!(self.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "body: {}", self.body);
        assert!(self.body["meta"]["request_id"].as_str().is_some_and(|m| !m.is_empty()), "body: {}", self.body);
    }
    #[track_caller]
    pub fn assert_ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.body["success"], Value::Bool(true), "body: {}", self.body);
        assert!(self.body["meta"]["request_id"].is_string(), "body: {}", self.body);
        assert!(self.body["meta"]["processing_time_ms"].is_number(), "body: {}", self.body);
        &self.body["data"]
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        TestServer::start_with(backend, &[]).await
    }

    pub async fn start_with(backend: Backend, extra_env: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env: Vec<(String, String)> = vec![
            ("MEMHOST_DATA_DIR".into(), dir.path().join("data").display().to_string()),
            ("MEMHOST_LISTEN".into(), "127.0.0.1:0".into()),
            ("MEMHOST_LOG".into(), "warn".into()),
            ("MEMHOST_SHUTDOWN_GRACE_SECS".into(), "10".into()),
            // Shared by every test server: the built-in plugins compile once.
            ("MEMHOST_PLUGIN_CACHE_DIR".into(), plugin_cache_dir()),
            // The hashing embedder, and no model download from a test server;
            // tests of the semantic model set these themselves.
            ("MEMHOST_EMBEDDINGS__MODEL".into(), "hash".into()),
            ("MEMHOST_MODELS__AUTO_PULL".into(), "false".into()),
        ];
        let mut pg_database = None;
        if backend == Backend::Postgres {
            let name = format!(
                "memhost_t_{}_{}_{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst),
                rand_suffix()
            );
            admin_sql(&format!("CREATE DATABASE {name}")).await;
            env.push(("DATABASE_URL".into(), format!("{}/{name}", pg_admin_url())));
            env.push(("MEMHOST_SECRET".into(), SECRET.into()));
            pg_database = Some(name);
        }
        for (k, v) in extra_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        let mut server = TestServer {
            base: String::new(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            child: None,
            env,
            dir,
            pg_database,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let mut child =
            self.command().arg("serve").stdout(Stdio::piped()).stderr(Stdio::from(log)).spawn().expect("spawn memhost");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("memhost listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => self.base = addr,
            Err(_) => {
                let _ = child.kill();
                panic!("memhost did not start; log:\n{}", self.log());
            }
        }
        self.child = Some(child);
    }

    /// Starts the server again (same data, database and environment), after
    /// it exited.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Changes an environment variable for the next restart and CLI runs.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits for the server process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn database_url(&self) -> Option<String> {
        self.env.iter().find(|(k, _)| k == "DATABASE_URL").map(|(_, v)| v.clone())
    }

    /// The binary with exactly this server's environment (nothing inherited
    /// but PATH, so a developer's own DATABASE_URL cannot leak in).
    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().cloned())
            .current_dir(self.dir.path());
        cmd
    }

    /// Runs the CLI against the same database.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run memhost")
    }

    #[track_caller]
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "memhost {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[track_caller]
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.cli_ok(&all)).expect("CLI printed JSON")
    }

    pub fn create_org(&self, plan: &str) -> String {
        self.cli_json(&["orgs", "create", "--name", "Test Org", "--plan", plan])["id"].as_str().unwrap().to_string()
    }

    /// An org on `plan` with these overrides (a JSON object).
    pub fn create_org_with(&self, plan: &str, overrides: &str, operator: bool) -> String {
        let mut args = vec!["orgs", "create", "--name", "Test Org", "--plan", plan, "--overrides", overrides];
        if operator {
            args.push("--operator");
        }
        self.cli_json(&args)["id"].as_str().unwrap().to_string()
    }

    /// An Enterprise org whose rate limits no functional test reaches (the
    /// limits have tests of their own).
    pub fn create_unlimited_org(&self, operator: bool) -> String {
        self.create_org_with("enterprise", UNLIMITED, operator)
    }

    pub fn create_key(&self, org: &str, scopes: &str, test: bool) -> String {
        let mut args = vec!["keys", "create", "--org", org, "--scopes", scopes];
        if test {
            args.push("--test");
        }
        self.cli_json(&args)["key"].as_str().unwrap().to_string()
    }

    /// An operator org and an admin key for it (may use `/admin`).
    pub fn operator(&self) -> (String, String) {
        let org = self.create_unlimited_org(true);
        let key = self.create_key(&org, "read,write,delete,admin", false);
        (org, key)
    }

    /// Uploads a plugin's bytes to `/admin/plugins?{query}`.
    pub async fn upload_plugin(&self, key: &str, wasm: Vec<u8>, query: &str) -> Resp {
        let url = format!("{}/admin/plugins?{query}", self.base);
        let req = self.client.post(url).bearer_auth(key).header("content-type", "application/wasm").body(wasm);
        self.send(req).await
    }

    /// A fresh org and an all-scopes live key for it.
    pub fn tenant(&self) -> (String, String) {
        let org = self.create_unlimited_org(false);
        let key = self.create_key(&org, "read,write,delete,admin", false);
        (org, key)
    }

    pub async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> Resp {
        let mut req = self.client.request(method, format!("{}{}", self.base, path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp { status, headers, body }
    }

    pub async fn get(&self, path: &str, key: &str) -> Resp {
        self.call(Method::GET, path, Some(key), None).await
    }
    pub async fn post(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(key), Some(body)).await
    }
    pub async fn put(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call(Method::PUT, path, Some(key), Some(body)).await
    }
    pub async fn delete(&self, path: &str, key: &str) -> Resp {
        self.call(Method::DELETE, path, Some(key), None).await
    }

    /// Creates a memory and returns its id.
    pub async fn add(&self, key: &str, text: &str, metadata: Value) -> String {
        let r = self.post("/v1/memories", key, serde_json::json!({ "text": text, "metadata": metadata })).await;
        r.assert_ok(201)["id"].as_str().unwrap().to_string()
    }

    pub fn terminate(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs one statement on the server's database (beside the server, as an
    /// operator with database access would); the error text on failure.
    pub async fn sql_exec(&self, statement: &str) -> Result<u64, String> {
        use sqlx::Connection;
        let q = sqlx::AssertSqlSafe(statement.to_string());
        match self.database_url() {
            Some(url) => {
                let mut c = sqlx::PgConnection::connect(&url).await.map_err(|e| e.to_string())?;
                let r = sqlx::raw_sql(q).execute(&mut c).await.map(|r| r.rows_affected()).map_err(|e| e.to_string());
                let _ = c.close().await;
                r
            }
            None => {
                let mut c = sqlx::SqliteConnection::connect(&self.sqlite_url()).await.map_err(|e| e.to_string())?;
                let r = sqlx::raw_sql(q).execute(&mut c).await.map(|r| r.rows_affected()).map_err(|e| e.to_string());
                let _ = c.close().await;
                r
            }
        }
    }

    /// The rows of a query whose columns all read as text (cast them:
    /// `CAST(x AS TEXT)`), e.g. for comparing with what the API says.
    pub async fn sql_rows(&self, query: &str) -> Vec<Vec<Option<String>>> {
        use sqlx::{Connection, Row};
        let q = sqlx::AssertSqlSafe(query.to_string());
        match self.database_url() {
            Some(url) => {
                let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
                let rows = sqlx::query(q).fetch_all(&mut c).await.unwrap_or_else(|e| panic!("{query}: {e}"));
                let _ = c.close().await;
                rows.iter().map(|r| (0..r.len()).map(|i| r.get::<Option<String>, _>(i)).collect()).collect()
            }
            None => {
                let mut c = sqlx::SqliteConnection::connect(&self.sqlite_url()).await.expect("connect");
                let rows = sqlx::query(q).fetch_all(&mut c).await.unwrap_or_else(|e| panic!("{query}: {e}"));
                let _ = c.close().await;
                rows.iter().map(|r| (0..r.len()).map(|i| r.get::<Option<String>, _>(i)).collect()).collect()
            }
        }
    }

    /// A query's single number (cast to text in the query).
    pub async fn sql_number(&self, query: &str) -> i64 {
        let rows = self.sql_rows(query).await;
        rows.first()
            .and_then(|r| r.first().cloned().flatten())
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{query}: not a number: {v}")))
            .unwrap_or(0)
    }

    fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("data").join("memhost.db").display())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- memhost log ---\n{}", self.log());
        }
        if let Some(name) = self.pg_database.take() {
            // Drop runs inside the test's runtime: use a thread with its own.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(admin_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            })
            .join();
        }
    }
}

/// `(name, value)` pairs as [`TestServer::start_with`] takes them.
pub fn env_refs<'a>(env: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Where the host's build script put the plugins (default and fixtures).
pub const PLUGINS_DIR: &str = env!("MEMHOST_PLUGINS_DIR");

/// A built plugin's bytes by crate name (`pricing-flat`, `hostile-loop`, …).
pub fn plugin_wasm(name: &str) -> Vec<u8> {
    let path = format!("{PLUGINS_DIR}/{}.wasm", name.replace('-', "_"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn plugin_cache_dir() -> String {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache").display().to_string()
}

pub async fn admin_sql(sql: &str) {
    use sqlx::Connection;
    let url = format!("{}/postgres", pg_admin_url());
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect to PostgreSQL for tests");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut conn).await.expect(sql);
    let _ = conn.close().await;
}

fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{nanos:x}")
}

/// Issue 3's hot-swap protocol: four workers send requests continuously
/// (`observe` makes one, asserts it succeeded and returns what it saw)
/// while `plugin_id` is activated with `config` and then rolled back. Every
/// request that starts after the activation returned and ends before the
/// rollback sees `new`; every one that starts after the rollback returned
/// sees `old`; the rest see one of the two. Each phase must have requests.
pub async fn hot_swap<T, F, Fut>(
    server: &std::sync::Arc<TestServer>,
    admin: &str,
    plugin_id: &str,
    config: Value,
    (old, new): (T, T),
    observe: F,
) where
    T: PartialEq + std::fmt::Debug + Copy + Send + 'static,
    F: Fn(std::sync::Arc<TestServer>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    use std::sync::atomic::AtomicBool;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let epoch = std::time::Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (server, stop, observe) = (server.clone(), stop.clone(), observe.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let start = epoch.elapsed();
                    let value = observe(server.clone()).await;
                    seen.push((start, epoch.elapsed(), value));
                }
                seen
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let activate = format!("/admin/plugins/{plugin_id}/activate");
    server.post(&activate, admin, serde_json::json!({ "config": config })).await.assert_ok(200);
    let activated = epoch.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_rollback = epoch.elapsed();
    let rollback = format!("/admin/plugins/{plugin_id}/rollback");
    server.post(&rollback, admin, serde_json::json!({})).await.assert_ok(200);
    let rolled_back = epoch.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut before, mut during, mut after) = (0, 0, 0);
    for w in workers {
        for (start, end, value) in w.await.expect("no request failed") {
            if start > activated && end < before_rollback {
                assert_eq!(value, new, "a request started after activation ran the old version");
                during += 1;
            } else if start > rolled_back {
                assert_eq!(value, old, "a request started after rollback ran the new version");
                after += 1;
            } else {
                // Around a swap: either version, depending on when it ran.
                assert!(value == old || value == new, "unexpected {value:?}");
                if end < activated && value == old {
                    before += 1;
                }
            }
        }
    }
    assert!(before > 0 && during > 0 && after > 0, "requests on each side: {before} {during} {after}");
}
