//! The hostnames berth gives deployments. One place decides them, so the
//! edge routes and the URLs the API returns always agree.
//!
//! With base domain `B`:
//! - default (route) hostname of service `web` in `production`: `<project>.B`;
//!   another service: `<service>-<project>.B`; another environment appends
//!   `-<env>` to the first label (004's `<slug>-pr-42`);
//! - preview hostname of one deployment: `<first label>-<deployment id>.B`.
//!
//! Without a base domain, `B` is `localhost`, which browsers and curl
//! resolve to 127.0.0.1.
//!
//! Invariant: the first label is a valid DNS label (at most 63 characters)
//! whatever the lengths of the names. A label that would be longer keeps
//! its first characters and ends in `-` and 8 characters of a hash of the
//! whole label, so it stays stable and distinct; a preview label always
//! ends in the full deployment id.

use crate::model::{DEFAULT_SERVICE, PRODUCTION};
use crate::names::{fit_label, MAX_LABEL};

/// The first DNS label of a service's default hostname.
fn label(project: &str, service: &str, env: &str) -> String {
    let mut l = if service == DEFAULT_SERVICE {
        project.to_string()
    } else {
        format!("{service}-{project}")
    };
    if env != PRODUCTION {
        l.push('-');
        l.push_str(env);
    }
    l
}

/// The hostname that follows the active deployment of a service.
pub fn route_host(base_domain: &str, project: &str, service: &str, env: &str) -> String {
    format!(
        "{}.{base_domain}",
        fit_label(&label(project, service, env), MAX_LABEL)
    )
}

/// The hostname that serves exactly one deployment.
pub fn preview_host(
    base_domain: &str,
    project: &str,
    service: &str,
    env: &str,
    deployment_id: &str,
) -> String {
    let room = MAX_LABEL.saturating_sub(deployment_id.len() + 1);
    format!(
        "{}-{deployment_id}.{base_domain}",
        fit_label(&label(project, service, env), room)
    )
}

/// `http://host[:port]/`, the port omitted when it is the default.
pub fn url(scheme: &str, host: &str, port: Option<u16>) -> String {
    match (scheme, port) {
        ("http", Some(80)) | ("https", Some(443)) | (_, None) => format!("{scheme}://{host}/"),
        (_, Some(p)) => format!("{scheme}://{host}:{p}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert_eq!(
            route_host("berth.test", "shop", "web", "production"),
            "shop.berth.test"
        );
        assert_eq!(
            route_host("localhost", "shop", "api", "production"),
            "api-shop.localhost"
        );
        assert_eq!(
            route_host("b.io", "shop", "web", "pr-42"),
            "shop-pr-42.b.io"
        );
        assert_eq!(
            preview_host("b.io", "shop", "web", "production", "0abc"),
            "shop-0abc.b.io"
        );
        assert_eq!(
            url("http", "shop.b.io", Some(8080)),
            "http://shop.b.io:8080/"
        );
        assert_eq!(url("http", "shop.b.io", Some(80)), "http://shop.b.io/");
    }

    #[test]
    fn long_names_still_make_dns_labels() {
        let project = "p".repeat(40); // the longest project name
        let env = "e".repeat(30); // the longest environment name
        let first_label = |h: &str| h.split('.').next().unwrap().to_string();
        let id = "0abcdefghjkmnp";
        for service in ["web", "api", &"s".repeat(40), &"s".repeat(63)] {
            let r = route_host("b.io", &project, service, &env);
            let p = preview_host("b.io", &project, service, &env, id);
            for h in [&r, &p] {
                let l = first_label(h);
                assert!(l.len() <= MAX_LABEL, "{h}: {} characters", l.len());
                assert!(crate::names::hostname(h).is_ok(), "{h}");
                assert!(!l.contains("--"), "{h}");
            }
            assert!(first_label(&p).ends_with(&format!("-{id}")), "{p}");
            assert!(r.ends_with(".b.io"), "{r}");
            // Stable: the same names give the same hostname.
            assert_eq!(r, route_host("b.io", &project, service, &env));
        }
        // Names that share their first 54 characters stay apart.
        let a = route_host("b.io", &project, &"s".repeat(40), &env);
        let b = route_host("b.io", &project, &"s".repeat(41), &env);
        assert_ne!(a, b);
        let a = preview_host("b.io", &project, "api", &env, id);
        let b = preview_host("b.io", &project, "apj", &env, id);
        assert_ne!(a, b);
        // Short labels are left as they are.
        assert_eq!(
            route_host("b.io", "shop", &"s".repeat(40), "production"),
            format!("{}-shop.b.io", "s".repeat(40))
        );
    }
}
