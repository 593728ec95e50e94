//! Cache keys and image tags.
//!
//! Tag scheme: `berth/<project>-<service>:<first 12 hex digits of the cache
//! key>`. The key covers the git tree (the content of the commit), the whole
//! build plan (so a changed base image, port or generated Dockerfile is a new
//! key) and the build args in sorted order. When an image with that tag
//! exists the build can be skipped.

use sha2::{Digest, Sha256};

use crate::BuildPlan;

/// A hex SHA-256 over the tree, the plan and the build args; equal inputs give
/// equal keys, whatever the order of the args.
pub fn cache_key(checkout_tree: &str, plan: &BuildPlan, build_args: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    h.update(b"berth-cache-v1\0");
    h.update(checkout_tree.as_bytes());
    h.update(b"\0");
    // Serializing a plain struct of strings cannot fail.
    h.update(serde_json::to_vec(plan).unwrap_or_default());
    let mut args: Vec<_> = build_args.iter().collect();
    args.sort();
    for (k, v) in args {
        h.update(b"\0");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The image tag of a build: `berth/<project>-<service>:<key12>`.
pub fn image_tag(project: &str, service: &str, cache_key: &str) -> String {
    let short = &cache_key[..cache_key.len().min(12)];
    format!(
        "berth/{}-{}:{short}",
        project.to_ascii_lowercase(),
        service.to_ascii_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> BuildPlan {
        BuildPlan {
            provider: "static".into(),
            framework: None,
            runtime: None,
            port: 3000,
            start_command: None,
            dockerfile: "FROM scratch".into(),
            dockerfile_path: None,
            generated: true,
        }
    }

    #[test]
    fn same_inputs_same_key_any_change_new_key() {
        let a = vec![("A".to_string(), "1".to_string()), ("B".into(), "2".into())];
        let b = vec![("B".to_string(), "2".to_string()), ("A".into(), "1".into())];
        let k = cache_key("tree1", &plan(), &a);
        assert_eq!(k, cache_key("tree1", &plan(), &b));
        assert_eq!(k.len(), 64);
        assert_ne!(k, cache_key("tree2", &plan(), &a));
        let mut p = plan();
        p.port = 8080;
        assert_ne!(k, cache_key("tree1", &p, &a));
        assert_ne!(k, cache_key("tree1", &plan(), &a[..1]));
        let c = vec![("A".to_string(), "1B=2".to_string())];
        assert_ne!(cache_key("t", &plan(), &c), cache_key("t", &plan(), &a));
    }

    #[test]
    fn tag_scheme() {
        let k = cache_key("t", &plan(), &[]);
        let tag = image_tag("shop", "web", &k);
        assert_eq!(tag, format!("berth/shop-web:{}", &k[..12]));
    }
}
