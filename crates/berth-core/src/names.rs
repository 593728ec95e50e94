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

/// Project names become hostnames and container names: DNS labels of at
/// most 40 characters.
pub fn project_name(name: &str) -> Result<(), NameError> {
    dns_label("project name", name, 40)
}

/// Environment names (`production`, `staging`, `pr-42`).
pub fn environment_name(name: &str) -> Result<(), NameError> {
    dns_label("environment name", name, 30)
}

/// Service names from berth.toml.
pub fn service_name(name: &str) -> Result<(), NameError> {
    dns_label("service name", name, 30)
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
