//! Reading `amqp://` and `amqps://` URLs the way kombu reads them.
//!
//! `amqp://user:password@host:port/vhost?option=value`: user and password default to
//! `guest`, the port to 5672 (`amqps`: 5671), the virtual host is the path after the
//! first `/`, percent-decoded, and `/` when empty (so `amqp://h//`, `amqp://h/` and
//! `amqp://h` all name the vhost `/`, as in kombu; `amqp://h/%2f` too).
//!
//! Query options: `heartbeat` (seconds, default 60), `connection_timeout` (ms,
//! default 10,000) go to the connection; `prefetch_count`, `max_priority`,
//! `queue_type` (`classic` or `quorum`) and `queue_expires` (ms) override
//! [`AmqpBrokerOptions`](super::AmqpBrokerOptions). Any other option is an error.

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};

use super::{AmqpBrokerOptions, QueueType};
use crate::{redact, BrokerError};

/// A parsed broker URL.
#[derive(Debug, Clone)]
pub(crate) struct AmqpTarget {
    /// What lapin connects to.
    pub uri: AMQPUri,
    /// `amqp://user@host:port/vhost`, for logs.
    pub description: String,
}

fn invalid(url: &str, reason: impl Into<String>) -> BrokerError {
    BrokerError::InvalidUrl {
        url: redact(url),
        reason: reason.into(),
    }
}

/// Decodes `%XX` escapes.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("a truncated %-escape in {text:?}"))?;
            let byte = u8::from_str_radix(hex, 16)
                .map_err(|_| format!("an invalid %-escape %{hex} in {text:?}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

fn number<T: std::str::FromStr>(url: &str, key: &str, value: &str) -> Result<T, BrokerError> {
    value
        .parse()
        .map_err(|_| invalid(url, format!("{key}={value:?} is not a valid number")))
}

/// Parses `url`, applying its query options to `options`.
pub(crate) fn parse(url: &str, options: &mut AmqpBrokerOptions) -> Result<AmqpTarget, BrokerError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid(url, "expected amqp://[user:password@]host[:port]/[vhost]"))?;
    let (scheme, default_port) = match scheme {
        "amqp" => (AMQPScheme::AMQP, 5672),
        "amqps" => (AMQPScheme::AMQPS, 5671),
        other => return Err(invalid(url, format!("unknown scheme {other:?}"))),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, path),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        Some(info) => {
            let (user, password) = info.split_once(':').unwrap_or((info, ""));
            (
                percent_decode(user).map_err(|e| invalid(url, e))?,
                percent_decode(password).map_err(|e| invalid(url, e))?,
            )
        }
        None => ("guest".to_string(), "guest".to_string()),
    };
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid(url, "an unclosed [ in the host"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => number(url, "port", port)?,
            None => default_port,
        };
        (host.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), number(url, "port", port)?),
            None => (hostport.to_string(), default_port),
        }
    };
    let host = if host.is_empty() {
        "localhost".to_string()
    } else {
        host
    };
    let vhost = match percent_decode(path).map_err(|e| invalid(url, e))? {
        empty if empty.is_empty() => "/".to_string(),
        vhost => vhost,
    };

    let mut connection_query = AMQPQueryString {
        heartbeat: Some(60),
        connection_timeout: Some(10_000),
        ..AMQPQueryString::default()
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "heartbeat" => connection_query.heartbeat = Some(number(url, key, value)?),
            "connection_timeout" => {
                connection_query.connection_timeout = Some(number(url, key, value)?)
            }
            "prefetch_count" => options.prefetch_count = Some(number(url, key, value)?),
            "max_priority" | "x-max-priority" => {
                options.max_priority = Some(number(url, key, value)?)
            }
            "queue_expires" => {
                options.queue_expires =
                    Some(std::time::Duration::from_millis(number(url, key, value)?))
            }
            "queue_type" => {
                options.queue_type = match value {
                    "classic" => QueueType::Classic,
                    "quorum" => QueueType::Quorum,
                    other => {
                        return Err(invalid(
                            url,
                            format!("queue_type={other:?}: expected classic or quorum"),
                        ))
                    }
                }
            }
            other => {
                return Err(invalid(
                    url,
                    format!(
                        "unknown option {other:?} (known: heartbeat, connection_timeout, \
                         prefetch_count, max_priority, queue_type, queue_expires)"
                    ),
                ))
            }
        }
    }
    let scheme_name = if scheme == AMQPScheme::AMQPS {
        "amqps"
    } else {
        "amqp"
    };
    let description = format!("{scheme_name}://{username}@{host}:{port}/{vhost}");
    Ok(AmqpTarget {
        uri: AMQPUri {
            scheme,
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo { username, password },
                host,
                port,
            },
            vhost,
            query: connection_query,
        },
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vhost(url: &str) -> String {
        parse(url, &mut AmqpBrokerOptions::default())
            .expect("parses")
            .uri
            .vhost
    }

    #[test]
    fn vhosts_are_read_as_kombu_reads_them() {
        assert_eq!(vhost("amqp://guest:guest@127.0.0.1:5672//"), "/");
        assert_eq!(vhost("amqp://127.0.0.1:5672/"), "/");
        assert_eq!(vhost("amqp://127.0.0.1"), "/");
        assert_eq!(vhost("amqp://h/%2f"), "/");
        assert_eq!(vhost("amqp://h/tenant"), "tenant");
    }

    #[test]
    fn credentials_ports_and_options_are_read() {
        let mut options = AmqpBrokerOptions::default();
        let target = parse(
            "amqps://u%40x:p%3Aw@rabbit:1234/v?prefetch_count=8&max_priority=10&queue_type=quorum&heartbeat=5",
            &mut options,
        )
        .expect("parses");
        let auth = &target.uri.authority;
        assert_eq!(
            (
                auth.userinfo.username.as_str(),
                auth.userinfo.password.as_str()
            ),
            ("u@x", "p:w")
        );
        assert_eq!((auth.host.as_str(), auth.port), ("rabbit", 1234));
        assert_eq!(target.uri.query.heartbeat, Some(5));
        assert_eq!(options.prefetch_count, Some(8));
        assert_eq!(options.max_priority, Some(10));
        assert_eq!(options.queue_type, QueueType::Quorum);
        assert!(!target.description.contains("p:w"));
        let plain = parse("amqp://h", &mut AmqpBrokerOptions::default()).expect("parses");
        assert_eq!(plain.uri.authority.port, 5672);
        assert_eq!(plain.uri.authority.userinfo.username, "guest");
    }

    #[test]
    fn unknown_options_and_bad_numbers_are_refused() {
        for bad in [
            "amqp://h/?nope=1",
            "amqp://h:port/",
            "amqp://h/?queue_type=stream",
        ] {
            assert!(
                parse(bad, &mut AmqpBrokerOptions::default()).is_err(),
                "{bad}"
            );
        }
    }
}
