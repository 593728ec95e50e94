//! Volumes: a file the app writes survives a deploy, a rollback and a
//! kill -9 / restart of berth; `volumes backup`, the file deleted,
//! `volumes restore` → back (the replaced content kept as a backup); a
//! corrupted backup is refused before anything is touched.

use super::*;

pub(super) const WRITE_CGI: &str = "#!/bin/sh
echo \"$QUERY_STRING\" > /data/note.txt
echo 'Content-Type: text/plain'
echo
echo written
";
pub(super) const DELETE_CGI: &str = "#!/bin/sh
rm -f /data/note.txt
echo 'Content-Type: text/plain'
echo
echo deleted
";
pub(super) const READ_CGI: &str = "#!/bin/sh
echo 'Content-Type: text/plain'
echo
cat /data/note.txt 2>/dev/null || echo missing
";

/// Removes the project's volumes (after its containers).
pub(super) struct VolumeCleanup(pub(super) String);
impl Drop for VolumeCleanup {
    fn drop(&mut self) {
        remove_project_containers(&self.0);
        let out = std::process::Command::new("docker")
            .args([
                "volume",
                "ls",
                "-q",
                "--filter",
                &format!("label=dev.berth.project={}", self.0),
            ])
            .output();
        if let Ok(o) = out {
            for v in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = std::process::Command::new("docker")
                    .args(["volume", "rm", v])
                    .output();
            }
        }
    }
}

fn app(body: &str) -> AppRepo {
    let repo = AppRepo::new(body);
    let p = repo.dir.path();
    for (name, script) in [
        ("write", WRITE_CGI),
        ("delete", DELETE_CGI),
        ("read", READ_CGI),
    ] {
        let f = p.join("www/cgi-bin").join(name);
        std::fs::write(&f, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(
        p.join("berth.toml"),
        "[services.web]\nport = 3000\nbake = \"0\"\n[services.web.volumes]\n\"/data\" = \"uploads\"\n",
    )
    .unwrap();
    repo.commit_app(body, DOCKERFILE, "with a volume");
    repo
}

fn get(s: &Server, host: &str, path: &str) -> String {
    match s.get_host(host, path) {
        Ok((200, body)) => body.trim().to_string(),
        other => panic!("GET {path}: {other:?}\n{}", s.log()),
    }
}

/// Waits until `/cgi-bin/read` answers `want` (the route may be moving).
fn wait_note(s: &Server, host: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok((200, body)) = s.get_host(host, "/cgi-bin/read") {
            last = body.trim().to_string();
            if last == want {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the note never read {want:?} (last {last:?})\n{}", s.log());
}

#[test]
fn a_volume_survives_deploys_rollbacks_restarts_and_is_backed_up_and_restored() {
    let project = unique("e2ev");
    let _c = Cleanup(project.clone());
    let _v = VolumeCleanup(project.clone());
    let mut s = Server::start();
    let repo = app("vol v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d1) = deploy_wait(&s, &project);
    assert!(ok, "deploy failed: {d1}\n{}", s.log());
    let h = host(&project);
    assert_eq!(get(&s, &h, "/cgi-bin/read"), "missing");
    assert_eq!(get(&s, &h, "/cgi-bin/write?first"), "written");
    assert_eq!(get(&s, &h, "/cgi-bin/read"), "first");

    // A deploy: the new instance sees it.
    repo.commit_app("vol v2", DOCKERFILE, "v2");
    let (ok, d2) = deploy_wait(&s, &project);
    assert!(ok, "deploy failed: {d2}\n{}", s.log());
    wait_body(&s, &h, "vol v2");
    assert_eq!(get(&s, &h, "/cgi-bin/read"), "first");

    // A rollback (no bake window: a new instance of v1's image).
    let o = s.cli(&[
        "rollback",
        "--project",
        &project,
        "--service",
        "web",
        "--wait",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_body(&s, &h, "vol v1");
    assert_eq!(get(&s, &h, "/cgi-bin/read"), "first");

    // Volume helpers left behind: one by a berth process that is gone (a
    // backup cut off by kill -9) and one by a process still running (this
    // test). The new berth's reconcile removes the first only.
    let vol = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=dev.berth.project={project}"),
    ]);
    let vol = vol.trim().to_string();
    let inst = docker(&[
        "volume",
        "inspect",
        "-f",
        "{{index .Labels \"dev.berth.instance\"}}",
        &vol,
    ]);
    let image = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("volume={vol}"),
        "--format",
        "{{.Image}}",
    ]);
    let image = image.lines().next().unwrap().trim().to_string();
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let me_start = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    let helper = |name: &str, tag: &str| {
        docker(&[
            "create",
            "--name",
            name,
            "--label",
            "dev.berth.managed=true",
            "--label",
            "dev.berth.role=volume-helper",
            // So that the test's cleanup finds it if it fails.
            "--label",
            &format!("dev.berth.project={project}"),
            "--label",
            &format!("dev.berth.instance={}", inst.trim()),
            "--label",
            &format!("dev.berth.helper-process={tag}"),
            "--network",
            "none",
            "--mount",
            &format!("type=volume,src={vol},dst=/berth-volume,volume-nocopy"),
            &image,
            "/berth-volume-helper",
        ]);
    };
    let leaked = format!("{project}-leaked-helper");
    let live = format!("{project}-live-helper");
    helper(&leaked, &format!("{}:4194305:1", host_name.trim()));
    helper(
        &live,
        &format!("{}:{}:{me_start}", host_name.trim(), std::process::id()),
    );

    // kill -9 and a new berth on the same data dir.
    s.kill9();
    s.spawn();
    wait_note(&s, &h, "first");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exists = |name: &str| {
        std::process::Command::new("docker")
            .args(["container", "inspect", name])
            .output()
            .unwrap()
            .status
            .success()
    };
    while exists(&leaked) {
        assert!(
            Instant::now() < deadline,
            "the leaked helper was not removed\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(exists(&live), "a helper of a running process was removed");
    assert!(s.log().contains("removed a volume helper left by a berth"));
    docker(&["rm", "-f", &live]);

    // One volume, this environment's, mounted by web at /data.
    let volumes = s.json(&["volumes", "list", "--project", &project, "--json"]);
    let volumes = volumes.as_array().unwrap();
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    assert_eq!(volumes[0]["name"], "uploads");
    assert_eq!(volumes[0]["environmentName"], "production");
    assert_eq!(volumes[0]["mounts"][0]["serviceName"], "web");
    assert_eq!(volumes[0]["mounts"][0]["path"], "/data");
    let engine = volumes[0]["engineName"].as_str().unwrap().to_string();
    assert!(
        engine.starts_with(&format!("berth.{project}.production.uploads.")),
        "{engine}"
    );
    let labels = docker(&["volume", "inspect", "-f", "{{json .Labels}}", &engine]);
    assert!(
        labels.contains("\"dev.berth.volume\":\"uploads\""),
        "{labels}"
    );

    // Backup: a verified archive with its checksum.
    let b = s.json(&[
        "volumes",
        "backup",
        "--project",
        &project,
        "uploads",
        "--json",
    ]);
    assert_eq!(b["status"], "succeeded", "{b}");
    let sum = b["checksum"].as_str().unwrap().to_string();
    assert!(sum.starts_with("sha256:") && sum.len() == 7 + 64, "{sum}");
    let file = std::path::PathBuf::from(b["location"].as_str().unwrap());
    assert!(file.starts_with(s.data_dir().join("backups")), "{file:?}");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len() as u64, b["sizeBytes"].as_u64().unwrap());
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip");
    let backup_id = b["id"].as_str().unwrap().to_string();

    // The file deleted, then the backup restored: it is back.
    assert_eq!(get(&s, &h, "/cgi-bin/delete"), "deleted");
    assert_eq!(get(&s, &h, "/cgi-bin/read"), "missing");
    let r = s.json(&[
        "volumes",
        "restore",
        "--project",
        &project,
        "uploads",
        &backup_id,
        "--json",
    ]);
    assert_eq!(r["restored"]["id"], backup_id.as_str(), "{r}");
    assert_eq!(r["previous"]["status"], "succeeded", "{r}");
    assert_eq!(r["previous"]["trigger"], "pre_restore", "{r}");
    assert_eq!(r["restarted"].as_array().unwrap().len(), 1, "{r}");
    wait_note(&s, &h, "first");
    let listed = s.json(&[
        "volumes",
        "backups",
        "--project",
        &project,
        "uploads",
        "--json",
    ]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["id"], r["previous"]["id"], "newest first");
    assert_eq!(listed[1]["id"], backup_id.as_str());

    // The replaced content (no note) was kept: restoring it removes the note.
    let prev = r["previous"]["id"].as_str().unwrap().to_string();
    s.ok(&[
        "volumes",
        "restore",
        "--project",
        &project,
        "uploads",
        &prev,
    ]);
    wait_note(&s, &h, "missing");

    // A corrupted archive: refused with the reason, nothing touched, the
    // backup reported failed.
    assert_eq!(get(&s, &h, "/cgi-bin/write?kept"), "written");
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    std::fs::write(&file, &bad).unwrap();
    let o = s.cli(&[
        "volumes",
        "restore",
        "--project",
        &project,
        "uploads",
        &backup_id,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a corrupted backup was restored");
    assert!(
        err.contains("cannot be restored") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(get(&s, &h, "/cgi-bin/read"), "kept");
    let listed = s.json(&[
        "volumes",
        "backups",
        "--project",
        &project,
        "uploads",
        "--json",
    ]);
    let failed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == backup_id.as_str())
        .unwrap();
    assert_eq!(failed["status"], "failed", "{failed}");

    // Bad input: one line each.
    let o = s.cli(&["volumes", "backup", "--project", &project, "nope"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("volume nope not found"),
        "{err}"
    );
    let o = s.cli(&["volumes", "backup", "--project", &project, "Bad_Name"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("volume name"), "{err}");
}

/// `[services.web.backups] schedule = "* * * * *"`: the leader backs the
/// volume up at the next firing, once, verified; `keep` bounds them.
#[test]
fn scheduled_backups_run_once_per_firing() {
    let project = unique("e2es");
    let _c = Cleanup(project.clone());
    let _v = VolumeCleanup(project.clone());
    let s = Server::start();
    let repo = app("sched v1");
    std::fs::write(
        repo.dir.path().join("berth.toml"),
        "[services.web]\nport = 3000\nbake = \"0\"\n[services.web.volumes]\n\"/data\" = \"uploads\"\n\
         [services.web.backups]\nschedule = \"* * * * *\"\nkeep = 1\n",
    )
    .unwrap();
    repo.commit_app("sched v1", DOCKERFILE, "scheduled backups");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "deploy failed: {d}\n{}", s.log());
    let h = host(&project);
    assert_eq!(get(&s, &h, "/cgi-bin/write?scheduled"), "written");

    // The next firing is at most 60 s away, the scheduler looks every 10 s.
    let deadline = Instant::now() + Duration::from_secs(90);
    let first = loop {
        let listed = s.json(&[
            "volumes",
            "backups",
            "--project",
            &project,
            "uploads",
            "--json",
        ]);
        let done: Vec<Value> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["trigger"] == "scheduled" && b["status"] != "running")
            .cloned()
            .collect();
        if let Some(b) = done.first() {
            assert_eq!(done.len(), 1, "one backup per firing: {listed}");
            break b.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled backup: {listed}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["requestedBy"], "scheduler");
    let file = std::path::PathBuf::from(first["location"].as_str().unwrap());
    assert!(file.exists());
    // Within the same minute no second one is made.
    std::thread::sleep(Duration::from_secs(12));
    let listed = s.json(&[
        "volumes",
        "backups",
        "--project",
        &project,
        "uploads",
        "--json",
    ]);
    let scheduled: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["trigger"] == "scheduled" && b["status"] != "running")
        .collect();
    let minute = |v: &Value| v["createdAt"].as_str().unwrap()[..16].to_string();
    assert!(
        scheduled
            .iter()
            .filter(|b| minute(b) == minute(&first))
            .count()
            == 1,
        "{listed}"
    );
    // keep = 1: a newer scheduled backup replaces the older one's file.
    if scheduled.len() > 1 {
        panic!(
            "keep = 1 left {} scheduled backups: {listed}",
            scheduled.len()
        );
    }
}

/// A moto S3 server (`moto_server`, from `pip install 'moto[server]'`) on a
/// free 127.0.0.1 port; stopped (by its PID) when dropped.
struct Moto {
    child: std::process::Child,
    url: String,
}

const MOTO_AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";

impl Moto {
    fn binary() -> Option<std::path::PathBuf> {
        if let Ok(p) = std::env::var("BERTH_TEST_MOTO_SERVER") {
            return Some(p.into());
        }
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain([std::path::PathBuf::from("/opt/berth-moto/bin")])
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    }

    fn start(bin: &std::path::Path) -> Moto {
        let port = free_port();
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let m = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while m.req("GET", "/", None).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        m
    }

    /// A request to moto (which checks no signature, only that there is one).
    fn req(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), String> {
        let c = reqwest::blocking::Client::new();
        let mut r = c
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .header("Authorization", MOTO_AUTH);
        if let Some(b) = body {
            r = r.body(b);
        }
        let resp = r.send().map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().map_err(|e| e.to_string())?.to_vec()))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--backup-url s3://bucket/prefix` against a real S3 API (moto): the
/// archive is an object, verified by downloading it again; restore reads it
/// from there; a corrupt or missing object is refused and the backup
/// reported failed; the credentials are secrets and never shown.
#[test]
fn backups_go_to_an_s3_bucket_and_are_verified_on_read_back() {
    let Some(bin) = Moto::binary() else {
        missing_tool("moto_server", "pip install 'moto[server]'");
        return;
    };
    let mut moto = Moto::start(&bin);
    let (st, _) = moto.req("PUT", "/berth-e2e", None).unwrap();
    assert_eq!(st, 200, "create the bucket");
    let project = unique("e2e3");
    let _c = Cleanup(project.clone());
    let _v = VolumeCleanup(project.clone());
    let s = Server::start_with(&[
        "--backup-url",
        "s3://berth-e2e/site/",
        "--backup-s3-endpoint",
        &moto.url,
    ]);
    let repo = app("s3 v1");
    s.ok(&["projects", "create", &project, "--repo", repo.path()]);
    let (ok, d) = deploy_wait(&s, &project);
    assert!(ok, "deploy failed: {d}\n{}", s.log());
    let h = host(&project);
    assert_eq!(get(&s, &h, "/cgi-bin/write?in-s3"), "written");
    let backup = |s: &Server| {
        s.cli(&[
            "volumes",
            "backup",
            "--project",
            &project,
            "uploads",
            "--json",
        ])
    };

    // No credentials yet: the backup is reported failed, saying which secret.
    let o = backup(&s);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a backup without credentials succeeded"
    );
    assert!(err.contains("BERTH_BACKUP_S3_ACCESS_KEY_ID"), "{err}");
    // Plain variables are not credentials.
    s.ok(&[
        "env",
        "set",
        "--project",
        &project,
        "BERTH_BACKUP_S3_ACCESS_KEY_ID=AKIDE2E",
        "BERTH_BACKUP_S3_SECRET_ACCESS_KEY=plain-not-secret",
    ]);
    let err = String::from_utf8_lossy(&backup(&s).stderr).to_string();
    assert!(err.contains("set it as a secret"), "{err}");
    assert!(!err.contains("plain-not-secret"), "{err}");
    const SECRET: &str = "s3cr3t-e2e-value-never-shown";
    s.ok(&[
        "env",
        "set",
        "--project",
        &project,
        "--secret",
        "BERTH_BACKUP_S3_ACCESS_KEY_ID=AKIDE2E",
        &format!("BERTH_BACKUP_S3_SECRET_ACCESS_KEY={SECRET}"),
    ]);

    // A backup: an object in the bucket, read back with its checksum.
    let o = backup(&s);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(b["status"], "succeeded", "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let key = format!("site/{project}/production/uploads/{id}.tar.gz");
    assert_eq!(
        b["location"],
        format!("s3://berth-e2e/{key}").as_str(),
        "{b}"
    );
    let (st, object) = moto.req("GET", &format!("/berth-e2e/{key}"), None).unwrap();
    assert_eq!(st, 200);
    assert_eq!(object.len() as u64, b["sizeBytes"].as_u64().unwrap());
    use sha2::Digest;
    assert_eq!(
        b["checksum"].as_str().unwrap(),
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&object)))
    );
    // Nothing kept on the server's disk.
    let staged: Vec<_> = walk(&s.data_dir().join("backups"));
    assert!(staged.is_empty(), "files left on disk: {staged:?}");

    // Restore from the bucket.
    assert_eq!(get(&s, &h, "/cgi-bin/delete"), "deleted");
    let r = s.json(&[
        "volumes",
        "restore",
        "--project",
        &project,
        "uploads",
        &id,
        "--json",
    ]);
    assert_eq!(r["restored"]["id"], id.as_str(), "{r}");
    let prev_loc = r["previous"]["location"].as_str().unwrap().to_string();
    assert!(prev_loc.starts_with("s3://berth-e2e/site/"), "{r}");
    wait_note(&s, &h, "in-s3");

    // A corrupt object: refused, nothing touched, reported failed.
    let mut bad = object.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    let (st, _) = moto
        .req("PUT", &format!("/berth-e2e/{key}"), Some(bad))
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(get(&s, &h, "/cgi-bin/write?after"), "written");
    let o = s.cli(&["volumes", "restore", "--project", &project, "uploads", &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a corrupt object was restored");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(get(&s, &h, "/cgi-bin/read"), "after");
    // A missing object: the same.
    let prev_id = r["previous"]["id"].as_str().unwrap().to_string();
    let prev_key = prev_loc.strip_prefix("s3://berth-e2e").unwrap().to_string();
    let (st, _) = moto
        .req("DELETE", &format!("/berth-e2e{prev_key}"), None)
        .unwrap();
    assert_eq!(st, 204);
    let o = s.cli(&[
        "volumes",
        "restore",
        "--project",
        &project,
        "uploads",
        &prev_id,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("nothing was changed"),
        "{err}"
    );
    let listed = s.json(&[
        "volumes",
        "backups",
        "--project",
        &project,
        "uploads",
        "--json",
    ]);
    for want in [&id, &prev_id] {
        let b = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == want.as_str())
            .unwrap();
        assert_eq!(b["status"], "failed", "{b}");
    }
    assert_eq!(get(&s, &h, "/cgi-bin/read"), "after");

    // The bucket unreachable: the backup is reported failed, not done.
    let _ = moto.child.kill();
    let _ = moto.child.wait();
    let o = backup(&s);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("cannot upload"),
        "{err}"
    );

    // The secret never appeared.
    assert!(
        !s.log().contains(SECRET),
        "the secret is in the server's log"
    );
    let env = s.ok(&["env", "list", "--project", &project]);
    assert!(!env.contains(SECRET), "{env}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
