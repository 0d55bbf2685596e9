//! Reading `amqp://` and `amqps://` URLs the way kombu reads them, and opening the
//! connection they name.
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
//!
//! # TLS (`amqps://`)
//!
//! `amqps://` connects with rustls (the `ring` provider). The TLS query options are
//! kombu's, as for `rediss://`, and override the fields of
//! [`AmqpBrokerOptions::tls`](super::AmqpBrokerOptions::tls) ([`TlsOptions`]):
//!
//! - `ssl_ca_certs=/path/ca.pem`: trust the CAs of this PEM file (and only them,
//!   as Python's `ssl` does with `cafile`) instead of the system's trust roots.
//! - `ssl_certfile=/path/client.pem` and `ssl_keyfile=/path/client.key`: present this
//!   client certificate chain (mutual TLS, e.g. RabbitMQ's `fail_if_no_peer_cert`);
//!   without `ssl_keyfile` the key is read from `ssl_certfile`.
//! - `ssl_cert_reqs=required` (the default; also `optional`, `CERT_REQUIRED`,
//!   `CERT_OPTIONAL`, which verify the same way, as Python's client sockets do)
//!   verifies the server's certificate chain and that it names the URL's host.
//!   `ssl_cert_reqs=none` (`CERT_NONE`) **verifies nothing: the connection is
//!   encrypted but anyone in the middle can read and change it (and learn the
//!   password).** Use it only against a test broker; prefer `ssl_ca_certs`. Each
//!   connection opened so logs a warning.
//!
//! Without any of them the server is verified against the system's trust roots.
//! The files are read each time a connection is opened, so renewed certificates are
//! picked up on the next reconnect; an unreadable or invalid file is a
//! [`BrokerError::InvalidUrl`] naming the option and the file (never the password).
//! The options are refused on `amqp://`, which is never encrypted. With any of them,
//! a TCP connect plus TLS handshake that takes longer than `connection_timeout`
//! fails.
//!
//! Tested against a private RabbitMQ with a TLS listener and a CA made at test time:
//! `tests/amqp_tls.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lapin::tcp::{AMQPUriTcpExt, RustlsConnector, RustlsConnectorConfig, TLSConfig};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Connection, ConnectionProperties};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{AmqpBrokerOptions, QueueType};
use crate::{redact, BrokerError};

/// How an `amqps://` connection checks the server (kombu's `ssl_cert_reqs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertReqs {
    /// Verify the server's certificate chain and host name (`required`, `optional`).
    #[default]
    Required,
    /// Verify nothing (`none`). **Insecure**: encrypted, but open to anyone in the
    /// middle, who can read the password and every message. For test brokers only.
    None,
}

/// The TLS settings of an `amqps://` connection (kombu's `ssl_*` URL options; see
/// the [module docs](self)). The default verifies the server against the system's
/// trust roots and presents no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// `ssl_cert_reqs`: whether the server is verified.
    pub cert_reqs: CertReqs,
    /// `ssl_ca_certs`: PEM file of the CAs to trust instead of the system's.
    pub ca_certs: Option<PathBuf>,
    /// `ssl_certfile`: PEM client certificate chain (mutual TLS).
    pub certfile: Option<PathBuf>,
    /// `ssl_keyfile`: PEM private key of the client certificate (default: read from
    /// `ssl_certfile`).
    pub keyfile: Option<PathBuf>,
}

/// A parsed broker URL.
#[derive(Debug, Clone)]
pub(crate) struct AmqpTarget {
    /// What lapin connects to.
    pub uri: AMQPUri,
    /// `amqp://user@host:port/vhost`, for logs.
    pub description: String,
    /// The TLS settings (`amqps://` only).
    pub tls: Option<TlsOptions>,
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
    let mut tls_options = Vec::new();
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
            "ssl_cert_reqs" => {
                options.tls.cert_reqs = match percent_decode(value)
                    .map_err(|e| invalid(url, e))?
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "required" | "cert_required" | "optional" | "cert_optional" => {
                        CertReqs::Required
                    }
                    "none" | "cert_none" => CertReqs::None,
                    other => {
                        return Err(invalid(
                            url,
                            format!(
                                "ssl_cert_reqs={other:?}: expected required, optional or none \
                                 (or CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE)"
                            ),
                        ))
                    }
                };
                tls_options.push(key);
            }
            "ssl_ca_certs" | "ssl_certfile" | "ssl_keyfile" => {
                let path = PathBuf::from(percent_decode(value).map_err(|e| invalid(url, e))?);
                if path.as_os_str().is_empty() {
                    return Err(invalid(url, format!("{key} needs a file path")));
                }
                match key {
                    "ssl_ca_certs" => options.tls.ca_certs = Some(path),
                    "ssl_certfile" => options.tls.certfile = Some(path),
                    _ => options.tls.keyfile = Some(path),
                }
                tls_options.push(key);
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
                         prefetch_count, max_priority, queue_type, queue_expires, \
                         ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile)"
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
    if scheme == AMQPScheme::AMQP {
        if let Some(option) = tls_options.first() {
            return Err(invalid(
                url,
                format!("{option} needs amqps://; amqp:// connections are not encrypted"),
            ));
        }
        if options.tls != TlsOptions::default() {
            return Err(invalid(
                url,
                "TLS options are set but amqp:// connections are not encrypted; use amqps://",
            ));
        }
    }
    if options.tls.keyfile.is_some() && options.tls.certfile.is_none() {
        return Err(invalid(url, "ssl_keyfile needs ssl_certfile"));
    }
    let description = format!("{scheme_name}://{username}@{host}:{port}/{vhost}");
    let tls = (scheme == AMQPScheme::AMQPS).then(|| options.tls.clone());
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
        tls,
    })
}

impl AmqpTarget {
    fn invalid_file(&self, option: &str, path: &Path, what: impl std::fmt::Display) -> BrokerError {
        BrokerError::InvalidUrl {
            url: self.description.clone(),
            reason: format!("{option} {}: {what}", path.display()),
        }
    }

    fn read_file(&self, option: &str, path: &Path) -> Result<Vec<u8>, BrokerError> {
        std::fs::read(path)
            .map_err(|error| self.invalid_file(option, path, format!("cannot read it: {error}")))
    }

    fn read_certificates(
        &self,
        option: &str,
        path: &Path,
    ) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
        let pem = self.read_file(option, path)?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| self.invalid_file(option, path, format!("invalid PEM: {error}")))?;
        if certificates.is_empty() {
            return Err(self.invalid_file(option, path, "no PEM certificate in it"));
        }
        Ok(certificates)
    }

    /// The client certificate chain and key of `ssl_certfile`/`ssl_keyfile`.
    fn client_identity(
        &self,
        tls: &TlsOptions,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, BrokerError> {
        let Some(certfile) = &tls.certfile else {
            return Ok(None);
        };
        let chain = self.read_certificates("ssl_certfile", certfile)?;
        let (option, keyfile) = match &tls.keyfile {
            Some(keyfile) => ("ssl_keyfile", keyfile),
            None => ("ssl_certfile", certfile),
        };
        let pem = self.read_file(option, keyfile)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|error| match error {
            rustls::pki_types::pem::Error::NoItemsFound => {
                self.invalid_file(option, keyfile, "no PEM private key in it")
            }
            other => {
                self.invalid_file(option, keyfile, format!("invalid PEM private key: {other}"))
            }
        })?;
        Ok(Some((chain, key)))
    }

    /// The TLS connector for this target's options, reading their files now; `None`
    /// for `amqp://`, and for `amqps://` without options (lapin's own connector then
    /// verifies against the system's trust roots).
    pub(crate) fn tls_connector(&self) -> Result<Option<RustlsConnector>, BrokerError> {
        let Some(tls) = self.tls.as_ref().filter(|t| **t != TlsOptions::default()) else {
            return Ok(None);
        };
        let identity = self.client_identity(tls)?;
        let mismatch = |error: &dyn std::fmt::Display| {
            let certfile = tls.certfile.as_deref().unwrap_or(Path::new(""));
            self.invalid_file(
                "ssl_certfile",
                certfile,
                format!("the client certificate and key are not usable together: {error}"),
            )
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| BrokerError::Connection(Box::new(error)))?;
        let builder = match (tls.cert_reqs, &tls.ca_certs) {
            (CertReqs::None, _) => {
                tracing::warn!(
                    broker = %self.description,
                    "ssl_cert_reqs=none: the server's certificate is not verified; anyone in \
                     the middle can read and change this connection"
                );
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            }
            (CertReqs::Required, Some(ca_certs)) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in self.read_certificates("ssl_ca_certs", ca_certs)? {
                    roots.add(certificate).map_err(|error| {
                        self.invalid_file(
                            "ssl_ca_certs",
                            ca_certs,
                            format!("not a usable CA certificate: {error}"),
                        )
                    })?;
                }
                builder.with_root_certificates(roots)
            }
            (CertReqs::Required, None) => {
                // Only a client certificate was asked for: the system's roots,
                // loaded as lapin loads them.
                let config = RustlsConnectorConfig::new_with_native_certs()
                    .map_err(|error| BrokerError::Connection(Box::new(error)))?;
                let connector = match identity {
                    Some((chain, key)) => config
                        .connector_with_single_cert(chain, key)
                        .map_err(|error| mismatch(&error))?,
                    None => config
                        .connector_with_no_client_auth()
                        .map_err(|error| BrokerError::Connection(Box::new(error)))?,
                };
                return Ok(Some(connector));
            }
        };
        let config = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| mismatch(&error))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Some(RustlsConnector::from(config)))
    }

    /// Opens the connection: lapin's own connector for `amqp://` and for `amqps://`
    /// without TLS options, else a TCP connection upgraded with this target's rustls
    /// configuration (within `connection_timeout`).
    pub(crate) async fn connect(
        &self,
        properties: ConnectionProperties,
    ) -> Result<Connection, BrokerError> {
        let Some(connector) = self.tls_connector()? else {
            return Connection::connect_uri(self.uri.clone(), properties)
                .await
                .map_err(|error| BrokerError::Connection(Box::new(error)));
        };
        let runtime = lapin::runtime::default_runtime()
            .map_err(|error| BrokerError::Connection(Box::new(error)))?;
        let timeout = Duration::from_millis(self.uri.query.connection_timeout.unwrap_or(10_000));
        Connection::connector(
            self.uri.clone(),
            runtime,
            async move |uri: AMQPUri, runtime| {
                let host = uri.authority.host.clone();
                let plain = AMQPUri {
                    scheme: AMQPScheme::AMQP,
                    ..uri
                };
                let handshake = async {
                    plain
                        .connect_with_config_async(TLSConfig::default(), &runtime)
                        .await?
                        .into_rustls(&connector, &host)
                        .await
                };
                let stream = match tokio::time::timeout(timeout, handshake).await {
                    Ok(stream) => stream,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no TLS connection within {timeout:?}"),
                    )),
                };
                Ok(stream?)
            },
            properties,
        )
        .await
        .map_err(|error| BrokerError::Connection(Box::new(error)))
    }
}

/// `ssl_cert_reqs=none`: accepts any server certificate (the handshake signatures
/// are still checked, so the session is encrypted, but with whoever answered).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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

    #[test]
    fn kombus_ssl_options_configure_tls() {
        let mut options = AmqpBrokerOptions::default();
        let target = parse(
            "amqps://u:pw@rabbit/v?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=%2Fetc%2Fca.pem\
             &ssl_certfile=/c.pem&ssl_keyfile=/c.key&prefetch_count=4",
            &mut options,
        )
        .expect("parses");
        let tls = target.tls.expect("amqps has TLS settings");
        assert_eq!(tls.cert_reqs, CertReqs::Required);
        assert_eq!(tls.ca_certs.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(tls.certfile.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(tls.keyfile.as_deref(), Some(Path::new("/c.key")));
        assert_eq!(options.prefetch_count, Some(4));
        for (value, expected) in [
            ("required", CertReqs::Required),
            ("optional", CertReqs::Required),
            ("CERT_OPTIONAL", CertReqs::Required),
            ("none", CertReqs::None),
            ("CERT_NONE", CertReqs::None),
        ] {
            let target = parse(
                &format!("amqps://h/?ssl_cert_reqs={value}"),
                &mut AmqpBrokerOptions::default(),
            )
            .expect("ssl_cert_reqs");
            assert_eq!(target.tls.map(|t| t.cert_reqs), Some(expected), "{value}");
        }
        // Plain AMQP has none; amqps:// without options keeps lapin's own connector
        // (system roots); the insecure mode needs no files.
        let plain = parse("amqp://h", &mut AmqpBrokerOptions::default()).expect("parses");
        assert!(plain.tls.is_none());
        assert!(plain.tls_connector().expect("no TLS").is_none());
        let default = parse("amqps://h", &mut AmqpBrokerOptions::default()).expect("parses");
        assert!(default.tls_connector().expect("system roots").is_none());
        let insecure = parse(
            "amqps://h/?ssl_cert_reqs=none",
            &mut AmqpBrokerOptions::default(),
        )
        .expect("parses");
        assert!(insecure
            .tls_connector()
            .expect("no files to read")
            .is_some());
    }

    #[test]
    fn url_ssl_options_override_the_programmatic_ones() {
        let mut options = AmqpBrokerOptions::default();
        options.tls.ca_certs = Some(PathBuf::from("/from/code.pem"));
        options.tls.certfile = Some(PathBuf::from("/client.pem"));
        let target = parse("amqps://h/?ssl_ca_certs=/from/url.pem", &mut options).expect("parses");
        let tls = target.tls.expect("TLS settings");
        assert_eq!(tls.ca_certs.as_deref(), Some(Path::new("/from/url.pem")));
        assert_eq!(tls.certfile.as_deref(), Some(Path::new("/client.pem")));
        // TLS settings in code with a plain URL would silently not encrypt: refused.
        let mut options = AmqpBrokerOptions::default();
        options.tls.cert_reqs = CertReqs::None;
        assert!(parse("amqp://h", &mut options).is_err());
    }

    #[test]
    fn misplaced_or_malformed_ssl_options_are_refused() {
        for bad in [
            "amqp://h/?ssl_ca_certs=/ca.pem",
            "amqp://h/?ssl_cert_reqs=none",
            "amqps://h/?ssl_cert_reqs=maybe",
            "amqps://h/?ssl_ca_certs=",
            "amqps://h/?ssl_keyfile=/k.pem",
            "amqps://h/?ssl_ca_certs=%zz",
        ] {
            match parse(bad, &mut AmqpBrokerOptions::default()) {
                Err(BrokerError::InvalidUrl { .. }) => {}
                other => panic!("{bad}: expected InvalidUrl, got {other:?}"),
            }
        }
    }

    #[test]
    fn unreadable_or_invalid_certificate_files_are_named() {
        let reason = |url: &str| match parse(url, &mut AmqpBrokerOptions::default())
            .expect("parses")
            .tls_connector()
        {
            Err(BrokerError::InvalidUrl { url, reason }) => {
                assert!(!url.contains("secret"), "{url}");
                assert!(!reason.contains("secret"), "{reason}");
                reason
            }
            other => panic!("{url}: expected a named file error, got {other:?}"),
        };
        let missing = reason("amqps://u:secret@h/?ssl_ca_certs=/nonexistent/celeriac-ca.pem");
        assert!(
            missing.contains("ssl_ca_certs /nonexistent/celeriac-ca.pem"),
            "{missing}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        let not_pem = reason(&format!(
            "amqps://u:secret@h/?ssl_ca_certs={}",
            garbage.display()
        ));
        assert!(
            not_pem.contains(&garbage.display().to_string())
                && not_pem.contains("no PEM certificate"),
            "{not_pem}"
        );
        let bad_client = reason(&format!(
            "amqps://u:secret@h/?ssl_cert_reqs=none&ssl_certfile={}",
            garbage.display()
        ));
        assert!(bad_client.starts_with("ssl_certfile"), "{bad_client}");
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let invalid = reason(&format!(
            "amqps://u:secret@h/?ssl_ca_certs={}",
            broken.display()
        ));
        assert!(invalid.contains("broken.pem"), "{invalid}");
    }
}
