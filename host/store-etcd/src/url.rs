//! `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`: where a store lives on etcd.

use std::fmt;
use std::str::FromStr;

/// A parsed store address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `http://HOST:PORT` of each member.
    pub endpoints: Vec<String>,
    /// The key prefix every key of the store lives under, ending in `/`.
    /// Default: `runbox/`.
    pub prefix: String,
}

/// Why a store address does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store address {url:?}: {message} (expected etcd://HOST:PORT[,HOST:PORT…][/PREFIX])")]
pub struct UrlError {
    /// The address.
    pub url: String,
    /// What is wrong.
    pub message: String,
}

impl FromStr for EtcdUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        let bad = |message: &str| UrlError {
            url: text.to_string(),
            message: message.to_string(),
        };
        let rest = text
            .strip_prefix("etcd://")
            .ok_or_else(|| bad("it does not start with etcd://"))?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, prefix)) => (hosts, prefix),
            None => (rest, ""),
        };
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let (name, port) = host
                .rsplit_once(':')
                .ok_or_else(|| bad(&format!("member `{host}` has no :PORT")))?;
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b));
            if !valid_name || port.parse::<u16>().is_err() {
                return Err(bad(&format!("member `{host}` is not HOST:PORT")));
            }
            endpoints.push(format!("http://{host}"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.len() > 128
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        {
            return Err(bad(
                "the prefix is up to 128 of letters, digits, `.`, `_`, `-` and `/`",
            ));
        }
        let prefix = if prefix.is_empty() {
            "runbox/".to_string()
        } else {
            format!("{prefix}/")
        };
        Ok(EtcdUrl { endpoints, prefix })
    }
}

impl fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect();
        write!(f, "etcd://{}/{}", hosts.join(","), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        let url: EtcdUrl = "etcd://127.0.0.1:2379,10.0.0.2:2379/team/runbox"
            .parse()
            .unwrap();
        assert_eq!(
            url.endpoints,
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(url.prefix, "team/runbox/");
        assert_eq!(
            url.to_string(),
            "etcd://127.0.0.1:2379,10.0.0.2:2379/team/runbox/"
        );
        assert_eq!("etcd://h:1".parse::<EtcdUrl>().unwrap().prefix, "runbox/");
        for bad in [
            "http://h:1",
            "etcd://h",
            "etcd://h:x",
            "etcd://:1",
            "etcd://h:1/a b",
            "etcd://h:1,",
        ] {
            assert!(bad.parse::<EtcdUrl>().is_err(), "{bad}");
        }
    }
}
