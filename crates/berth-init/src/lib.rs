//! berth-init: PID 1 inside every berth microVM, and the formats the host
//! shares with it.
//!
//! The host (berth-runtime's `microvm` backend) boots the guest kernel with
//! a per-instance initramfs holding this binary as `/berth-init`, the
//! kernel modules the guest needs (virtio is modular in Debian's cloud
//! kernel) and a [`config::Config`] as `/berth/config.json`. The init then:
//!
//! 1. **Stage 1** (in the initramfs): mounts `/dev`, `/proc`, `/sys`, loads
//!    the modules in the listed order, waits for the root disk, mounts it and
//!    makes it the root (move mounts + chroot; the init keeps running, so
//!    `/proc/1/cmdline` stays `/berth-init`).
//! 2. **Stage 2** (in the app's root): `/dev/pts`, `/dev/shm`, `/tmp`,
//!    hostname, loopback + the user-mode network, `/etc/resolv.conf`, the
//!    volumes (virtio-fs, one tag per volume, [`config::Mount`]); then
//!    runs the app (argv, env, working directory and user already merged by
//!    the host from the image config and berth's variables), reaps every
//!    zombie, forwards the host's signals, reports the exit code (and
//!    whether the kernel's OOM killer ran) and powers the VM off.
//!
//! Channels to the host are virtio-console ports (virtio-serial), found by
//! name under `/sys/class/virtio-ports`:
//!
//! - [`protocol::STDOUT_PORT`] / [`protocol::STDERR_PORT`]: the app's
//!   stdout and stderr apart, one [`lines`] record per line (guest
//!   timestamp, then the line);
//! - [`protocol::STATUS_PORT`]: guest → host [`protocol::Status`] records
//!   (started, exited, init error), one JSON object per line;
//! - [`protocol::CONTROL_PORT`]: host → guest [`protocol::Control`] records
//!   (signals), one JSON object per line.
//!
//! Invariants: the init never exits (PID 1 exiting panics the kernel); every
//! path ends in a power-off after a final status record; nothing the app
//! writes can reach the status channel.

pub mod config;
pub mod lines;
pub mod protocol;
pub mod user;
