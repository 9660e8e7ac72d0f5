//! TLS to PostgreSQL as libpq's `sslmode` and `sslrootcert` connection parameters ask, with
//! rustls.
//!
//! tokio-postgres knows the modes `disable`, `prefer` and `require` only and checks no
//! certificate itself, so [`split`] takes both parameters out of the connection string and
//! [`connector`] builds a rustls configuration that does what the mode promises:
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | not checked |
//! | `require` | always | not checked |
//! | `verify-ca` | always | must chain to `sslrootcert` |
//! | `verify-full` | always | must chain to `sslrootcert` and name the host |
//!
//! `sslrootcert` is a PEM file of trusted certificates, or `system` for the operating
//! system's roots; without it the verify modes use the system's roots (where libpq would read
//! `~/.postgresql/root.crt`). As in libpq, `require` with an `sslrootcert` file checks the
//! chain like `verify-ca`, and `sslrootcert=system` needs `verify-full`.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::Error;

/// libpq's `sslmode`, less `allow` (plain first, TLS only when the server insists), which
/// tokio-postgres cannot do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Where trusted certificates come from (`sslrootcert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RootCert {
    /// The operating system's store (`sslrootcert=system`).
    System,
    /// A PEM file.
    File(PathBuf),
}

/// What a connection string asks of TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TlsParams {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
}

/// One `key=value` of a connection string: where it is, and its key and value decoded.
struct Param {
    span: Range<usize>,
    key: String,
    value: String,
}

/// Accepts any certificate, for the modes that encrypt without authenticating the server. The
/// handshake signature is still checked: the server holds the key of the certificate it sent.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

/// Checks the chain but not the host name (`verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

// === impl SslMode ===

impl SslMode {
    fn parse(value: &str) -> Result<Self, Error> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(invalid(format!(
                    "sslmode {other:?} is not supported \
                     (use disable, prefer, require, verify-ca or verify-full)"
                )))
            }
        })
    }

    /// The mode tokio-postgres is told: it negotiates TLS, [`connector`] verifies.
    fn negotiation(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }
}

// === impl TlsParams ===

impl TlsParams {
    /// The certificate check this asks for: `None` (anything goes) or the roots, and whether
    /// the host name must match too.
    fn verification(&self) -> Option<(&RootCert, bool)> {
        const SYSTEM: &RootCert = &RootCert::System;
        match (self.mode, &self.root_cert) {
            (SslMode::VerifyFull, roots) => Some((roots.as_ref().unwrap_or(SYSTEM), true)),
            (SslMode::VerifyCa, roots) => Some((roots.as_ref().unwrap_or(SYSTEM), false)),
            (SslMode::Require, Some(file @ RootCert::File(_))) => Some((file, false)),
            _ => None,
        }
    }
}

/// Splits `sslmode` and `sslrootcert` off `connection` (a URL or `key=value` words): returns
/// the string for tokio-postgres, with the `sslmode` it understands, and what TLS must do.
pub(super) fn split(connection: &str) -> Result<(String, TlsParams), Error> {
    let is_url = ["postgres://", "postgresql://"]
        .iter()
        .any(|scheme| connection.starts_with(scheme));
    let params = if is_url {
        url_params(connection)?
    } else {
        keyword_params(connection)?
    };
    let mut tls = TlsParams {
        mode: SslMode::Prefer,
        root_cert: None,
    };
    let mut kept = Vec::new();
    for param in params {
        match param.key.as_str() {
            "sslmode" => tls.mode = SslMode::parse(&param.value)?,
            "sslrootcert" if param.value == "system" => tls.root_cert = Some(RootCert::System),
            "sslrootcert" => tls.root_cert = Some(RootCert::File(param.value.into())),
            _ => kept.push(&connection[param.span]),
        }
    }
    if tls.root_cert == Some(RootCert::System) && tls.mode != SslMode::VerifyFull {
        return Err(invalid(
            "sslrootcert=system needs sslmode=verify-full (the system's roots vouch for host names)",
        ));
    }
    let mode = format!("sslmode={}", tls.mode.negotiation());
    kept.push(&mode);
    let rebuilt = if is_url {
        let base = connection.split_once('?').map_or(connection, |(b, _)| b);
        format!("{base}?{}", kept.join("&"))
    } else {
        kept.join(" ")
    };
    Ok((rebuilt, tls))
}

/// The rustls connector for `tls`; reads `sslrootcert` now, so a missing or empty file is an
/// error at start.
pub(super) fn connector(tls: &TlsParams) -> Result<MakeRustlsConnect, Error> {
    let provider = Arc::new(crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match tls.verification() {
        None => Arc::new(AnyCertificate(provider.clone())),
        Some((roots, check_name)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(roots)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| invalid(format!("sslrootcert: {e}")))?;
            if check_name {
                webpki as Arc<dyn ServerCertVerifier>
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn root_store(roots: &RootCert) -> Result<RootCertStore, Error> {
    let certs: Vec<CertificateDer<'static>> = match roots {
        RootCert::System => rustls_native_certs::load_native_certs()
            .map_err(|e| invalid(format!("sslrootcert: the system's roots: {e}")))?,
        RootCert::File(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| invalid(format!("sslrootcert {}: {e}", path.display())))?;
            rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("sslrootcert {}: {e}", path.display())))?
        }
    };
    let mut store = RootCertStore::empty();
    let (_, unusable) = store.add_parsable_certificates(certs);
    if store.is_empty() {
        let source = match roots {
            RootCert::System => "the system's store".to_owned(),
            RootCert::File(path) => path.display().to_string(),
        };
        return Err(invalid(format!(
            "sslrootcert: no usable certificate in {source} ({unusable} unusable)"
        )));
    }
    Ok(store)
}

/// The parameters in a URL's query (`?sslmode=require&...`), percent-decoded.
fn url_params(url: &str) -> Result<Vec<Param>, Error> {
    let Some(start) = url.find('?').map(|q| q + 1) else {
        return Ok(Vec::new());
    };
    let mut params = Vec::new();
    let mut at = start;
    for raw in url[start..].split('&') {
        let span = at..at + raw.len();
        at = span.end + 1;
        if raw.is_empty() {
            continue;
        }
        let (key, value) = raw.split_once('=').unwrap_or((raw, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|e| invalid(format!("connection string: {key}: {e}")))
        };
        params.push(Param {
            span,
            key: decode(key)?,
            value: decode(value)?,
        });
    }
    Ok(params)
}

/// The `key = value` words of a libpq keyword/value string; a value may be single-quoted,
/// and a backslash takes the next character literally.
fn keyword_params(s: &str) -> Result<Vec<Param>, Error> {
    let mut params = Vec::new();
    let mut chars = s.char_indices().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_space(&mut chars);
        let Some(&(start, _)) = chars.peek() else {
            return Ok(params);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_space(&mut chars);
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(invalid(format!(
                "connection string: missing \"=\" after {key:?}"
            )));
        }
        skip_space(&mut chars);
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut end = s.len();
        let mut closed = !quoted;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, escaped)) => value.push(escaped),
                    None => value.push('\\'),
                },
                '\'' if quoted => {
                    end = i + 1;
                    closed = true;
                    break;
                }
                c if c.is_whitespace() && !quoted => {
                    end = i;
                    break;
                }
                c => value.push(c),
            }
        }
        if !closed {
            return Err(invalid(format!(
                "connection string: unterminated quoted value of {key:?}"
            )));
        }
        params.push(Param {
            span: start..end,
            key,
            value,
        });
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidArgument(message.into())
}

// === impl AnyCertificate ===

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        crypto::verify_tls12_signature(
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// === impl ChainOnly ===

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        use tokio_rustls::rustls::Error::InvalidCertificate;
        // webpki checks the name last, once the chain holds: a name error means a good chain.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(connection: &str) -> (String, SslMode, Option<RootCert>) {
        let (rest, tls) = split(connection).unwrap();
        (rest, tls.mode, tls.root_cert)
    }

    #[test]
    fn a_url_loses_its_tls_parameters_and_keeps_the_rest() {
        let (rest, mode, roots) = mode_of(
            "postgres://u:p%40ss@db.example:5433/sessions?application_name=x&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca%20dir%2Froot.pem&connect_timeout=3",
        );
        assert_eq!(
            rest,
            "postgres://u:p%40ss@db.example:5433/sessions?application_name=x&connect_timeout=3\
             &sslmode=require"
        );
        assert_eq!(mode, SslMode::VerifyFull);
        assert_eq!(roots, Some(RootCert::File("/etc/ca dir/root.pem".into())));
        assert!(rest.parse::<tokio_postgres::Config>().is_ok());
    }

    #[test]
    fn a_url_without_parameters_prefers_tls_like_libpq() {
        let (rest, mode, roots) = mode_of("postgresql://postgres@127.0.0.1/db");
        assert_eq!(rest, "postgresql://postgres@127.0.0.1/db?sslmode=prefer");
        assert_eq!((mode, roots), (SslMode::Prefer, None));
    }

    #[test]
    fn keyword_strings_keep_quoted_values() {
        let (rest, mode, roots) = mode_of(
            r"host=db  password='it\'s' sslrootcert = '/tmp/my ca.pem' options='-c x=\'y z\'' sslmode=verify-ca",
        );
        assert_eq!(mode, SslMode::VerifyCa);
        assert_eq!(roots, Some(RootCert::File("/tmp/my ca.pem".into())));
        assert_eq!(
            rest,
            r"host=db password='it\'s' options='-c x=\'y z\'' sslmode=require"
        );
        let (rest, _) = split(r"host=db options='-c x=\'y z\''").unwrap();
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_options(), Some("-c x='y z'"));
    }

    #[test]
    fn bad_modes_and_strings_are_clear_errors() {
        for (connection, says) in [
            (
                "postgres://h/db?sslmode=allow",
                "sslmode \"allow\" is not supported",
            ),
            (
                "host=h sslmode=verify",
                "sslmode \"verify\" is not supported",
            ),
            ("host=h sslmode", "missing \"=\" after \"sslmode\""),
            (
                "host=h password='x",
                "unterminated quoted value of \"password\"",
            ),
            (
                "postgres://h/db?sslmode=require&sslrootcert=system",
                "sslrootcert=system needs sslmode=verify-full",
            ),
        ] {
            let err = split(connection).unwrap_err().to_string();
            assert!(err.contains(says), "{connection}: {err}");
        }
    }

    #[test]
    fn each_mode_checks_what_libpq_checks() {
        let params = |mode, root_cert| TlsParams { mode, root_cert };
        let file = RootCert::File("/ca.pem".into());
        assert_eq!(params(SslMode::Prefer, None).verification(), None);
        assert_eq!(params(SslMode::Require, None).verification(), None);
        assert_eq!(
            params(SslMode::Require, Some(file.clone())).verification(),
            Some((&file, false))
        );
        assert_eq!(
            params(SslMode::VerifyCa, None).verification(),
            Some((&RootCert::System, false))
        );
        assert_eq!(
            params(SslMode::VerifyFull, Some(file.clone())).verification(),
            Some((&file, true))
        );
    }

    #[test]
    fn an_unreadable_or_empty_root_file_is_an_error_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for (path, says) in [(missing, "No such file"), (empty, "no usable certificate")] {
            let tls = TlsParams {
                mode: SslMode::VerifyFull,
                root_cert: Some(RootCert::File(path.clone())),
            };
            let err = connector(&tls).err().expect("an error").to_string();
            assert!(err.contains(says) && err.contains("sslrootcert"), "{err}");
        }
    }
}
