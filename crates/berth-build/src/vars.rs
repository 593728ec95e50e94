//! Build-time variables.
//!
//! Only variables with a public prefix belong in a browser build (004): they
//! are compiled into files anyone can download. The caller passes those as
//! `BuildRequest::build_args` (build args are visible in the image history);
//! variables flagged as build secrets go in `BuildRequest::secrets`, which
//! reach the build only as BuildKit secret mounts (`RUN
//! --mount=type=secret,id=<NAME>`), never as build args or layers.

/// Prefixes of variables that may be exposed to browser builds.
pub const PUBLIC_PREFIXES: [&str; 3] = ["BERTH_PUBLIC_", "NEXT_PUBLIC_", "VITE_"];

/// Whether a variable may be compiled into a browser build.
pub fn is_public(name: &str) -> bool {
    PUBLIC_PREFIXES
        .iter()
        .any(|p| name.len() > p.len() && name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_prefixes() {
        for yes in ["BERTH_PUBLIC_API", "NEXT_PUBLIC_URL", "VITE_KEY"] {
            assert!(is_public(yes), "{yes}");
        }
        for no in [
            "DATABASE_URL",
            "VITE_",
            "vite_key",
            "MY_VITE_KEY",
            "BERTH_TOKEN",
            "",
        ] {
            assert!(!is_public(no), "{no}");
        }
    }
}
