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

use crate::model::{DEFAULT_SERVICE, PRODUCTION};

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
    format!("{}.{base_domain}", label(project, service, env))
}

/// The hostname that serves exactly one deployment.
pub fn preview_host(
    base_domain: &str,
    project: &str,
    service: &str,
    env: &str,
    deployment_id: &str,
) -> String {
    format!(
        "{}-{deployment_id}.{base_domain}",
        label(project, service, env)
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
}
