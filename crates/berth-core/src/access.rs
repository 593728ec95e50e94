//! Who may do what: API token roles, the token and audit records the API
//! returns (JSON in camelCase), and the rules a token name follows.
//!
//! Invariants: roles are ordered (viewer < deployer < admin) and a role
//! allows everything a lower one does; a token record never carries the
//! token itself (the store keeps only its SHA-256).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The name the server's own `--token` goes by (in the audit log, in the
/// console). No created token may take it.
pub const ADMIN_TOKEN_NAME: &str = "admin";

/// What a token may do. Ordered: each role allows what the lower ones do.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads: projects, status, logs, variables (secrets masked).
    Viewer,
    /// Also deploys, rolls back, promotes, cancels, sets variables, runs.
    Deployer,
    /// Everything: tokens, domains, routes, nodes, the cluster, projects.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Deployer, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

    /// Whether this role may do what `need` is required for.
    pub fn allows(self, need: Role) -> bool {
        self >= need
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::parse(s).ok_or_else(|| format!("unknown role {s:?} (use admin, deployer or viewer)"))
    }
}

/// A token as listed: never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    /// The one project the token sees, or `None` for every project.
    pub project: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenInfo {
    /// Why the token no longer works at `now`, if it does not.
    pub fn dead_at(&self, now: DateTime<Utc>) -> Option<TokenDead> {
        if self.revoked_at.is_some() {
            return Some(TokenDead::Revoked);
        }
        match self.expires_at {
            Some(t) if t <= now => Some(TokenDead::Expired),
            _ => None,
        }
    }
}

/// Why a token that exists is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenDead {
    Revoked,
    Expired,
}

/// `POST /tokens`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub project: Option<String>,
    /// How long the token lives (`30d`, `12h`); `None`: until revoked.
    #[serde(default)]
    pub expires: Option<String>,
}

/// The answer to `POST /tokens`: the only time the token is shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

/// One change made through the API, the console or `git push`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// The token's name (`admin` for the server's `--token`).
    pub token: String,
    /// What was done: `deploy`, `rollback`, `variables.set`, `tokens.create`…
    pub action: String,
    /// What it was done to (a project, `project/env/VAR`, a deployment id…).
    pub target: String,
    /// The project it concerns, if any (for `berth audit --project`).
    pub project: Option<String>,
    /// The client's address (the socket's, never a forwarded header).
    pub source_ip: String,
}

/// A token name: 1 to 64 of `a-z 0-9 - _ .`, starting with a letter or
/// digit, and not the admin token's name.
pub fn token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "token name {name:?} must be 1 to 64 characters long"
        ));
    }
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !ok_first || !ok_rest {
        return Err(format!(
            "token name {name:?} may hold only a-z, 0-9, '-', '_' and '.', starting with a letter or digit"
        ));
    }
    if name == ADMIN_TOKEN_NAME {
        return Err(format!(
            "token name {name:?} is the server's own --token; choose another"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        let all = [Role::Viewer, Role::Deployer, Role::Admin];
        for (i, have) in all.iter().enumerate() {
            for (j, need) in all.iter().enumerate() {
                assert_eq!(have.allows(*need), i >= j, "{have} for {need}");
            }
            assert_eq!(Role::parse(have.as_str()), Some(*have));
        }
        assert_eq!(Role::parse("root"), None);
        assert!("root"
            .parse::<Role>()
            .unwrap_err()
            .contains("admin, deployer or viewer"));
    }

    #[test]
    fn dead_tokens_say_why() {
        let now = Utc::now();
        let mut t = TokenInfo {
            name: "ci".into(),
            role: Role::Deployer,
            project: None,
            created_at: now,
            expires_at: Some(now + chrono::Duration::seconds(10)),
            last_used_at: None,
            revoked_at: None,
        };
        assert_eq!(t.dead_at(now), None);
        assert_eq!(
            t.dead_at(now + chrono::Duration::seconds(10)),
            Some(TokenDead::Expired)
        );
        t.revoked_at = Some(now);
        assert_eq!(t.dead_at(now), Some(TokenDead::Revoked));
    }

    #[test]
    fn token_names() {
        assert!(token_name("ci-deploy.v2").is_ok());
        assert!(token_name("").is_err());
        assert!(token_name("Admin").is_err());
        assert!(token_name("-x").is_err());
        assert!(token_name("a b").is_err());
        assert!(token_name(&"a".repeat(65)).is_err());
        assert!(token_name("admin").unwrap_err().contains("--token"));
    }
}
