//! The PostgreSQL store through the binary: `berth admin copy-store` moves
//! a SQLite berth into PostgreSQL and `berth server --database-url` serves
//! it; another master key is refused at start. Needs PostgreSQL
//! (`berth_store::testpg`: a failure under CI=true when missing).

use crate::harness::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn berth(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env_remove("BERTH_MASTER_KEY")
        .env_remove("BERTH_DATABASE_URL")
        .output()
        .unwrap()
}

#[test]
fn copy_store_moves_a_sqlite_berth_to_postgres_and_a_server_serves_it() {
    let Some(base) = berth_store::testpg::require() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(berth_store::testpg::fresh_database(&base));
    let secret = "sk_copy_NEVER_LEAK_77";

    let mut a = Server::start();
    a.ok(&["projects", "create", "demo", "--repo", "/srv/git/demo.git"]);
    a.ok(&["env", "set", "--project", "demo", "PLAIN=hello"]);
    a.ok(&[
        "env",
        "set",
        "--project",
        "demo",
        "--secret",
        &format!("API_KEY={secret}"),
    ]);
    let upstream = format!("127.0.0.1:{}", free_port());
    a.ok(&[
        "routes",
        "add",
        "legacy.example.com",
        "--upstream",
        &upstream,
    ]);
    a.kill9();

    let db = a.data_dir().join("berth.db");
    let from = format!("sqlite://{}", db.display());
    let out = berth(&["admin", "copy-store", "--from", &from, "--to", &url]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("1 projects") && said.contains("1 routes"),
        "{said}"
    );
    assert!(!said.contains(secret));
    // A second copy into the now non-empty target is refused.
    let again = berth(&["admin", "copy-store", "--from", &from, "--to", &url]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("not empty") && err.contains("--force"),
        "{err}"
    );

    let key = std::fs::read_to_string(a.data_dir().join("master.key")).unwrap();
    let b = Server::start_with(&["--database-url", &url, "--master-key", key.trim()]);
    let projects = b.json(&["projects", "list", "--json"]);
    assert_eq!(projects[0]["name"], "demo");
    let vars = b.json(&["env", "list", "--project", "demo", "--json"]);
    let vars = vars.as_array().unwrap();
    let by_key = |k: &str| vars.iter().find(|v| v["key"] == k).unwrap().clone();
    assert_eq!(by_key("PLAIN")["value"], "hello");
    assert_eq!(by_key("API_KEY")["secret"], true);
    assert_eq!(by_key("API_KEY")["value"], Value::Null);
    let routes = b.json(&["routes", "list", "--json"]);
    assert_eq!(routes[0]["hostname"], "legacy.example.com");
    assert!(b.log().contains("store open"), "{}", b.log());
    let dump = berth_store::testpg::dump(&url);
    assert!(!dump.windows(secret.len()).any(|w| w == secret.as_bytes()));

    // A server with another master key refuses to start, in one line.
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "server",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--api-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--http-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--token",
            TOKEN,
            "--database-url",
            &url,
            "--master-key",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("a server with another master key kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("master key does not open"), "{err}");
}
