//! The image's `User` (`name`, `uid`, `name:group`, `uid:gid`) resolved
//! against the root's `/etc/passwd` and `/etc/group`.

/// Who the app runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from `/etc/group` membership).
    pub groups: Vec<u32>,
    pub home: String,
}

/// Why a user spec could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} not found in /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in /etc/group")]
    UnknownGroup(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 6).then_some(())?;
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// Resolves `spec` ("" = root). A numeric uid without a passwd entry runs
/// with gid = uid's entry's gid or 0 and home `/`, like Docker.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entry =
        passwd_entries(passwd).find(|e| e.name == user || user.parse::<u32>().ok() == Some(e.uid));
    let (uid, mut gid, home, name) = match (entry, user.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, e.home.to_owned(), Some(e.name.to_owned())),
        (None, Ok(uid)) => (uid, 0, "/".to_owned(), None),
        (None, Err(_)) => return Err(UserError::UnknownUser(user.to_owned())),
    };
    if let Some(g) = grp.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|(gname, _, _)| *gname == g)
                .map(|(_, id, _)| id)
                .ok_or_else(|| UserError::UnknownGroup(g.to_owned()))?,
        };
    }
    let mut groups = vec![gid];
    if let Some(name) = name {
        for (_, id, members) in group_entries(group) {
            if members.iter().any(|m| *m == name) && !groups.contains(&id) {
                groups.push(id);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 4).then_some(())?;
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbroken line\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nwww:x:33:app,other\n";

    #[test]
    fn empty_is_root() {
        let id = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn names_and_numbers_resolve() {
        let by_name = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!((by_name.uid, by_name.gid), (1000, 1000));
        assert_eq!(by_name.groups, vec![1000, 33]);
        assert_eq!(by_name.home, "/home/app");
        assert_eq!(resolve("1000", PASSWD, GROUP).unwrap(), by_name);
        let explicit = resolve("app:www", PASSWD, GROUP).unwrap();
        assert_eq!(explicit.gid, 33);
        let unknown_uid = resolve("4242:7", PASSWD, GROUP).unwrap();
        assert_eq!(
            (unknown_uid.uid, unknown_uid.gid, unknown_uid.home.as_str()),
            (4242, 7, "/")
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve("nobody", PASSWD, GROUP),
            Err(UserError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            resolve("app:nogroup", PASSWD, GROUP),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
    }
}
