//! What the host tells the init: `/berth/config.json` in the initramfs.

use serde::{Deserialize, Serialize};

/// Where the config lives inside the initramfs.
pub const CONFIG_PATH: &str = "/berth/config.json";
/// Where the kernel modules live inside the initramfs.
pub const MODULES_DIR: &str = "/lib/modules";

/// Everything the init needs to start the app. The host merges the image
/// config (entrypoint, cmd, env, working directory, user) with berth's
/// variables before writing it, so the init applies it as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The app's argv: entrypoint + cmd. `argv[0]` without a `/` is looked up
    /// in the `PATH` of `env`.
    pub argv: Vec<String>,
    /// The app's environment, in order (later duplicates win).
    pub env: Vec<(String, String)>,
    /// Working directory; empty means `/`.
    #[serde(default)]
    pub workdir: String,
    /// `user`, `uid`, `user:group` or `uid:gid`; empty means root.
    #[serde(default)]
    pub user: String,
    pub hostname: String,
    /// Kernel module file names under [`MODULES_DIR`], loaded in order.
    #[serde(default)]
    pub modules: Vec<String>,
    /// The root disk, e.g. `/dev/vda`.
    pub root_device: String,
    /// User-mode network to configure on `eth0`; `None` leaves only `lo`.
    #[serde(default)]
    pub network: Option<Network>,
    /// Probe boot: report `Status::ProbeOk` right after stage 1's module
    /// loading and power off (used to tell whether an accelerator boots).
    #[serde(default)]
    pub probe: bool,
    /// What happens when the app exits (the host's restart policy); a
    /// config without it (an older host) never restarts.
    #[serde(default)]
    pub restart: Restart,
    /// Volumes to mount (virtio-fs) before the app starts; a config
    /// without them (an older host) mounts none.
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

/// A volume shared by the host through virtio-fs (one `vhost-user-fs`
/// device per volume, its `tag` naming it), mounted at `target` in the
/// app's root before the app starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The virtio-fs tag (at most [`MAX_TAG_LEN`] bytes).
    pub tag: String,
    /// Absolute path in the app's root; made when missing.
    pub target: String,
    /// The volume's name, for messages.
    #[serde(default)]
    pub volume: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Longest virtio-fs tag (the device's config field is 36 bytes).
pub const MAX_TAG_LEN: usize = 36;

/// The restart policy the init applies inside the VM, as the Docker Engine
/// applies a container's (`no`, `on-failure:N`, `unless-stopped`): the app
/// is started again in the same VM (its root overlay, `/tmp` and address
/// kept, as a restarted container keeps its writable layer), never after
/// the host asked it to stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Restart {
    #[default]
    Never,
    /// After a non-zero exit, at most `max_retries` times.
    OnFailure { max_retries: u32 },
    /// After every exit.
    Always,
}

impl Restart {
    /// Whether the app is started again after exiting with `code`, when it
    /// has been restarted `restarts` times already.
    pub fn again(self, code: i32, restarts: u32) -> bool {
        match self {
            Restart::Never => false,
            Restart::OnFailure { max_retries } => code != 0 && restarts < max_retries,
            Restart::Always => true,
        }
    }
}

/// The delay before a restart, Docker's rule: 100 ms, doubled at each
/// restart in a row, at most one minute; an app that ran 10 s or more
/// starts the series again.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    last: Option<std::time::Duration>,
}

impl Backoff {
    /// First delay of a series.
    pub const FIRST: std::time::Duration = std::time::Duration::from_millis(100);
    /// Longest delay.
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(60);
    /// A run this long resets the series.
    pub const RESET_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

    /// The delay before the next start of an app that ran `ran`.
    pub fn next(&mut self, ran: std::time::Duration) -> std::time::Duration {
        let delay = match self.last {
            Some(last) if ran < Self::RESET_AFTER => (last * 2).min(Self::MAX),
            _ => Self::FIRST,
        };
        self.last = Some(delay);
        delay
    }
}

/// An IPv4 address on `eth0` with a default route and a resolver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub address: [u8; 4],
    pub prefix_len: u8,
    pub gateway: [u8; 4],
    pub dns: [u8; 4],
}

impl Network {
    /// QEMU user-mode networking's defaults (slirp: 10.0.2.0/24).
    pub fn qemu_user() -> Self {
        Self {
            address: [10, 0, 2, 15],
            prefix_len: 24,
            gateway: [10, 0, 2, 2],
            dns: [10, 0, 2, 3],
        }
    }

    /// The netmask of `prefix_len`.
    pub fn netmask(&self) -> [u8; 4] {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0);
        bits.to_be_bytes()
    }
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("bad init config: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bad init config: empty command (the image has no entrypoint or cmd)")]
    EmptyCommand,
    #[error("bad init config: no root device")]
    NoRootDevice,
    #[error("bad init config: bad mount {0:?} (an absolute target and a tag of 1 to 36 bytes)")]
    BadMount(String),
}

/// Default `PATH` when the image sets none (the same as Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Config {
    /// Parses and checks a config.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_json::from_str(text)?;
        if config.argv.is_empty() || config.argv[0].is_empty() {
            return Err(ConfigError::EmptyCommand);
        }
        if config.root_device.is_empty() {
            return Err(ConfigError::NoRootDevice);
        }
        for m in &config.mounts {
            if m.tag.is_empty()
                || m.tag.len() > MAX_TAG_LEN
                || !m.target.starts_with('/')
                || m.target == "/"
            {
                return Err(ConfigError::BadMount(format!("{}:{}", m.tag, m.target)));
            }
        }
        Ok(config)
    }

    /// The environment with later duplicates winning, and `PATH`, `HOME`
    /// (from `home`) and `HOSTNAME` filled in when missing.
    pub fn effective_env(&self, home: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in &self.env {
            if let Some(slot) = out.iter_mut().find(|(key, _)| key == k) {
                slot.1 = v.clone();
            } else {
                out.push((k.clone(), v.clone()));
            }
        }
        for (key, value) in [
            ("PATH", DEFAULT_PATH),
            ("HOME", home),
            ("HOSTNAME", &self.hostname),
        ] {
            if !out.iter().any(|(k, _)| k == key) {
                out.push((key.to_owned(), value.to_owned()));
            }
        }
        out
    }
}

/// Resolves `argv0` like execvp: a name with a `/` is taken as is, anything
/// else is searched in `path`'s directories; `is_executable` checks a
/// candidate. `None` when nothing matches.
pub fn resolve_command(
    argv0: &str,
    path: &str,
    is_executable: impl Fn(&str) -> bool,
) -> Option<String> {
    if argv0.contains('/') {
        return is_executable(argv0).then(|| argv0.to_owned());
    }
    path.split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| format!("{}/{argv0}", dir.trim_end_matches('/')))
        .find(|candidate| is_executable(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            argv: vec!["httpd".into(), "-f".into()],
            env: vec![
                ("A".into(), "1".into()),
                ("PATH".into(), "/bin".into()),
                ("A".into(), "2".into()),
            ],
            workdir: String::new(),
            user: String::new(),
            hostname: "web-1".into(),
            modules: vec!["virtio.ko".into()],
            root_device: "/dev/vda".into(),
            network: Some(Network::qemu_user()),
            probe: false,
            restart: Restart::OnFailure { max_retries: 3 },
            mounts: vec![Mount {
                tag: "berth-vol0".into(),
                target: "/data".into(),
                volume: "uploads".into(),
                read_only: false,
            }],
        }
    }

    #[test]
    fn mounts_are_optional_and_checked() {
        let mut v = serde_json::to_value(config()).unwrap();
        v.as_object_mut().unwrap().remove("mounts");
        assert!(Config::parse(&v.to_string()).unwrap().mounts.is_empty());
        for (tag, target) in [
            ("", "/data"),
            (&*"t".repeat(MAX_TAG_LEN + 1), "/data"),
            ("berth-vol0", "data"),
            ("berth-vol0", "/"),
        ] {
            let mut c = config();
            c.mounts[0].tag = tag.to_owned();
            c.mounts[0].target = target.to_owned();
            let err = Config::parse(&serde_json::to_string(&c).unwrap()).unwrap_err();
            assert!(
                err.to_string().contains("bad mount"),
                "{tag} {target}: {err}"
            );
        }
    }

    #[test]
    fn a_config_without_a_restart_policy_never_restarts() {
        let mut v = serde_json::to_value(config()).unwrap();
        v.as_object_mut().unwrap().remove("restart");
        let c = Config::parse(&v.to_string()).unwrap();
        assert_eq!(c.restart, Restart::Never);
        assert_eq!(
            serde_json::to_string(&Restart::OnFailure { max_retries: 2 }).unwrap(),
            "{\"policy\":\"on_failure\",\"max_retries\":2}"
        );
    }

    #[test]
    fn restart_policies_decide_like_dockers() {
        assert!(!Restart::Never.again(1, 0));
        let on_failure = Restart::OnFailure { max_retries: 2 };
        assert!(on_failure.again(3, 0));
        assert!(on_failure.again(137, 1));
        assert!(!on_failure.again(3, 2), "retries used up");
        assert!(!on_failure.again(0, 0), "a clean exit is not a failure");
        assert!(Restart::Always.again(0, 0));
        assert!(Restart::Always.again(1, 1000));
    }

    #[test]
    fn backoff_doubles_caps_and_resets_after_a_long_run() {
        use std::time::Duration;
        let mut b = Backoff::default();
        let quick = Duration::from_millis(50);
        let delays: Vec<_> = (0..4).map(|_| b.next(quick)).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800].map(Duration::from_millis).to_vec()
        );
        for _ in 0..20 {
            b.next(quick);
        }
        assert_eq!(b.next(quick), Backoff::MAX);
        assert_eq!(b.next(Duration::from_secs(10)), Backoff::FIRST);
        assert_eq!(b.next(quick), Duration::from_millis(200));
    }

    #[test]
    fn round_trips_through_json() {
        let c = config();
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), c);
    }

    #[test]
    fn refuses_an_empty_command() {
        let mut c = config();
        c.argv.clear();
        let err = Config::parse(&serde_json::to_string(&c).unwrap()).unwrap_err();
        assert!(err.to_string().contains("empty command"), "{err}");
        let err = Config::parse("{").unwrap_err().to_string();
        assert!(err.starts_with("bad init config"), "{err}");
    }

    #[test]
    fn later_env_duplicates_win_and_defaults_fill_gaps() {
        let env = config().effective_env("/root");
        assert_eq!(
            env,
            vec![
                ("A".to_owned(), "2".to_owned()),
                ("PATH".to_owned(), "/bin".to_owned()),
                ("HOME".to_owned(), "/root".to_owned()),
                ("HOSTNAME".to_owned(), "web-1".to_owned()),
            ]
        );
        let mut c = config();
        c.env.clear();
        assert!(c
            .effective_env("/")
            .contains(&("PATH".to_owned(), DEFAULT_PATH.to_owned())));
    }

    #[test]
    fn netmask_from_prefix() {
        assert_eq!(Network::qemu_user().netmask(), [255, 255, 255, 0]);
        let mut n = Network::qemu_user();
        n.prefix_len = 0;
        assert_eq!(n.netmask(), [0, 0, 0, 0]);
        n.prefix_len = 32;
        assert_eq!(n.netmask(), [255, 255, 255, 255]);
    }

    #[test]
    fn resolves_commands_like_execvp() {
        let exists = |p: &str| p == "/usr/bin/httpd" || p == "/bin/sh";
        assert_eq!(
            resolve_command("httpd", "/bin:/usr/bin", exists).as_deref(),
            Some("/usr/bin/httpd")
        );
        assert_eq!(
            resolve_command("/bin/sh", "", exists).as_deref(),
            Some("/bin/sh")
        );
        assert_eq!(resolve_command("/nope", "/bin", exists), None);
        assert_eq!(resolve_command("nope", "/bin:/usr/bin", exists), None);
    }
}
