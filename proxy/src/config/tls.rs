//! PEM material: upstream TLS settings of a route and the identity-JWT signing key.

use std::path::Path;
use std::sync::Arc;

use pingora::protocols::tls::CaType;
use pingora::utils::tls::{CertKey, WrappedX509};

use super::errors::Errors;
use super::runtime::UpstreamTls;
use super::schema::Field;

/// The `tls_*` keys of a route.
pub(super) struct TlsFields {
    pub(super) skip_verify: Field<bool>,
    pub(super) custom_ca_file: Field<String>,
    pub(super) server_name: Field<String>,
    pub(super) client_cert_file: Field<String>,
    pub(super) client_key_file: Field<String>,
}

/// Loads a route's upstream TLS settings (`None` when it sets none of the `tls_*` keys).
pub(super) fn upstream_tls(
    errors: &mut Errors,
    path: &str,
    base: &Path,
    f: TlsFields,
) -> Option<Arc<UpstreamTls>> {
    use std::hash::{Hash as _, Hasher as _};
    let key = |k: &str| format!("{path}.{k}");
    let skip_verify = errors.or(&key("tls_skip_verify"), f.skip_verify, false);
    let ca_file = errors.opt(&key("tls_custom_ca_file"), f.custom_ca_file);
    let server_name = errors.opt(&key("tls_server_name"), f.server_name);
    let cert_file = errors.opt(&key("tls_client_cert_file"), f.client_cert_file);
    let key_file = errors.opt(&key("tls_client_key_file"), f.client_key_file);
    if !skip_verify
        && ca_file.is_none()
        && server_name.is_none()
        && cert_file.is_none()
        && key_file.is_none()
    {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    skip_verify.hash(&mut hasher);
    server_name.hash(&mut hasher);

    if let Some(name) = &server_name {
        if name.is_empty() || url::Host::parse(name).is_err() {
            errors.push(
                key("tls_server_name"),
                format!("{name:?} is not a host name"),
            );
        }
    }
    let ca = ca_file.and_then(|file| {
        let k = key("tls_custom_ca_file");
        let pem = read_pem_file(errors, &k, base, &file)?;
        pem.hash(&mut hasher);
        let ders = pem_certificates(errors, &k, &pem)?;
        let list: Vec<WrappedX509> = ders
            .into_iter()
            .map(|der| WrappedX509::new(der, pingora::utils::tls::parse_x509))
            .collect();
        Some(Arc::<CaType>::from(list))
    });
    let client_cert = match (cert_file, key_file) {
        (None, None) => None,
        (Some(_), None) => {
            errors.push(
                key("tls_client_key_file"),
                "is required when tls_client_cert_file is set",
            );
            None
        }
        (None, Some(_)) => {
            errors.push(
                key("tls_client_cert_file"),
                "is required when tls_client_key_file is set",
            );
            None
        }
        (Some(cert), Some(private)) => {
            let ck = key("tls_client_cert_file");
            let kk = key("tls_client_key_file");
            let certs = read_pem_file(errors, &ck, base, &cert)
                .and_then(|pem| pem_certificates(errors, &ck, &pem));
            let private = read_pem_file(errors, &kk, base, &private).and_then(|pem| {
                match rustls_pemfile::private_key(&mut pem.as_slice()) {
                    Ok(Some(k)) => Some(k.secret_der().to_vec()),
                    Ok(None) => {
                        errors.push(&kk, "holds no PEM private key");
                        None
                    }
                    Err(e) => {
                        errors.push(&kk, format!("invalid PEM: {e}"));
                        None
                    }
                }
            });
            match (certs, private) {
                (Some(certs), Some(private)) => {
                    certs.hash(&mut hasher);
                    Some(Arc::new(CertKey::new(certs, private)))
                }
                _ => None,
            }
        }
    };
    Some(Arc::new(UpstreamTls {
        skip_verify,
        server_name,
        ca,
        client_cert,
        group_key: hasher.finish(),
    }))
}

fn read_pem_file(errors: &mut Errors, path: &str, base: &Path, file: &str) -> Option<Vec<u8>> {
    let p = base.join(file);
    match std::fs::read(&p) {
        Ok(b) => Some(b),
        Err(e) => {
            errors.push(path, format!("cannot read {}: {e}", p.display()));
            None
        }
    }
}

/// The DER certificates of a PEM file: at least one, each a parseable X.509 certificate.
fn pem_certificates(errors: &mut Errors, path: &str, pem: &[u8]) -> Option<Vec<Vec<u8>>> {
    use x509_parser::prelude::FromDer as _;
    let mut out = Vec::new();
    for item in rustls_pemfile::certs(&mut &pem[..]) {
        match item {
            Ok(der) => {
                if x509_parser::certificate::X509Certificate::from_der(der.as_ref()).is_err() {
                    errors.push(path, "holds a certificate that does not parse");
                    return None;
                }
                out.push(der.to_vec());
            }
            Err(e) => {
                errors.push(path, format!("invalid PEM: {e}"));
                return None;
            }
        }
    }
    if out.is_empty() {
        errors.push(path, "holds no PEM certificate");
        return None;
    }
    Some(out)
}

pub(super) fn signing_key(errors: &mut Errors, base: &Path, raw: String) -> Option<String> {
    use base64::Engine as _;
    let text = if raw.contains("-----BEGIN") {
        raw
    } else if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(raw.trim()) {
        match String::from_utf8(bytes) {
            Ok(s) if s.contains("-----BEGIN") => s,
            _ => {
                errors.push("signing_key", "base64 value does not hold a PEM key");
                return None;
            }
        }
    } else {
        let p = base.join(&raw);
        match std::fs::read_to_string(&p) {
            Ok(s) => s,
            Err(_) => {
                errors.push(
                    "signing_key",
                    "must be a PEM EC P-256 private key, base64 of one, or a file path",
                );
                return None;
            }
        }
    };
    match portcullis_auth::AssertionSigner::from_pem(&text) {
        Ok(_) => Some(text),
        Err(e) => {
            errors.push("signing_key", format!("unusable key: {e}"));
            None
        }
    }
}
