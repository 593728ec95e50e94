//! Validation of every name and value a user gives berth. Each rule fails
//! with a [`NameError`] that says which rule was broken, in one line.

/// Largest variable value accepted (64 KiB).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} {name:?} is longer than {max} characters")]
    TooLong {
        what: &'static str,
        name: String,
        max: usize,
    },
    #[error("{what} {name:?} must be lowercase letters, digits and '-', starting with a letter and not ending with '-'")]
    NotDnsLabel { what: &'static str, name: String },
    #[error("variable name {name:?} must start with a letter or '_' and contain only letters, digits and '_' (POSIX)")]
    NotPosix { name: String },
    #[error("value of {name} contains a NUL byte")]
    NulInValue { name: String },
    #[error("value of {name} is {len} bytes; the limit is {MAX_VALUE_BYTES} bytes (64 KiB)")]
    ValueTooLong { name: String, len: usize },
    #[error("{what} {name:?} is not a valid hostname: {reason}")]
    BadHostname {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
}

fn dns_label(what: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            what,
            name: name.to_string(),
            max,
        });
    }
    let b = name.as_bytes();
    let ok = b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-';
    if !ok {
        return Err(NameError::NotDnsLabel {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Longest DNS label (RFC 1035).
pub const MAX_LABEL: usize = 63;

/// A label of at most `max` characters made from `label` (lowercase DNS
/// characters): `label` itself when it fits, else its first characters,
/// `-` and 8 characters of a hash of the whole of it, so the result is
/// stable across versions and machines and two long labels that share
/// their beginning stay apart. Hostnames and runtime names berth derives
/// from several user names go through it.
pub fn fit_label(label: &str, max: usize) -> String {
    if label.len() <= max {
        return label.to_string();
    }
    let tag = hash_tag(label);
    let keep = max.saturating_sub(tag.len() + 1);
    let prefix = label[..keep].trim_end_matches('-');
    format!("{prefix}-{tag}")
}

/// 8 base32 characters (40 bits) of the FNV-1a hash of `s` (not `std`'s
/// hasher, which may change between Rust versions).
fn hash_tag(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (0..8)
        .map(|i| ALPHABET[((h >> (5 * i)) & 31) as usize] as char)
        .collect()
}

/// Project names become hostnames and container names: DNS labels of at
/// most 40 characters.
pub fn project_name(name: &str) -> Result<(), NameError> {
    dns_label("project name", name, 40)
}

/// Environment names (`production`, `staging`, `pr-42`).
pub fn environment_name(name: &str) -> Result<(), NameError> {
    dns_label("environment name", name, 30)
}

/// Longest service name: a DNS label (RFC 1035), like a Kubernetes
/// Service name, so a service maps 1:1 onto a runtime's service name.
pub const MAX_SERVICE_NAME: usize = 63;

/// Service names, the one rule for `berth.toml`, the API and the CLI: a
/// lowercase DNS label of 1-63 characters (`a-z`, `0-9`, `-`, starting with
/// a letter, not ending with `-`). The hostnames berth derives from it stay
/// valid at any length ([`crate::hosts`] shortens long labels).
pub fn service_name(name: &str) -> Result<(), NameError> {
    dns_label("service name", name, MAX_SERVICE_NAME)
}

/// Scheduled job names (`[jobs.<name>]`, `berth jobs run <name>`): the
/// rule of service names.
pub fn job_name(name: &str) -> Result<(), NameError> {
    dns_label("job name", name, MAX_SERVICE_NAME)
}

/// Longest volume name (`[services.<name>.volumes]`).
pub const MAX_VOLUME_NAME: usize = 40;

/// Volume names in `berth.toml` and the CLI: a lowercase DNS label of
/// 1-40 characters (the engine's volume name is derived from it, the
/// project, the environment and the server's identity).
pub fn volume_name(name: &str) -> Result<(), NameError> {
    dns_label("volume name", name, MAX_VOLUME_NAME)
}

/// A POSIX environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn variable_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty {
            what: "variable name",
        });
    }
    if name.len() > 256 {
        return Err(NameError::TooLong {
            what: "variable name",
            name: name.chars().take(32).collect(),
            max: 256,
        });
    }
    let b = name.as_bytes();
    let ok = (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    if !ok {
        return Err(NameError::NotPosix {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// A variable value: no NUL, at most 64 KiB.
pub fn variable_value(name: &str, value: &str) -> Result<(), NameError> {
    if value.contains('\0') {
        return Err(NameError::NulInValue {
            name: name.to_string(),
        });
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(NameError::ValueTooLong {
            name: name.to_string(),
            len: value.len(),
        });
    }
    Ok(())
}

/// Normalise a hostname as the edge matches it: lowercase, without port
/// and trailing dot.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim();
    let h = match h.rfind(':') {
        Some(i) if !h.ends_with(']') && h[i + 1..].bytes().all(|c| c.is_ascii_digit()) => &h[..i],
        _ => h,
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// A hostname a user routes (custom domains, external routes).
pub fn hostname(name: &str) -> Result<String, NameError> {
    let what = "hostname";
    let bad = |reason| NameError::BadHostname {
        what,
        name: name.to_string(),
        reason,
    };
    let h = name.trim_end_matches('.').to_ascii_lowercase();
    if h.is_empty() {
        return Err(NameError::Empty { what });
    }
    if h.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    for (i, label) in h.split('.').enumerate() {
        if label == "*" && i == 0 {
            continue;
        }
        if label.is_empty() || label.len() > 63 {
            return Err(bad("each label must be 1 to 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label must not start or end with '-'"));
        }
        if !label
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            return Err(bad("only letters, digits, '-' and '.' are allowed"));
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        assert!(project_name("shop").is_ok());
        assert!(project_name("shop-2").is_ok());
        for bad in [
            "",
            "Shop",
            "2shop",
            "shop-",
            "sh_op",
            "shop.x",
            &"a".repeat(41),
        ] {
            assert!(project_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            project_name("").unwrap_err().to_string(),
            "project name must not be empty"
        );
    }

    #[test]
    fn service_names_are_dns_labels_up_to_63() {
        for good in [
            "web",
            "api-v2",
            "a",
            "w0rker",
            &"a".repeat(40),
            &"a".repeat(63),
        ] {
            assert!(service_name(good).is_ok(), "{good}");
        }
        // (name, words in the error)
        let bad: &[(&str, &str)] = &[
            ("", "must not be empty"),
            ("Web", "lowercase letters"),
            ("my_app", "lowercase letters"),
            ("-a", "lowercase letters"),
            ("a-", "lowercase letters"),
            ("1a", "starting with a letter"),
            ("a.b", "lowercase letters"),
            ("wéb", "lowercase letters"),
            (&"a".repeat(64), "longer than 63 characters"),
        ];
        for (name, words) in bad {
            let e = service_name(name).expect_err(name).to_string();
            assert!(e.starts_with("service name"), "{e}");
            assert!(e.contains(words), "{name:?}: {e}");
        }
    }

    #[test]
    fn long_labels_are_fitted_stably() {
        assert_eq!(fit_label("shop", 63), "shop");
        assert_eq!(fit_label(&"a".repeat(63), 63), "a".repeat(63));
        let long = format!("{}-{}", "a".repeat(50), "b".repeat(30));
        let f = fit_label(&long, 63);
        assert_eq!(f.len(), 63);
        assert!(f.starts_with(&"a".repeat(50)), "{f}");
        assert_eq!(f, fit_label(&long, 63), "stable");
        // Pinned: the hash must not change between versions, or every
        // long hostname would move.
        assert_eq!(&f[54..], "-tj2kr69y", "{f}");
        assert_ne!(f, fit_label(&format!("{long}c"), 63));
        // No "--" where the cut falls on a '-'.
        let cut = format!("{}-{}", "a".repeat(53), "b".repeat(30));
        let f = fit_label(&cut, 63);
        assert!(!f.contains("--") && f.len() <= 63, "{f}");
        assert!(dns_label("label", &f, 63).is_ok());
    }

    #[test]
    fn variable_names_follow_posix() {
        for good in ["A", "_", "DATABASE_URL", "a1", "_X_2"] {
            assert!(variable_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1A", "A-B", "A=B", "A B", "A\0", "É"] {
            assert!(variable_name(bad).is_err(), "{bad:?}");
        }
        assert!(variable_name("A=B")
            .unwrap_err()
            .to_string()
            .contains("POSIX"));
    }

    #[test]
    fn variable_values() {
        assert!(variable_value("K", "").is_ok());
        assert!(variable_value("K", &"x".repeat(MAX_VALUE_BYTES)).is_ok());
        let e = variable_value("K", &"x".repeat(MAX_VALUE_BYTES + 1)).unwrap_err();
        assert!(e.to_string().contains("64 KiB"));
        assert!(matches!(
            variable_value("K", "a\0b"),
            Err(NameError::NulInValue { .. })
        ));
    }

    #[test]
    fn hosts() {
        assert_eq!(normalize_host("Shop.Example.COM.:8080"), "shop.example.com");
        assert_eq!(normalize_host("shop.localhost"), "shop.localhost");
        assert_eq!(hostname("App.Example.com.").unwrap(), "app.example.com");
        assert!(hostname("*.example.com").is_ok());
        for bad in ["", "a..b", "-a.com", "a_b.com", "a.*.com", &"a".repeat(64)] {
            assert!(hostname(bad).is_err(), "{bad:?}");
        }
    }
}
