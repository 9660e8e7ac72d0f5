//! PEM material: upstream TLS settings of a route and the identity-JWT signing key.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::path::Path;
use std::sync::Arc;

use pingora::protocols::tls::CaType;
use pingora::utils::tls::{CertKey, WrappedX509};

use super::errors::Errors;
use super::runtime::UpstreamTls;
use super::schema;

/// Loads a route's upstream TLS settings (`None` when it sets none of the `tls_*` keys).
pub(super) fn upstream_tls(
    errors: &mut Errors,
    path: &str,
    base: &Path,
    raw: &mut schema::Route,
) -> Option<Arc<UpstreamTls>> {
    let key = |k: &str| format!("{path}.{k}");
    let skip_verify = errors.or(&key("tls_skip_verify"), raw.tls_skip_verify.take(), false);
    let ca_file = errors.opt(&key("tls_custom_ca_file"), raw.tls_custom_ca_file.take());
    let server_name = errors.opt(&key("tls_server_name"), raw.tls_server_name.take());
    let cert_file = errors.opt(
        &key("tls_client_cert_file"),
        raw.tls_client_cert_file.take(),
    );
    let key_file = errors.opt(&key("tls_client_key_file"), raw.tls_client_key_file.take());
    if !skip_verify
        && ca_file.is_none()
        && server_name.is_none()
        && cert_file.is_none()
        && key_file.is_none()
    {
        return None;
    }
    let mut hasher = DefaultHasher::new();
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
    let ca = ca_file.and_then(|file| custom_ca(errors, path, base, &file, &mut hasher));
    let client_cert = client_cert(errors, path, base, cert_file, key_file, &mut hasher);
    Some(Arc::new(UpstreamTls {
        skip_verify,
        server_name,
        ca,
        client_cert,
        group_key: hasher.finish(),
    }))
}

/// `tls_custom_ca_file`: the certificates trusted instead of the system roots.
fn custom_ca(
    errors: &mut Errors,
    path: &str,
    base: &Path,
    file: &str,
    hasher: &mut DefaultHasher,
) -> Option<Arc<CaType>> {
    let k = format!("{path}.tls_custom_ca_file");
    let pem = read_pem_file(errors, &k, base, file)?;
    pem.hash(hasher);
    let ders = pem_certificates(errors, &k, &pem)?;
    let list: Vec<WrappedX509> = ders
        .into_iter()
        .map(|der| WrappedX509::new(der, pingora::utils::tls::parse_x509))
        .collect();
    Some(Arc::<CaType>::from(list))
}

/// `tls_client_cert_file` + `tls_client_key_file`: the client certificate (both or neither).
fn client_cert(
    errors: &mut Errors,
    path: &str,
    base: &Path,
    cert_file: Option<String>,
    key_file: Option<String>,
    hasher: &mut DefaultHasher,
) -> Option<Arc<CertKey>> {
    let ck = format!("{path}.tls_client_cert_file");
    let kk = format!("{path}.tls_client_key_file");
    match (cert_file, key_file) {
        (None, None) => None,
        (Some(_), None) => {
            errors.push(kk, "is required when tls_client_cert_file is set");
            None
        }
        (None, Some(_)) => {
            errors.push(ck, "is required when tls_client_key_file is set");
            None
        }
        (Some(cert), Some(private)) => {
            let certs = read_pem_file(errors, &ck, base, &cert)
                .and_then(|pem| pem_certificates(errors, &ck, &pem));
            let private = read_pem_file(errors, &kk, base, &private)
                .and_then(|pem| pem_private_key(errors, &kk, &pem));
            match (certs, private) {
                (Some(certs), Some(private)) => {
                    certs.hash(hasher);
                    Some(Arc::new(CertKey::new(certs, private)))
                }
                _ => None,
            }
        }
    }
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

/// The DER private key of a PEM file.
fn pem_private_key(errors: &mut Errors, path: &str, pem: &[u8]) -> Option<Vec<u8>> {
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(k)) => Some(k.secret_der().to_vec()),
        Ok(None) => {
            errors.push(path, "holds no PEM private key");
            None
        }
        Err(e) => {
            errors.push(path, format!("invalid PEM: {e}"));
            None
        }
    }
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
