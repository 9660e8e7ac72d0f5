//! PEM material: upstream TLS settings of a route, TLS on the databroker link and the
//! identity-JWT signing key.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::path::Path;
use std::sync::Arc;

use pingora::protocols::tls::CaType;
use pingora::utils::tls::{CertKey, WrappedX509};
use portcullis_databroker::grpc::{endpoint, ClientTls, ServerTls};
use url::Url;

use super::errors::Errors;
use super::runtime::{Services, UpstreamTls};
use super::schema;

/// TLS on the databroker link, both ends as far as this file configures them.
pub(super) struct LinkTls {
    /// For a proxy whose `databroker_service_url` is `https://`.
    pub(super) client: Option<ClientTls>,
    /// For a `databroker`'s gRPC listener.
    pub(super) server: Option<ServerTls>,
    /// Over every key's value and the files they name.
    pub(super) digest: u64,
}

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

/// The `grpc_tls_*`, `grpc_client_ca_file` and `databroker_tls_*` keys. One file may serve
/// both ends (the `services` role is often set from the environment), so each end's keys are
/// read whatever the role; settings that could not take effect are errors.
pub(super) fn databroker_link_tls(
    file: &mut schema::File,
    base: &Path,
    services: Option<Services>,
    service_url: Option<&Url>,
    errors: &mut Errors,
) -> LinkTls {
    let mut hasher = DefaultHasher::new();
    let server = grpc_server_tls(file, base, errors, &mut hasher);
    let client = databroker_client_tls(file, base, service_url, errors, &mut hasher);
    // A databroker that shares its file with its proxies serves what they expect.
    if let (Some(Services::Databroker), Some(url)) = (services, service_url) {
        match (url.scheme(), &server) {
            ("https", None) if !errors.0.iter().any(|e| e.path.starts_with("grpc_")) => errors
                .push(
                    "grpc_tls_certificate_file",
                    "is required: databroker_service_url is https://, so this databroker must \
                     serve TLS",
                ),
            ("http", Some(_)) => errors.push(
                "databroker_service_url",
                "is http:// but this databroker serves TLS (grpc_tls_certificate_file); use \
                 https://",
            ),
            _ => {}
        }
    }
    LinkTls {
        client,
        server,
        digest: hasher.finish(),
    }
}

/// `grpc_tls_certificate_file` + `grpc_tls_key_file` (both or neither) and
/// `grpc_client_ca_file` (which needs them: client certificates are asked for in the TLS
/// handshake).
fn grpc_server_tls(
    file: &mut schema::File,
    base: &Path,
    errors: &mut Errors,
    hasher: &mut DefaultHasher,
) -> Option<ServerTls> {
    const CERT: &str = "grpc_tls_certificate_file";
    const KEY: &str = "grpc_tls_key_file";
    const CA: &str = "grpc_client_ca_file";
    let cert_file = errors.opt(CERT, file.grpc_tls_certificate_file.take());
    let key_file = errors.opt(KEY, file.grpc_tls_key_file.take());
    let ca_file = errors.opt(CA, file.grpc_client_ca_file.take());
    let (cert_file, key_file) = match (cert_file, key_file) {
        (Some(c), Some(k)) => (c, k),
        (cert, key) => {
            if cert.is_some() {
                errors.push(KEY, format!("is required when {CERT} is set"));
            }
            if key.is_some() {
                errors.push(CERT, format!("is required when {KEY} is set"));
            }
            if ca_file.is_some() && cert.is_none() && key.is_none() {
                errors.push(
                    CA,
                    format!("needs {CERT} and {KEY}: client certificates are asked for in TLS"),
                );
            }
            return None;
        }
    };
    let cert = read_pem_file(errors, CERT, base, &cert_file)
        .filter(|pem| pem_certificates(errors, CERT, pem).is_some());
    let key = read_pem_file(errors, KEY, base, &key_file)
        .filter(|pem| pem_private_key(errors, KEY, pem).is_some());
    let ca = match ca_file {
        Some(f) => Some(
            read_pem_file(errors, CA, base, &f)
                .filter(|pem| pem_certificates(errors, CA, pem).is_some())?,
        ),
        None => None,
    };
    let (cert, key) = (cert?, key?);
    (&cert, &key, &ca).hash(hasher);
    if let Err(e) = ServerTls::new(&cert, &key, None) {
        errors.push(KEY, format!("unusable with {CERT}: {e}"));
        return None;
    }
    ServerTls::new(&cert, &key, ca.as_deref())
        .map_err(|e| errors.push(CA, format!("unusable: {e}")))
        .ok()
}

/// The `databroker_tls_*` keys: how a proxy verifies an `https://` databroker and, with
/// `databroker_tls_client_cert_file` + `databroker_tls_client_key_file`, proves itself.
fn databroker_client_tls(
    file: &mut schema::File,
    base: &Path,
    service_url: Option<&Url>,
    errors: &mut Errors,
    hasher: &mut DefaultHasher,
) -> Option<ClientTls> {
    const CA: &str = "databroker_tls_ca_file";
    const NAME: &str = "databroker_tls_server_name";
    const CERT: &str = "databroker_tls_client_cert_file";
    const KEY: &str = "databroker_tls_client_key_file";
    let ca_file = errors.opt(CA, file.databroker_tls_ca_file.take());
    let server_name = errors.opt(NAME, file.databroker_tls_server_name.take());
    let cert_file = errors.opt(CERT, file.databroker_tls_client_cert_file.take());
    let key_file = errors.opt(KEY, file.databroker_tls_client_key_file.take());
    let url = match service_url {
        Some(url) if url.scheme() == "https" => url,
        _ => {
            let set = [
                (CA, ca_file.is_some()),
                (NAME, server_name.is_some()),
                (CERT, cert_file.is_some()),
                (KEY, key_file.is_some()),
            ];
            for (key, _) in set.iter().filter(|(_, set)| *set) {
                errors.push(
                    *key,
                    "is set but databroker_service_url is not an https:// URL",
                );
            }
            return None;
        }
    };
    // Which key a failed check of the roots and the name is about.
    let blame = match (&ca_file, &server_name) {
        (None, _) => CA,
        (Some(_), Some(_)) => NAME,
        (Some(_), None) => "databroker_service_url",
    };
    let mut tls = ClientTls::new();
    let mut complete = true;
    if let Some(f) = ca_file {
        match read_pem_file(errors, CA, base, &f)
            .filter(|pem| pem_certificates(errors, CA, pem).is_some())
        {
            Some(pem) => {
                pem.hash(hasher);
                tls = tls.ca(pem);
            }
            None => complete = false,
        }
    }
    if let Some(name) = server_name {
        if name.is_empty() || url::Host::parse(&name).is_err() {
            errors.push(NAME, format!("{name:?} is not a host name"));
            complete = false;
        }
        name.hash(hasher);
        tls = tls.server_name(name);
    }
    let identity = match (cert_file, key_file) {
        (None, None) => None,
        (Some(_), None) => {
            errors.push(KEY, format!("is required when {CERT} is set"));
            return None;
        }
        (None, Some(_)) => {
            errors.push(CERT, format!("is required when {KEY} is set"));
            return None;
        }
        (Some(c), Some(k)) => {
            let cert = read_pem_file(errors, CERT, base, &c)
                .filter(|pem| pem_certificates(errors, CERT, pem).is_some());
            let key = read_pem_file(errors, KEY, base, &k)
                .filter(|pem| pem_private_key(errors, KEY, pem).is_some());
            Some((cert?, key?))
        }
    };
    if !complete {
        return None;
    }
    // Checks the roots (the system's when no CA file is given) and the name.
    if let Err(e) = endpoint(url.as_str(), Some(&tls)) {
        errors.push(blame, e.to_string());
        return None;
    }
    if let Some((cert, key)) = identity {
        (&cert, &key).hash(hasher);
        tls = tls.identity(&cert, &key);
        if let Err(e) = endpoint(url.as_str(), Some(&tls)) {
            errors.push(KEY, format!("unusable with {CERT}: {e}"));
            return None;
        }
    }
    Some(tls)
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
