//! The routes file: the last applied table, so a restarted berth serves
//! immediately. Written atomically (temp file, fsync, rename, fsync dir).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::route::RouteSpec;

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct RoutesFile {
    version: u32,
    routes: BTreeMap<String, RouteSpec>,
}

/// Why the routes file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read routes file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("routes file {path} is not valid: {reason}")]
    Invalid { path: String, reason: String },
}

/// `Ok(None)` when the file does not exist.
pub(crate) fn load(path: &Path) -> Result<Option<BTreeMap<String, RouteSpec>>, LoadError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LoadError::Read {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let file: RoutesFile = serde_json::from_slice(&bytes).map_err(|e| LoadError::Invalid {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if file.version != VERSION {
        return Err(LoadError::Invalid {
            path: path.display().to_string(),
            reason: format!("unsupported version {}", file.version),
        });
    }
    Ok(Some(file.routes))
}

pub(crate) fn save(path: &Path, routes: &BTreeMap<String, RouteSpec>) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(&RoutesFile {
        version: VERSION,
        routes: routes.clone(),
    })
    .map_err(std::io::Error::other)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "routes.json".into());
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::TargetSpec;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("routes.json");
        assert!(load(&p).unwrap().is_none());
        let mut routes = BTreeMap::new();
        routes.insert(
            "a.localhost".to_string(),
            RouteSpec {
                policy: Default::default(),
                targets: vec![TargetSpec {
                    deployment_id: None,
                    sha: None,
                    id: "d1".into(),
                    upstream: "127.0.0.1:5000".into(),
                    weight: 3,
                }],
            },
        );
        save(&p, &routes).unwrap();
        assert_eq!(load(&p).unwrap().unwrap(), routes);
        assert!(!dir.path().join(".routes.json.tmp").exists());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("routes.json");
        std::fs::write(&p, b"{not json").unwrap();
        assert!(matches!(load(&p), Err(LoadError::Invalid { .. })));
        std::fs::write(&p, br#"{"version":9,"routes":{}}"#).unwrap();
        assert!(matches!(load(&p), Err(LoadError::Invalid { .. })));
    }
}
