//! The build context: a tar of the checkout as Docker's builder expects it.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::{BuildError, DockerIgnore};

/// Writes the tar of `dir` to `out`, leaving out what `ignore` excludes.
/// `always` names files kept whatever the patterns say (the Dockerfile and
/// `.dockerignore`); `extra` adds files (the generated Dockerfile), replacing
/// any file of the same name. Symlinks are stored as links, never followed;
/// headers are deterministic (fixed mtime and owner) so equal trees give equal
/// layers. Returns the number of files written.
pub fn write_context<W: Write>(
    dir: &Path,
    ignore: &DockerIgnore,
    always: &[&str],
    extra: &[(&str, &[u8])],
    out: W,
) -> Result<u64, BuildError> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut count = 0;
    let skip: Vec<&str> = extra.iter().map(|(name, _)| *name).collect();
    walk(dir, "", ignore, always, &skip, &mut tar, &mut count)?;
    for (name, bytes) in extra {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, *bytes)
            .map_err(|e| BuildError::Context(format!("cannot add {name}: {e}")))?;
        count += 1;
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| BuildError::Context(e.to_string()))?;
    Ok(count)
}

fn walk<W: Write>(
    root: &Path,
    rel: &str,
    ignore: &DockerIgnore,
    always: &[&str],
    skip: &[&str],
    tar: &mut tar::Builder<W>,
    count: &mut u64,
) -> Result<(), BuildError> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(|e| BuildError::Context(format!("cannot read {rel}: {e}")))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue; // names that are not UTF-8 cannot be matched or COPYed reliably
        };
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if skip.contains(&path.as_str()) {
            continue;
        }
        let ft = entry
            .file_type()
            .map_err(|e| BuildError::Context(format!("{path}: {e}")))?;
        let kept = always.contains(&path.as_str()) || !ignore.is_excluded(&path);
        let add_err = |e: std::io::Error| BuildError::Context(format!("{path}: {e}"));
        if ft.is_dir() {
            if kept {
                tar.append_dir(&path, entry.path()).map_err(add_err)?;
            }
            if kept || ignore.has_negations() {
                walk(root, &path, ignore, always, skip, tar, count)?;
            }
        } else if (ft.is_file() || ft.is_symlink()) && kept {
            tar.append_path_with_name(entry.path(), &path)
                .map_err(add_err)?;
            *count += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honours_dockerignore_and_adds_generated_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (p, c) in [
            ("Dockerfile", "FROM scratch"),
            (
                ".dockerignore",
                "*.log\nDockerfile\n.dockerignore\nlib\n!lib/keep.txt\n",
            ),
            ("app.log", "x"),
            ("src/main.txt", "main"),
            ("lib/drop.txt", "drop"),
            ("lib/keep.txt", "keep"),
            (".git/HEAD", "ref"),
            ("Dockerfile.berth", "old"),
        ] {
            let path = d.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, c).unwrap();
        }
        let ig = DockerIgnore::parse(&fs::read_to_string(d.join(".dockerignore")).unwrap());
        let mut buf = Vec::new();
        let n = write_context(
            d,
            &ig,
            &["Dockerfile", ".dockerignore"],
            &[("Dockerfile.berth", b"FROM new")],
            &mut buf,
        )
        .unwrap();
        let mut ar = tar::Archive::new(&buf[..]);
        let mut files = std::collections::BTreeMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.header().entry_type().is_file() {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut e, &mut s).unwrap();
                files.insert(e.path().unwrap().display().to_string(), s);
            }
        }
        let names: Vec<_> = files.keys().cloned().collect();
        assert_eq!(
            names,
            [
                ".dockerignore",
                "Dockerfile",
                "Dockerfile.berth",
                "lib/keep.txt",
                "src/main.txt"
            ]
        );
        assert_eq!(files["Dockerfile.berth"], "FROM new");
        assert_eq!(n, 5);
    }
}
