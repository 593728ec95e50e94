//! The per-instance initramfs: a `newc` cpio archive holding berth-init as
//! `/berth-init`, the kernel modules the guest needs under `/lib/modules`
//! and the init's config as `/berth/config.json`. Written uncompressed (the
//! kernel reads it as is; nothing to inflate under TCG).

use std::io::{self, Write};

use berth_init::config::{CONFIG_PATH, MODULES_DIR};

/// One file of the archive.
pub struct Entry<'a> {
    /// Path without the leading `/`.
    pub path: String,
    pub mode: u32,
    pub data: &'a [u8],
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// Writes a `newc` archive: the directories `dev`, `proc`, `sys`,
/// `newroot`, `berth`, `lib`, `lib/modules`, then `files`, then the
/// trailer.
pub fn write_archive(out: &mut impl Write, files: &[Entry<'_>]) -> io::Result<()> {
    let mut ino = 1;
    for dir in [
        "dev",
        "proc",
        "sys",
        "newroot",
        "berth",
        "lib",
        "lib/modules",
    ] {
        write_entry(out, ino, dir, S_IFDIR | 0o755, &[])?;
        ino += 1;
    }
    for file in files {
        write_entry(
            out,
            ino,
            &file.path,
            S_IFREG | (file.mode & 0o7777),
            file.data,
        )?;
        ino += 1;
    }
    write_entry(out, 0, "TRAILER!!!", 0, &[])
}

fn write_entry(
    out: &mut impl Write,
    ino: u32,
    name: &str,
    mode: u32,
    data: &[u8],
) -> io::Result<()> {
    let name_len = name.len() + 1;
    let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        size = data.len(),
        dmaj = 0,
        dmin = 0,
        rmaj = 0,
        rmin = 0,
        namesize = name_len,
        check = 0,
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    out.write_all(&[0; 3][..pad4(header.len() + name_len)])?;
    out.write_all(data)?;
    out.write_all(&[0; 3][..pad4(data.len())])
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Path of the init inside the archive (`rdinit=` on the kernel command line).
pub const INIT_PATH: &str = "/berth-init";

/// The archive's entries for `init`, `config` and `modules` (file name,
/// contents).
pub fn entries<'a>(
    init: &'a [u8],
    config: &'a [u8],
    modules: &'a [(String, Vec<u8>)],
) -> Vec<Entry<'a>> {
    let mut files = vec![
        Entry {
            path: INIT_PATH.trim_start_matches('/').to_owned(),
            mode: 0o755,
            data: init,
        },
        Entry {
            path: CONFIG_PATH.trim_start_matches('/').to_owned(),
            mode: 0o600,
            data: config,
        },
    ];
    for (name, data) in modules {
        files.push(Entry {
            path: format!("{}/{name}", MODULES_DIR.trim_start_matches('/')),
            mode: 0o644,
            data,
        });
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back a newc archive: (name, mode, data) per entry.
    fn parse(mut bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            assert_eq!(&bytes[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&bytes[6 + i * 8..14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap() as usize
            };
            let (mode, size, namesize) = (field(1), field(6), field(11));
            let name = std::str::from_utf8(&bytes[110..110 + namesize - 1])
                .unwrap()
                .to_owned();
            let data_start = 110 + namesize + pad4(110 + namesize);
            let data = bytes[data_start..data_start + size].to_vec();
            bytes = &bytes[data_start + size + pad4(size)..];
            if name == "TRAILER!!!" {
                assert!(bytes.is_empty());
                return out;
            }
            out.push((name, mode as u32, data));
        }
    }

    #[test]
    fn archive_reads_back_with_dirs_files_and_padding() {
        let modules = vec![("virtio.ko".to_owned(), vec![1, 2, 3, 4, 5])];
        let mut out = Vec::new();
        write_archive(&mut out, &entries(b"ELF", b"{}", &modules)).unwrap();
        assert_eq!(out.len() % 4, 0);
        let parsed = parse(&out);
        let names: Vec<&str> = parsed.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "proc",
                "sys",
                "newroot",
                "berth",
                "lib",
                "lib/modules",
                "berth-init",
                "berth/config.json",
                "lib/modules/virtio.ko"
            ]
        );
        assert_eq!(
            parsed[7],
            ("berth-init".to_owned(), S_IFREG | 0o755, b"ELF".to_vec())
        );
        assert_eq!(parsed[8].1, S_IFREG | 0o600);
        assert_eq!(parsed[9].2, vec![1, 2, 3, 4, 5]);
        assert_eq!(parsed[0].1, S_IFDIR | 0o755);
    }
}
