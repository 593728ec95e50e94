//! The environment variables tracing SDKs and error trackers already read,
//! set in every instance berth starts so that traces and error reports carry
//! the build SHA without the user doing anything.
//!
//! | variable | value | when the user set it |
//! |---|---|---|
//! | `OTEL_RESOURCE_ATTRIBUTES` | `service.name`, `service.version` (the full SHA), `deployment.environment.name`, `service.namespace` (the project), `berth.deployment.id` | merged: the user's keys are kept, berth adds only the keys the user did not set |
//! | `OTEL_SERVICE_NAME` | the service name | kept |
//! | `SENTRY_RELEASE` | the full SHA | kept |
//! | `SENTRY_ENVIRONMENT` | the environment name | kept |
//! | `SOURCE_VERSION` | the full SHA (Heroku's name) | kept |
//!
//! A deployment without a commit gets no SHA-valued variable and no
//! `service.version`.

/// What an instance is: the values the variables carry.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub project: &'a str,
    pub service: &'a str,
    pub environment: &'a str,
    pub deployment_id: &'a str,
    /// The full commit SHA, if the deployment has one.
    pub sha: Option<&'a str>,
}

/// Adds the telemetry variables to `env` (the user's variables and berth's
/// own), never overwriting a value the user set; see the module docs.
pub fn add_telemetry_env(env: &mut Vec<(String, String)>, id: &Identity<'_>) {
    let sha = id.sha.filter(|s| !s.is_empty());
    let mut attrs: Vec<(&str, &str)> = vec![("service.name", id.service)];
    if let Some(sha) = sha {
        attrs.push(("service.version", sha));
    }
    attrs.push(("deployment.environment.name", id.environment));
    attrs.push(("service.namespace", id.project));
    attrs.push(("berth.deployment.id", id.deployment_id));

    match env
        .iter_mut()
        .find(|(k, _)| k == "OTEL_RESOURCE_ATTRIBUTES")
    {
        Some((_, user)) => *user = merge_resource_attributes(user, &attrs),
        None => env.push((
            "OTEL_RESOURCE_ATTRIBUTES".into(),
            merge_resource_attributes("", &attrs),
        )),
    }
    let mut set_unless_user = |key: &str, value: Option<&str>| {
        if let Some(v) = value {
            if !env.iter().any(|(k, _)| k == key) {
                env.push((key.to_string(), v.to_string()));
            }
        }
    };
    set_unless_user("OTEL_SERVICE_NAME", Some(id.service));
    set_unless_user("SENTRY_RELEASE", sha);
    set_unless_user("SENTRY_ENVIRONMENT", Some(id.environment));
    set_unless_user("SOURCE_VERSION", sha);
}

/// `user` (a W3C-baggage-style `key=value,key=value` list) with every pair
/// of `ours` whose key it does not have appended, values percent-encoded.
pub fn merge_resource_attributes(user: &str, ours: &[(&str, &str)]) -> String {
    let user_keys: Vec<&str> = user
        .split(',')
        .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let mut out = user.trim().trim_end_matches(',').to_string();
    for (k, v) in ours {
        if user_keys.contains(k) {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(&percent_encode(v));
    }
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters (what the
/// OpenTelemetry SDKs decode in `OTEL_RESOURCE_ATTRIBUTES` values).
fn percent_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn id(sha: Option<&'static str>) -> Identity<'static> {
        Identity {
            project: "shop",
            service: "web",
            environment: "production",
            deployment_id: "dep_1",
            sha,
        }
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        let mut found = env.iter().filter(|(key, _)| key == k);
        let v = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "{k} set twice");
        v
    }

    #[test]
    fn every_variable_is_set_when_the_user_set_none() {
        let mut env = vec![("PORT".to_string(), "8080".to_string())];
        add_telemetry_env(&mut env, &id(Some(SHA)));
        assert_eq!(
            get(&env, "OTEL_RESOURCE_ATTRIBUTES"),
            Some(format!("service.name=web,service.version={SHA},deployment.environment.name=production,service.namespace=shop,berth.deployment.id=dep_1").as_str())
        );
        assert_eq!(get(&env, "OTEL_SERVICE_NAME"), Some("web"));
        assert_eq!(get(&env, "SENTRY_RELEASE"), Some(SHA));
        assert_eq!(get(&env, "SENTRY_ENVIRONMENT"), Some("production"));
        assert_eq!(get(&env, "SOURCE_VERSION"), Some(SHA));
        assert_eq!(get(&env, "PORT"), Some("8080"));
    }

    #[test]
    fn user_values_are_kept_and_attributes_merged() {
        let mut env = vec![
            ("SENTRY_RELEASE".to_string(), "my-release".to_string()),
            ("OTEL_SERVICE_NAME".to_string(), "storefront".to_string()),
            (
                "OTEL_RESOURCE_ATTRIBUTES".to_string(),
                "service.version=v2, team=payments,".to_string(),
            ),
        ];
        add_telemetry_env(&mut env, &id(Some(SHA)));
        assert_eq!(get(&env, "SENTRY_RELEASE"), Some("my-release"));
        assert_eq!(get(&env, "OTEL_SERVICE_NAME"), Some("storefront"));
        assert_eq!(
            get(&env, "OTEL_RESOURCE_ATTRIBUTES"),
            Some("service.version=v2, team=payments,service.name=web,deployment.environment.name=production,service.namespace=shop,berth.deployment.id=dep_1")
        );
        assert_eq!(get(&env, "SOURCE_VERSION"), Some(SHA));
    }

    #[test]
    fn no_commit_means_no_sha_valued_variable() {
        let mut env = Vec::new();
        add_telemetry_env(&mut env, &id(None));
        assert_eq!(get(&env, "SENTRY_RELEASE"), None);
        assert_eq!(get(&env, "SOURCE_VERSION"), None);
        assert!(!get(&env, "OTEL_RESOURCE_ATTRIBUTES")
            .unwrap()
            .contains("service.version"));
        assert_eq!(get(&env, "SENTRY_ENVIRONMENT"), Some("production"));
    }

    #[test]
    fn attribute_values_are_percent_encoded() {
        assert_eq!(
            merge_resource_attributes("", &[("k", "a b,c=d%")]),
            "k=a%20b%2Cc%3Dd%25"
        );
    }
}
