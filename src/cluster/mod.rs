//! One farm across many hosts on etcd: each job slot (a unit) runs on
//! exactly one live member. `placement` chooses a unit's member, `claims`
//! is the pure claim state machine, `messages` the typed protocol between
//! the supervisor and its agent, `agent` the process that talks to etcd.

pub mod agent;
pub mod claims;
pub mod etcd;
pub mod link;
pub mod messages;
pub mod placement;
pub mod tls;
pub mod writers;

use std::fmt;

/// `--cluster etcd://HOST:PORT[,HOST:PORT...]/FARM_NAME` (`etcds://`: TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    pub endpoints: Vec<String>,
    pub farm: String,
    /// `etcds://`: etcd is spoken to over TLS.
    pub tls: bool,
}

impl ClusterUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (rest, tls) = match (text.strip_prefix("etcd://"), text.strip_prefix("etcds://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => {
                return Err(format!(
                    "{text:?}: a cluster is etcd://HOST:PORT[,HOST:PORT...]/FARM_NAME (etcds:// for TLS)"
                ))
            }
        };
        let (hosts, farm) = rest
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: the farm's name is missing (etcd://HOST:PORT/FARM_NAME)"))?;
        let farm = farm.trim_end_matches('/');
        if farm.is_empty()
            || farm.len() > 128
            || !farm.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!("{text:?}: the farm's name {farm:?} must be 1-128 letters, digits, '.', '_' or '-'"));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let (name, port) = host
                .rsplit_once(':')
                .ok_or_else(|| format!("{text:?}: {host:?} needs a port (HOST:PORT; etcd's is usually 2379)"))?;
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b"/@?#".contains(&b)) {
                return Err(format!("{text:?}: {host:?} is not HOST:PORT"));
            }
            match port.parse::<u16>() {
                Ok(p) if p > 0 => endpoints.push(host.to_owned()),
                _ => return Err(format!("{text:?}: {port:?} in {host:?} is not a port (1-65535)")),
            }
        }
        Ok(ClusterUrl { endpoints, farm: farm.to_owned(), tls })
    }
}

impl fmt::Display for ClusterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "etcds" } else { "etcd" };
        write!(f, "{scheme}://{}/{}", self.endpoints.join(","), self.farm)
    }
}

/// A member's name: unique in its farm, part of etcd keys and of status.
pub fn check_member_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err(format!("cluster member name {name:?} must be 1-253 printable characters without spaces or '/'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls() {
        let ok = |t: &str, e: &[&str], f: &str, tls: bool| {
            let url = ClusterUrl::parse(t);
            assert_eq!(
                url,
                Ok(ClusterUrl { endpoints: e.iter().map(|s| s.to_string()).collect(), farm: f.into(), tls })
            );
            assert_eq!(url.unwrap().to_string(), t.trim_end_matches('/'));
        };
        ok("etcd://127.0.0.1:2379/farm", &["127.0.0.1:2379"], "farm", false);
        ok("etcd://a:1,b:2,[::1]:2379/my-farm.v2/", &["a:1", "b:2", "[::1]:2379"], "my-farm.v2", false);
        ok("etcds://etcd.lrpm.svc:2379/orders", &["etcd.lrpm.svc:2379"], "orders", true);
        for bad in [
            "http://a:1/f",
            "etcdss://a:1/f",
            "etcd://a:1",
            "etcd://a:1/",
            "etcd://a/f",
            "etcd://a:0/f",
            "etcd://a:99999/f",
            "etcd://:1/f",
            "etcd://a:1,/f",
            "etcd://a:1/f/g",
            "etcd://a:1/f g",
            "etcd://u@a:1/f",
        ] {
            let e = ClusterUrl::parse(bad).unwrap_err();
            assert!(e.contains(bad) || e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn member_names() {
        assert!(check_member_name("web-1.pod").is_ok());
        for bad in ["", "a b", "a/b", "a\nb", &"x".repeat(254)] {
            assert!(check_member_name(bad).is_err(), "{bad:?}");
        }
    }
}
