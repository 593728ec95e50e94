//! One microVM start for `bench/microvm.sh`: starts `--image` (serving HTTP
//! on `--port`) with [`MicroVmRuntime`], polls 127.0.0.1 until the first
//! 200, waits `--idle-secs`, reads the VMM's RSS, removes the VM and prints
//! one JSON line: `first200_ms`, `kernel_ms`, `init_ms`, `rss_kb`, and with
//! `--volume NAME` (an existing engine volume, mounted through virtio-fs at
//! `--volume-target`, `/data` unless given) `virtiofsd_rss_kb`: the RSS of
//! the VM's virtiofsd processes (the recorded one and its descendants: with
//! the namespace sandbox the daemon forks into its own pid namespace).
//!
//! `cargo run --release -p berth-runtime --example microvm_start -- \
//!    --image IMG --port 3000 --state-dir DIR --init PATH [--accel tcg]
//!    [--volume NAME [--volume-target /data]]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_runtime::microvm::{Accel, MicroVmConfig, MicroVmRuntime};
use berth_runtime::{berth_labels, InstanceSpec, Runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

async fn status_200(addr: &str) -> bool {
    let Ok(Ok(mut sock)) = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    else {
        return false;
    };
    if sock.write_all(b"GET / HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), sock.read_exact(&mut head)).await,
        Ok(Ok(_))
    ) && &head[9..12] == b"200"
}

/// `pid` and the processes below it (from `/proc/<pid>/task/*/children`).
fn with_descendants(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        i += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            all.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    all
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let image = arg("--image").ok_or("--image is required")?;
    let port: u16 = arg("--port").unwrap_or_else(|| "3000".into()).parse()?;
    let state_dir = PathBuf::from(arg("--state-dir").ok_or("--state-dir is required")?);
    let init = PathBuf::from(arg("--init").ok_or("--init is required")?);
    let accel: Accel = arg("--accel").unwrap_or_else(|| "tcg".into()).parse()?;
    let idle: u64 = arg("--idle-secs").unwrap_or_else(|| "3".into()).parse()?;
    let docker = bollard::Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    let rt = MicroVmRuntime::new(
        docker,
        MicroVmConfig {
            state_dir,
            kernel: arg("--kernel").map(PathBuf::from),
            init,
            accel,
            qemu: PathBuf::from("qemu-system-x86_64"),
        },
    )
    .await?;
    let suffix = format!("{:x}", std::process::id());
    let mut spec = InstanceSpec::new(berth_runtime::instance_name(&["bench"], &suffix), &image);
    spec.labels = berth_labels("bench", "web", "bench", &suffix);
    spec.port = Some(port);
    if let Some(volume) = arg("--volume") {
        spec.mounts.push(berth_runtime::VolumeMount {
            volume,
            target: arg("--volume-target").unwrap_or_else(|| "/data".into()),
            read_only: false,
        });
    }

    let started = Instant::now();
    let instance = rt.start(&spec).await?;
    let result = async {
        let endpoint = instance.endpoint.clone().ok_or("no endpoint")?.to_string();
        let deadline = started + Duration::from_secs(300);
        while !status_200(&endpoint).await {
            if Instant::now() > deadline {
                return Err::<_, Box<dyn std::error::Error>>("no 200 within 300 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let first200 = started.elapsed();
        let (kernel_ms, init_ms) = rt.boot_times(&instance.id).unwrap_or((0, 0));
        tokio::time::sleep(Duration::from_secs(idle)).await;
        let rss = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                })
                .unwrap_or(0)
        };
        let rss_kb = rt.vmm_pid(&instance.id).map(rss).unwrap_or(0);
        let virtiofsd = if spec.mounts.is_empty() {
            String::new()
        } else {
            let kb: u64 = rt
                .virtiofsd_pids(&instance.id)
                .into_iter()
                .flat_map(with_descendants)
                .map(rss)
                .sum();
            format!(",\"virtiofsd_rss_kb\":{kb}")
        };
        println!(
            "{{\"first200_ms\":{},\"kernel_ms\":{kernel_ms},\"init_ms\":{init_ms},\"rss_kb\":{rss_kb}{virtiofsd},\"accel\":\"{}\"}}",
            first200.as_millis(),
            rt.accel().as_str()
        );
        Ok(())
    }
    .await;
    rt.remove(&instance.id).await?;
    result
}
