//! A real PostgreSQL for tests (not used by berth itself).
//!
//! [`server`] gives the base URL (`postgres://user@host:port`, no database)
//! of a PostgreSQL to create test databases in:
//! - `BERTH_TEST_POSTGRES_URL` when set (e.g. started by `.ci/run`);
//! - else a private cluster this process starts once, with `initdb` and
//!   `postgres` from `BERTH_PG_BIN` or `/usr/lib/postgresql/15/bin`, on
//!   127.0.0.1 and a free port, as the `postgres` user when run as root. It
//!   stops (and its files go) when this process exits, even on a crash: its
//!   shell waits on a pipe only this process holds.
//!
//! `None` when neither is available; [`require`] turns that into a skip with
//! a notice, or a panic when `CI=true`.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running private cluster; its shell's stdin closes when this process
/// exits, which stops it.
struct Private {
    url: String,
    _child: Child,
}

static SERVER: OnceLock<Result<Private, String>> = OnceLock::new();
static EXTERNAL: OnceLock<Option<String>> = OnceLock::new();
static COUNTER: Mutex<u32> = Mutex::new(0);

fn bin_dir() -> PathBuf {
    std::env::var_os("BERTH_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// The directory of `pg_dump` and friends.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `cmd` as the postgres user when this process is root.
fn as_pg_user(program: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

fn start_private() -> Result<Private, String> {
    let initdb = bin("initdb");
    if !initdb.exists() {
        return Err(format!("{} not found", initdb.display()));
    }
    let dir = std::env::temp_dir().join(format!("berth-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!("cannot chown {} to postgres", dir.display()));
        }
    }
    let data = dir.join("data");
    let out = as_pg_user(
        &initdb,
        &[
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
    )
    .stdin(Stdio::null())
    .output()
    .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    // The shell runs postgres in the background and waits on its stdin:
    // when this process exits the pipe closes, and postgres stops.
    let script = format!(
        "{pg} -D {data} -k {dir} -p {port} -h 127.0.0.1 -F -c max_connections=400 -c shared_buffers=32MB >{dir}/log 2>&1 & pid=$!; \
         read _; kill -INT $pid; wait $pid; rm -rf {dir}",
        pg = bin("postgres").display(),
        data = data.display(),
        dir = dir.display(),
    );
    let sh = Path::new("/bin/sh");
    let child = as_pg_user(sh, &["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    let url = format!("postgres://postgres@127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = Command::new(bin("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            return Err(format!("postgres did not start within 60 s: {log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Private { url, _child: child })
}

/// The base URL of a PostgreSQL for tests, or why there is none.
pub fn server() -> Result<String, String> {
    if let Some(url) = EXTERNAL
        .get_or_init(|| std::env::var("BERTH_TEST_POSTGRES_URL").ok())
        .clone()
    {
        return Ok(url.trim_end_matches('/').to_string());
    }
    match SERVER.get_or_init(start_private) {
        Ok(p) => Ok(p.url.clone()),
        Err(e) => Err(e.clone()),
    }
}

/// [`server`], or: under `CI=true` a panic (a missing PostgreSQL is a
/// failure there), else `None` after a notice on stderr.
pub fn require() -> Option<String> {
    match server() {
        Ok(url) => Some(url),
        Err(why) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("PostgreSQL is required under CI=true and is not available: {why}");
            }
            let _ = writeln!(
                std::io::stderr(),
                "notice: PostgreSQL test skipped (set BERTH_TEST_POSTGRES_URL or install postgresql): {why}"
            );
            None
        }
    }
}

/// A new empty database on the test server; its URL.
pub async fn fresh_database(base: &str) -> String {
    let name = {
        let mut n = COUNTER.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        format!("berth_t{}_{}", std::process::id(), *n)
    };
    let (client, conn) =
        tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to the test PostgreSQL");
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    drop(client);
    let _ = task.await;
    format!("{base}/{name}")
}

/// Everything in a database as `pg_dump` prints it.
pub fn dump(url: &str) -> Vec<u8> {
    let out = Command::new(bin("pg_dump"))
        .arg(format!("--dbname={url}"))
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
