//! The web console in a real browser: Debian's chromium driven by
//! chromedriver over the W3C WebDriver HTTP protocol. Signs in, opens the
//! active deployment, watches its live logs (a secret the app prints shows
//! as `***`), and rolls back with the button. Screenshots of each stage go
//! to `target/test-artifacts/console/`.

use super::{host, unique, wait_body, Cleanup};
use crate::harness::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const SECRET: &str = "sup3r-s3cr3t-4711";

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    child: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send() {
                if r.json::<Value>().is_ok_and(|v| v["value"]["ready"] == true) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1366,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let mut b = Browser {
            base,
            session: String::new(),
            http,
            child,
            _profile: profile,
            shots: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/test-artifacts/console"),
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        std::fs::create_dir_all(&b.shots).unwrap();
        b
    }

    /// One WebDriver command; returns `value`, or panics with the error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"))
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or(json!({}))),
        };
        let r = req.send().map_err(|e| json!(e.to_string()))?;
        let ok = r.status().is_success();
        let v: Value = r.json().map_err(|e| json!(e.to_string()))?;
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    fn url(&self) -> String {
        self.call("GET", &self.s("/url"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn find(&self, css: &str) -> Option<String> {
        self.try_call(
            "POST",
            &self.s("/element"),
            Some(json!({"using": "css selector", "value": css})),
        )
        .ok()
        .and_then(|v| v[ELEMENT].as_str().map(String::from))
    }

    fn wait_for(&self, css: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {css} on {} within {secs} s:\n{}",
                self.url(),
                self.js("return document.body ? document.body.innerText : ''")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn click(&self, css: &str) {
        let e = self.wait_for(css, 20);
        self.call("POST", &self.s(&format!("/element/{e}/click")), None);
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_for(css, 20);
        self.call(
            "POST",
            &self.s(&format!("/element/{e}/value")),
            Some(json!({ "text": text })),
        );
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Text of the first element matching `css` (empty when none).
    fn text_of(&self, css: &str) -> String {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({
                "script": "var e = document.querySelector(arguments[0]); return e ? e.textContent : ''",
                "args": [css],
            })),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Wait until the text of `css` contains `want`.
    fn wait_text(&self, css: &str, want: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.text_of(css);
            if t.contains(want) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{css} on {} never showed {want:?}; it has:\n{t}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn scroll_to(&self, css: &str) {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({
                "script": "var e = document.querySelector(arguments[0]); if (e) e.scrollIntoView({block: 'center'}); return 1",
                "args": [css],
            })),
        );
    }

    fn screenshot(&self, name: &str) {
        let v = self.call("GET", &self.s("/screenshot"), None);
        let png = base64_decode(v.as_str().unwrap_or_default());
        assert!(png.starts_with(b"\x89PNG"), "screenshot {name} is a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// Accept the `confirm()` a click opened (it may take a moment).
    fn accept_confirm(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self
                .try_call("POST", &self.s("/alert/accept"), None)
                .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "no confirmation dialog opened");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_call("DELETE", &self.s(""), None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (the screenshots WebDriver returns).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// The app prints a secret variable when it starts.
fn printing_dockerfile() -> String {
    DOCKERFILE.replace(
        "CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"3000\", \"-h\", \"/www\"]",
        "CMD [\"/bin/sh\", \"-c\", \"echo secret is $SECRET_X; exec /bin/httpd -f -p 3000 -h /www\"]",
    )
}

fn deployed(s: &Server, project: &str) -> Value {
    let (ok, d) = super::deploy_wait(s, project);
    assert!(ok, "deploy failed: {d}\n{}", s.log());
    d
}

#[test]
fn console_signs_in_follows_live_logs_and_rolls_back_in_a_browser() {
    if !std::path::Path::new(CHROMEDRIVER).exists() {
        missing_tool(CHROMEDRIVER, "apt-get install chromium chromium-driver");
        return;
    }
    let project = unique("e2ecn");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("console v1");
    let dockerfile = printing_dockerfile();
    assert_ne!(dockerfile, DOCKERFILE, "the CMD was replaced");
    repo.commit_app("console v1", &dockerfile, "v1 prints its secret");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    s.ok(&[
        "env",
        "set",
        "--project",
        &project,
        "--secret",
        &format!("SECRET_X={SECRET}"),
    ]);
    let v1 = deployed(&s, &project);
    repo.commit_app("console v2", &dockerfile, "v2");
    let v2 = deployed(&s, &project);
    let v2_id = v2["id"].as_str().unwrap().to_string();
    wait_body(&s, &host(&project), "console v2");

    // The secret is masked in `berth logs` and the API too.
    let cli_logs = s.ok(&["logs", &v2_id]);
    assert!(cli_logs.contains("secret is ***"), "{cli_logs}");
    assert!(!cli_logs.contains(SECRET));

    let b = Browser::start();
    // Pages need a session: the console sends us to sign in.
    b.goto(&format!("{}/console/projects/{project}", s.api()));
    b.wait_for("#token", 20);
    assert!(b.url().contains("/login?next="), "{}", b.url());
    b.type_into("#token", "not-the-token");
    b.click("#signin");
    b.wait_for(".flash.bad", 20);
    b.screenshot("01-sign-in-refused");
    b.type_into("#token", TOKEN);
    b.click("#signin");

    // Signed in, back where we were going: the project page.
    b.wait_for("#deployments", 20);
    assert!(b.url().ends_with(&format!("/console/projects/{project}")));
    b.goto(&format!("{}/console", s.api()));
    b.wait_text("main", &project, 20);
    b.screenshot("02-projects");
    b.click(&format!("a[href='/console/projects/{project}']"));

    // The project page: services with the active deployment, the list.
    b.wait_for("#deployments", 20);
    let page = b.text_of("#deployments");
    assert!(page.contains(&v2_id) && page.contains(v1["id"].as_str().unwrap()));
    let vars = b.js("return document.body.innerText").to_string();
    assert!(
        vars.contains("SECRET_X") && !vars.contains(SECRET),
        "{vars}"
    );
    b.screenshot("03-project");

    // The variables editor: a plain value is shown, a secret never.
    b.type_into(".setvar input[name=key]", "PLAIN_Y");
    b.type_into(".setvar input[name=value]", "plain-value");
    b.click(".setvar button");
    b.wait_text("#vars-production", "plain-value", 20);
    b.type_into(".setvar input[name=key]", "SECRET_Z");
    b.type_into(".setvar input[name=value]", "zz-hidden-zz");
    b.click(".setvar input[name=secret]");
    b.click(".setvar button");
    b.wait_text("#vars-production", "SECRET_Z", 20);
    let html = b
        .js("return document.documentElement.outerHTML")
        .to_string();
    assert!(!html.contains("zz-hidden-zz") && !html.contains(SECRET));
    let listed = s.json(&["env", "list", "--project", &project, "--json"]);
    let listed = listed.to_string();
    assert!(
        listed.contains("SECRET_Z") && listed.contains("plain-value"),
        "{listed}"
    );
    b.scroll_to("#vars-production");
    b.screenshot("04-variables");

    // The active deployment's page, its logs live.
    b.click(&format!("a[href='/console/deployments/{v2_id}']"));
    b.wait_for("#logs", 20);
    b.wait_text("#logstate", "live", 20);
    let logs = b.wait_text("#logs", "secret is ***", 20);
    assert!(
        !logs.contains(SECRET),
        "the secret reached the page: {logs}"
    );
    let html = b
        .js("return document.documentElement.outerHTML")
        .to_string();
    assert!(!html.contains(SECRET));
    assert!(b.text_of("#badges").contains("succeeded"));
    b.screenshot("05-deployment");

    // A line the app writes now appears without a reload.
    let inspected = s.json(&["inspect", &v2_id, "--json"]);
    let container = inspected["runtime"]["instanceId"]
        .as_str()
        .unwrap_or_else(|| panic!("no runtime.instanceId: {inspected}"))
        .to_string();
    b.js("window.__marker = 'same page'; return 1");
    let o = Command::new("docker")
        .args([
            "exec",
            &container,
            "/bin/sh",
            "-c",
            "echo hello-from-test > /proc/1/fd/1",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    b.wait_text("#logs", "hello-from-test", 20);
    assert_eq!(
        b.js("return window.__marker || ''"),
        "same page",
        "the line arrived live, not by a reload"
    );
    b.scroll_to("#logs");
    b.screenshot("06-live-log");

    // The session cookie reads the API but changes nothing without the
    // form's CSRF token, nor through the JSON API.
    let cookie = b.call("GET", &b.s("/cookie/berth_session"), None);
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    let cookie = format!("berth_session={}", cookie["value"].as_str().unwrap());
    let c = s.client();
    let r = c
        .get(format!("{}/api/v1/deployments/{v2_id}", s.api()))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{}/console/deployments/{v2_id}/rollback", s.api()))
        .header("cookie", &cookie)
        .form(&[("csrf", "forged")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(format!("{}/api/v1/rollback", s.api()))
        .header("cookie", &cookie)
        .json(&json!({ "project": project }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(s.deployments(&project).len(), 2, "nothing was rolled back");

    // Steps with their durations.
    let steps = b.text_of(".steps");
    for name in ["clone", "build", "health check", "finalize"] {
        assert!(steps.contains(name), "{steps}");
    }
    assert!(steps.contains(" ms") || steps.contains(" s"), "{steps}");

    // Roll back with the button, after the confirmation.
    b.click("form[action$='/rollback'] button");
    b.accept_confirm();
    let deadline = Instant::now() + Duration::from_secs(20);
    let new_url = loop {
        let u = b.url();
        if u.contains("/console/deployments/") && !u.ends_with(&v2_id) {
            break u;
        }
        assert!(
            Instant::now() < deadline,
            "rollback did not open the new deployment: {u}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let rb_id = new_url.rsplit('/').next().unwrap().to_string();
    b.wait_text("#badges", "succeeded", 60);
    b.wait_text("#badges", "active", 20);
    let rb = s.json(&["inspect", &rb_id, "--json"]);
    assert_eq!(rb["trigger"], "rollback");
    assert_eq!(rb["sourceDeploymentId"], v1["id"]);
    assert_eq!(rb["commit"]["sha"], v1["commit"]["sha"]);
    wait_body(&s, &host(&project), "console v1");
    // v1 is warm (bake window): the rollback adopts its running container,
    // so its log says so instead of the app starting again.
    b.wait_text("#logs", "adopted, no build, no start", 20);
    b.screenshot("07-rolled-back");
    b.scroll_to("#logs");
    b.screenshot("08-rolled-back-logs");

    // The manifest of the image, computed on demand.
    b.goto(&format!("{}/console/deployments/{rb_id}/manifest", s.api()));
    b.wait_text("main", "/bin/busybox", 60);
    b.screenshot("09-manifest");
}

/// The service page after real traffic through the edge: the server's
/// rollup (every 10 s) puts the deployment's minute in the store and the
/// page draws it, with the deploy marked on the time axis. A viewer token
/// sees the same charts.
#[test]
fn service_page_charts_real_traffic_with_a_deploy_marker() {
    let project = unique("e2ech");
    let _c = Cleanup(project.clone());
    let s = Server::start();
    let repo = AppRepo::new("charts v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let d = deployed(&s, &project);
    let id = d["id"].as_str().unwrap().to_string();
    wait_body(&s, &host(&project), "charts v1");
    for _ in 0..40 {
        let (status, _) = s.get_host(&host(&project), "/").expect("edge answers");
        assert_eq!(status, 200);
    }
    let v = s.json(&[
        "tokens",
        "create",
        "chart-viewer",
        "--role",
        "viewer",
        "--json",
    ]);
    let viewer = v["token"].as_str().unwrap().to_string();
    let url = format!(
        "{}/console/projects/{project}/services/production/web",
        s.api()
    );
    let page = |token: &str| {
        let r = s
            .client()
            .get(&url)
            .bearer_auth(token)
            .send()
            .expect("console answers");
        assert_eq!(r.status().as_u16(), 200, "{url}");
        r.text().unwrap()
    };
    let points = |html: &str| -> u64 {
        let key = r#"data-metric="requests" data-points=""#;
        html.find(key)
            .and_then(|i| html[i + key.len()..].split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let html = loop {
        let html = page(TOKEN);
        if points(&html) > 0 {
            break html;
        }
        assert!(
            Instant::now() < deadline,
            "the service page never charted the traffic:\n{html}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        html.contains(r#"data-kind="deploy""#),
        "a deploy marker: {html}"
    );
    assert!(
        html.contains(&format!("deploy {id}")),
        "the marker names it"
    );
    assert!(html.contains(&id), "the legend names the deployment");
    assert!(html.contains("<polyline") || html.contains("<circle"));
    // A viewer sees the charts too.
    let as_viewer = page(&viewer);
    assert!(points(&as_viewer) > 0, "{as_viewer}");
    // The project page links to the service's charts.
    let r = s
        .client()
        .get(format!("{}/console/projects/{project}", s.api()))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(r.contains(&format!(
        "/console/projects/{project}/services/production/web"
    )));
}
