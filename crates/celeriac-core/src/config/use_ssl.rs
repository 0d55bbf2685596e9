//! Celery's `broker_use_ssl` and `redis_backend_use_ssl`: TLS for a `redis://` or
//! `amqp://` URL given beside it instead of in it, as Django projects configure
//! Celery. `true` turns TLS on with the system's CAs; a table sets kombu's options,
//! spelled as for Redis (`ssl_cert_reqs`, `ssl_ca_certs`, `ssl_certfile`,
//! `ssl_keyfile`, `ssl_check_hostname`) or as for py-amqp (`cert_reqs`, `ca_certs`,
//! `certfile`, `keyfile`). `cert_reqs` is `required` / `optional` / `none`, the
//! `CERT_*` names, or Python's numbers (`ssl.CERT_REQUIRED` is 2).
//!
//! The setting is applied by rewriting the URL: `redis://` becomes `rediss://`,
//! `amqp://` becomes `amqps://` (kombu's TLS port 5671 when the URL names no port,
//! as kombu does), and each option becomes the URL's `ssl_*` query option, unless
//! the URL already has it (the URL wins).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::ConfigError;

/// `broker_use_ssl` / `redis_backend_use_ssl`: off (`false`, the default), on with
/// default verification (`true`), or kombu's TLS options.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum UseSsl {
    /// `false` or `true`.
    Flag(bool),
    /// A table of TLS options (TLS on).
    Options(SslOptions),
}

impl Default for UseSsl {
    fn default() -> Self {
        UseSsl::Flag(false)
    }
}

/// kombu's TLS options, by their Redis names.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SslOptions {
    /// `ssl_cert_reqs` (`cert_reqs`): `required`, `optional` or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_cert_reqs: Option<String>,
    /// `ssl_ca_certs` (`ca_certs`): PEM file of the CAs to trust.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_ca_certs: Option<String>,
    /// `ssl_certfile` (`certfile`): PEM client certificate chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_certfile: Option<String>,
    /// `ssl_keyfile` (`keyfile`): PEM key of the client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_keyfile: Option<String>,
    /// `ssl_check_hostname` (`check_hostname`); accepted for kombu's sake, host
    /// names are always checked when certificates are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl_check_hostname: Option<bool>,
}

const KNOWN: &str = "ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_check_hostname \
                     (or cert_reqs, ca_certs, certfile, keyfile, check_hostname)";

impl<'de> Deserialize<'de> for UseSsl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        UseSsl::from_value(value).map_err(serde::de::Error::custom)
    }
}

impl UseSsl {
    /// Reads the setting's value, naming what is wrong.
    fn from_value(value: Value) -> Result<UseSsl, String> {
        let table = match value {
            Value::Bool(on) => return Ok(UseSsl::Flag(on)),
            Value::Null => return Ok(UseSsl::Flag(false)),
            Value::Object(table) => table,
            other => {
                return Err(format!(
                    "expected true, false or a table of TLS options, got {other}"
                ))
            }
        };
        let mut options = SslOptions::default();
        for (key, value) in table {
            let name = key.strip_prefix("ssl_").unwrap_or(&key);
            let text = || match &value {
                Value::String(text) if !text.is_empty() => Ok(text.clone()),
                other => Err(format!("{key} must be a file path, got {other}")),
            };
            match name {
                "cert_reqs" => options.ssl_cert_reqs = Some(cert_reqs(&key, &value)?),
                "ca_certs" => options.ssl_ca_certs = Some(text()?),
                "certfile" => options.ssl_certfile = Some(text()?),
                "keyfile" => options.ssl_keyfile = Some(text()?),
                "check_hostname" => match value {
                    Value::Bool(check) => options.ssl_check_hostname = Some(check),
                    other => return Err(format!("{key} must be true or false, got {other}")),
                },
                _ => return Err(format!("unknown TLS option {key:?}; expected {KNOWN}")),
            }
        }
        Ok(UseSsl::Options(options))
    }

    /// Whether TLS is on.
    pub fn is_on(&self) -> bool {
        !matches!(self, UseSsl::Flag(false))
    }

    /// `url` with TLS on as this setting says (`setting` names it in errors): the
    /// TLS scheme and the options as `ssl_*` query options the URL does not have
    /// yet. Unchanged when off.
    pub fn apply(&self, url: &str, setting: &str) -> Result<String, ConfigError> {
        if !self.is_on() {
            return Ok(url.to_string());
        }
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let (scheme, rest) = match scheme {
            "redis" | "rediss" => ("rediss", rest.to_string()),
            "amqp" | "pyamqp" | "amqps" => ("amqps", rest.to_string()),
            other => {
                return Err(ConfigError::Invalid(format!(
                    "{setting} applies to redis:// and amqp:// URLs, not {other}://"
                )))
            }
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((before, query)) => (before.to_string(), query.to_string()),
            None => (rest, String::new()),
        };
        let mut pairs: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        if let UseSsl::Options(options) = self {
            let given = [
                ("ssl_cert_reqs", options.ssl_cert_reqs.clone()),
                ("ssl_ca_certs", options.ssl_ca_certs.clone()),
                ("ssl_certfile", options.ssl_certfile.clone()),
                ("ssl_keyfile", options.ssl_keyfile.clone()),
                (
                    "ssl_check_hostname",
                    // Only Redis URLs take it (kombu's Redis option).
                    options
                        .ssl_check_hostname
                        .filter(|_| scheme == "rediss")
                        .map(|check| check.to_string()),
                ),
            ];
            for (key, value) in given {
                let Some(value) = value else { continue };
                let present = pairs
                    .iter()
                    .any(|p| p.split_once('=').map_or(p.as_str(), |(k, _)| k) == key);
                if !present {
                    pairs.push(format!("{key}={}", percent_encode(&value)));
                }
            }
        }
        let mut rewritten = format!("{scheme}://{before_query}");
        if !pairs.is_empty() {
            rewritten.push('?');
            rewritten.push_str(&pairs.join("&"));
        }
        Ok(rewritten)
    }
}

/// `cert_reqs` as the URL option's word.
fn cert_reqs(key: &str, value: &Value) -> Result<String, String> {
    let word = match value {
        // Python's ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED.
        Value::Number(n) => match n.as_u64() {
            Some(0) => "none",
            Some(1) => "optional",
            Some(2) => "required",
            _ => return Err(format!("{key} must be 0, 1 or 2 (ssl.CERT_*), got {n}")),
        },
        Value::String(text) => match text.to_ascii_lowercase().as_str() {
            "required" | "cert_required" => "required",
            "optional" | "cert_optional" => "optional",
            "none" | "cert_none" => "none",
            _ => {
                return Err(format!(
                    "{key} must be required, optional or none (or CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE), got {text:?}"
                ))
            }
        },
        other => return Err(format!("{key} must be a word or a number, got {other}")),
    };
    Ok(word.to_string())
}

/// Percent-encodes everything of `text` but unreserved characters and `/`, for a
/// file path in a URL's query.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<UseSsl, String> {
        UseSsl::from_value(value)
    }

    #[test]
    fn off_leaves_the_url_alone() {
        let off = UseSsl::default();
        assert!(!off.is_on());
        assert_eq!(
            off.apply("redis://h:6379/0", "broker_use_ssl")
                .expect("valid"),
            "redis://h:6379/0"
        );
        assert_eq!(
            off.apply("sqlite://x.db", "broker_use_ssl").expect("valid"),
            "sqlite://x.db"
        );
    }

    #[test]
    fn true_switches_to_the_tls_scheme() {
        let on = parse(json!(true)).expect("valid");
        assert_eq!(
            on.apply("redis://:pw@h:6380/2", "broker_use_ssl")
                .expect("valid"),
            "rediss://:pw@h:6380/2"
        );
        assert_eq!(
            on.apply("amqp://u:p@h//?heartbeat=10", "broker_use_ssl")
                .expect("valid"),
            "amqps://u:p@h//?heartbeat=10"
        );
        let error = on
            .apply("sqlite://x.db", "broker_use_ssl")
            .expect_err("an error");
        assert!(error
            .to_string()
            .contains("broker_use_ssl applies to redis:// and amqp://"));
    }

    #[test]
    fn both_spellings_become_url_options_the_url_keeps_its_own() {
        let redis_style = parse(json!({
            "ssl_cert_reqs": 2,
            "ssl_ca_certs": "/etc/ssl/my ca.pem",
            "ssl_check_hostname": true,
        }))
        .expect("valid");
        assert_eq!(
            redis_style
                .apply("redis://h/0?ssl_cert_reqs=none", "broker_use_ssl")
                .expect("valid"),
            "rediss://h/0?ssl_cert_reqs=none&ssl_ca_certs=/etc/ssl/my%20ca.pem&ssl_check_hostname=true"
        );
        let amqp_style = parse(json!({
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": "/ca.pem",
            "certfile": "/c.pem",
            "keyfile": "/k.pem",
            "check_hostname": true,
        }))
        .expect("valid");
        assert_eq!(
            amqp_style.apply("amqp://h:5671//", "broker_use_ssl").expect("valid"),
            "amqps://h:5671//?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
        );
    }

    #[test]
    fn bad_options_are_named() {
        let unknown = parse(json!({"ssl_verify": true})).expect_err("an error");
        assert!(
            unknown.contains("unknown TLS option \"ssl_verify\""),
            "{unknown}"
        );
        let reqs = parse(json!({"cert_reqs": 7})).expect_err("an error");
        assert!(reqs.contains("0, 1 or 2"), "{reqs}");
        let word = parse(json!({"ssl_cert_reqs": "always"})).expect_err("an error");
        assert!(word.contains("required, optional or none"), "{word}");
        let path = parse(json!({"ssl_ca_certs": 3})).expect_err("an error");
        assert!(path.contains("file path"), "{path}");
        let kind = parse(json!("yes")).expect_err("an error");
        assert!(kind.contains("expected true, false or a table"), "{kind}");
    }
}
