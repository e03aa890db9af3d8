//! Whom a job's processes run as: `--user USER[:GROUP]` for the farm, the
//! `user` field per job. Names are resolved here, in the supervisor, when a
//! job (or the command line) is validated, and only numbers go down the
//! fork path: a lookup through NSS (files, LDAP, ...) between fork and the
//! worker's own code could block on a lock or a socket the parent held.

#![forbid(unsafe_code)]

use std::ffi::CString;
use std::sync::Arc;

use nix::unistd::{getgrouplist, Gid, Group, Uid, User};

/// A user to switch to, in numbers, with what its environment says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// As given (`www-data`, `nobody:nogroup`), for messages.
    pub spec: String,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's, as initgroups would set them,
    /// plus `gid`).
    pub groups: Vec<u32>,
    pub home: String,
}

/// Whether `text` has the shape `USER` or `USER:GROUP`: names or numeric
/// ids of 1 to 64 ASCII letters, digits and `._-@$`, not starting with `-`
/// (what useradd and the directory services accept, and nothing a log line
/// or an option parser could misread). The shape is all the PHP-side
/// validator checks; whether the names exist is the host's to say.
pub fn is_user_spec(text: &str) -> bool {
    let name_ok = |name: &str| {
        (1..=64).contains(&name.len())
            && !name.starts_with('-')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@$".contains(&b))
    };
    match text.split_once(':') {
        Some((user, group)) => name_ok(user) && name_ok(group),
        None => name_ok(text),
    }
}

fn numeric(text: &str) -> Option<u32> {
    text.bytes().all(|b| b.is_ascii_digit()).then(|| text.parse().ok()).flatten()
}

/// Looks `spec` (`USER` or `USER:GROUP`) up in the system's user and group
/// databases; without a group, the user's primary group. A numeric id that
/// names no entry is taken as is (a container's arbitrary uid), but then
/// the group must be given: there is no primary group to default to.
pub fn resolve(spec: &str) -> Result<Credentials, String> {
    if !is_user_spec(spec) {
        return Err(format!("'{spec}' is not USER or USER:GROUP"));
    }
    let (user_name, group_name) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let lookup = match User::from_name(user_name) {
        Ok(None) => match numeric(user_name) {
            Some(uid) => User::from_uid(Uid::from_raw(uid)).map(|found| found.ok_or(uid)),
            None => return Err(format!("no such user '{user_name}'")),
        },
        found => found.map(|found| found.ok_or(0)),
    };
    let user = match lookup {
        Ok(Ok(user)) => Some(user),
        Ok(Err(_)) => None,
        Err(e) => return Err(format!("cannot look up the user '{user_name}': {e}")),
    };
    let gid = match group_name {
        None => match &user {
            Some(user) => user.gid,
            None => {
                return Err(format!(
                    "uid {user_name} has no entry in the user database: give its group too, {user_name}:GROUP"
                ))
            }
        },
        Some(group_name) => match Group::from_name(group_name) {
            Ok(Some(group)) => group.gid,
            Ok(None) => match numeric(group_name) {
                Some(gid) => Gid::from_raw(gid),
                None => return Err(format!("no such group '{group_name}'")),
            },
            Err(e) => return Err(format!("cannot look up the group '{group_name}': {e}")),
        },
    };
    let Some(user) = user else {
        // No entry: no supplementary groups to look up, no home.
        let uid = numeric(user_name).unwrap_or_default();
        return Ok(Credentials {
            spec: spec.to_string(),
            user: user_name.to_string(),
            uid,
            gid: gid.as_raw(),
            groups: vec![gid.as_raw()],
            home: "/".to_string(),
        });
    };
    let c_name = CString::new(user.name.as_str()).map_err(|_| format!("'{}' holds a NUL byte", user.name))?;
    let groups = getgrouplist(&c_name, gid)
        .map_err(|e| format!("cannot list the groups of '{}': {e}", user.name))?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    Ok(Credentials {
        spec: spec.to_string(),
        user: user.name,
        uid: user.uid.as_raw(),
        gid: gid.as_raw(),
        groups,
        home: user.dir.to_string_lossy().into_owned(),
    })
}

/// How a `user` field is turned into credentials: by the system's
/// databases when the host can switch users (it runs as root), else
/// refused (`refuse_without_root`), or anything a test provides.
pub type UserResolver<'a> = &'a dyn Fn(&str) -> Result<Arc<Credentials>, String>;

/// The resolver of a farm or of `check`: switching users needs root.
pub fn system_resolver(host_is_root: bool) -> impl Fn(&str) -> Result<Arc<Credentials>, String> {
    move |spec: &str| {
        if !host_is_root {
            return Err(
                "lrpm-host does not run as root, so it cannot switch users (start it as root, or drop the field)"
                    .to_string(),
            );
        }
        resolve(spec).map(Arc::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_specs_are_names_with_an_optional_group() {
        for good in ["nobody", "www-data", "nobody:nogroup", "svc_1$", "a.b", "jo@corp", "1000:1000"] {
            assert!(is_user_spec(good), "{good}");
        }
        for bad in
            ["", ":", "nobody:", ":nogroup", "a:b:c", "no body", "no\u{a0}body", "-x", "a\n", "é", &"x".repeat(65)]
        {
            assert!(!is_user_spec(bad), "{bad:?}");
        }
    }

    #[test]
    fn resolves_root_and_refuses_unknown_names() {
        let root = resolve("root").unwrap();
        assert_eq!((root.uid, root.gid, root.user.as_str()), (0, 0, "root"));
        assert!(root.groups.contains(&0));
        assert!(resolve("root:root").is_ok());
        assert_eq!(resolve("no-such-user-lrpm").unwrap_err(), "no such user 'no-such-user-lrpm'");
        assert_eq!(resolve("root:no-such-group-lrpm").unwrap_err(), "no such group 'no-such-group-lrpm'");
        assert!(system_resolver(false)("root").unwrap_err().contains("does not run as root"));
    }

    #[test]
    fn numeric_ids_resolve_through_the_database_or_as_given() {
        let nobody = resolve("65534").unwrap();
        assert_eq!((nobody.user.as_str(), nobody.uid, nobody.gid), ("nobody", 65534, 65534));
        // No entry (a container's arbitrary uid): taken as is, with its group.
        let arbitrary = resolve("1000777:1000778").unwrap();
        assert_eq!((arbitrary.uid, arbitrary.gid, arbitrary.groups.clone()), (1_000_777, 1_000_778, vec![1_000_778]));
        assert_eq!((arbitrary.user.as_str(), arbitrary.home.as_str()), ("1000777", "/"));
        assert!(resolve("1000777").unwrap_err().contains("give its group too, 1000777:GROUP"));
        assert_eq!(resolve("99999999999").unwrap_err(), "no such user '99999999999'");
    }
}
