//! [`RegistryImages`] against a real registry (`docker-registry`, Debian's
//! distribution registry) on 127.0.0.1; an image is put there through the
//! registry's own HTTP API (a config blob and a manifest with no layers).

use std::path::Path;
use std::time::Duration;

use berth_runtime::{Images, RegistryImages};
use sha2::{Digest, Sha256};

/// A registry on a free loopback port, deletes allowed; killed on drop.
struct Registry {
    addr: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

async fn registry() -> Option<Registry> {
    let bin = Path::new("/usr/bin/docker-registry");
    if !bin.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "docker-registry is not installed (apt-get install docker-registry)"
        );
        eprintln!("SKIPPED: docker-registry is not installed (apt-get install docker-registry)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.path().display()
    );
    let cfg = dir.path().join("config.yml");
    std::fs::write(&cfg, config).unwrap();
    let child = tokio::process::Command::new(bin)
        .arg("serve")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some(Registry {
                addr: format!("127.0.0.1:{port}"),
                _child: child,
                _dir: dir,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the registry did not start");
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Uploads a minimal image `repo:tag` with the registry's v2 API.
async fn put_image(addr: &str, repo: &str, tag: &str) {
    let client = reqwest::Client::new();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let digest = sha(config);
    let start = client
        .post(format!("http://{addr}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 202);
    let location = start.headers()["location"].to_str().unwrap().to_owned();
    let location = if location.starts_with('/') {
        format!("http://{addr}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = client
        .put(format!("{location}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(config.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{:?}", put.text().await);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{digest}"}},"layers":[]}}"#,
        config.len()
    );
    let put = client
        .put(format!("http://{addr}/v2/{repo}/manifests/{tag}"))
        .header(
            "content-type",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{:?}", put.text().await);
}

#[tokio::test]
async fn registry_images_exist_and_are_removed() {
    let Some(reg) = registry().await else { return };
    let images = RegistryImages::new(reg.addr.clone());
    assert!(!images.exists("berth/shop-web:1a2b").await.unwrap());
    put_image(&reg.addr, "berth/shop-web", "1a2b").await;
    assert!(images.exists("berth/shop-web:1a2b").await.unwrap());
    assert!(images
        .exists(&format!("{}/berth/shop-web:1a2b", reg.addr))
        .await
        .unwrap());
    assert!(!images.exists("berth/shop-web:other").await.unwrap());
    images.remove("berth/shop-web:1a2b").await.unwrap();
    assert!(!images.exists("berth/shop-web:1a2b").await.unwrap());
    images
        .remove("berth/shop-web:1a2b")
        .await
        .expect("missing is ok");
}
