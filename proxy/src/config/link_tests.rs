//! The databroker link's TLS keys: what loads, and every misuse named by its key.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use super::*;

const SECRET: &str = "q2Yd7n0cZ2Jm0Zy3bWl4ZC1zZWNyZXQtb2YtMzItYnk=";

/// PEM files in a temporary directory: a CA, a server certificate from it for 127.0.0.1, a
/// client certificate from it, and a key that belongs to neither.
struct Files {
    dir: tempfile::TempDir,
}

// === impl Files ===

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issue = |stem: &str, names: &[&str]| {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            std::fs::write(dir.path().join(format!("{stem}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        };
        issue("server", &["127.0.0.1", "databroker.internal"]);
        issue("client", &["proxy"]);
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(
            dir.path().join("stray.key"),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not PEM").unwrap();
        Files { dir }
    }

    /// A configuration of `services` with these extra top-level keys; `{dir}` is the files'
    /// directory.
    fn config(&self, services: &str, extra: &str) -> String {
        format!(
            r#"
services = "{services}"
insecure_server = true
address = "127.0.0.1:8443"
authenticate_service_url = "https://authenticate.example.com"
shared_secret = "{SECRET}"
cookie_secret = "{SECRET}"
{}
"#,
            extra.replace("{dir}", &self.dir.path().display().to_string())
        )
    }

    fn load(&self, services: &str, extra: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml(&self.config(services, extra), Vec::new(), Path::new("."))
    }

    fn errors(&self, services: &str, extra: &str) -> Vec<String> {
        match self.load(services, extra) {
            Ok(_) => panic!("expected errors for\n{extra}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }
}

const SERVER: &str = r#"grpc_tls_certificate_file = "{dir}/server.pem"
grpc_tls_key_file = "{dir}/server.key""#;

#[test]
fn both_ends_of_the_link_load_their_tls() {
    let f = Files::new();
    let plain = f.load("databroker", "").unwrap();
    assert!(plain.databroker.grpc_tls.is_none() && plain.databroker.service_tls.is_none());

    let server = f
        .load(
            "databroker",
            &format!("{SERVER}\ngrpc_client_ca_file = \"{{dir}}/ca.pem\""),
        )
        .unwrap();
    assert!(server.databroker.grpc_tls.is_some());
    assert_ne!(server.databroker.tls_digest, plain.databroker.tls_digest);

    let client = f
        .load(
            "proxy",
            r#"databroker_service_url = "https://127.0.0.1:5443"
databroker_tls_ca_file = "{dir}/ca.pem"
databroker_tls_server_name = "databroker.internal"
databroker_tls_client_cert_file = "{dir}/client.pem"
databroker_tls_client_key_file = "{dir}/client.key""#,
        )
        .unwrap();
    let tls = format!("{:?}", client.databroker.service_tls.unwrap());
    assert!(tls.contains("databroker.internal"), "{tls}");
    assert!(!tls.contains("PRIVATE KEY"), "Debug shows no key: {tls}");

    // One file for both ends: an https:// URL beside the databroker's own certificate.
    let shared = format!("databroker_service_url = \"https://127.0.0.1:5443\"\ndatabroker_tls_ca_file = \"{{dir}}/ca.pem\"\n{SERVER}");
    assert!(f.load("databroker", &shared).is_ok());
    assert!(f.load("proxy", &shared).is_ok());
}

#[test]
fn link_tls_errors_name_their_keys() {
    let f = Files::new();
    let cases: &[(&str, &str, &str)] = &[
        (
            "databroker",
            r#"grpc_tls_certificate_file = "{dir}/server.pem""#,
            "grpc_tls_key_file: is required when grpc_tls_certificate_file is set",
        ),
        (
            "databroker",
            r#"grpc_tls_key_file = "{dir}/server.key""#,
            "grpc_tls_certificate_file: is required when grpc_tls_key_file is set",
        ),
        (
            "databroker",
            r#"grpc_client_ca_file = "{dir}/ca.pem""#,
            "grpc_client_ca_file: needs grpc_tls_certificate_file and grpc_tls_key_file",
        ),
        (
            "databroker",
            r#"grpc_tls_certificate_file = "{dir}/server.pem"
grpc_tls_key_file = "{dir}/stray.key""#,
            "grpc_tls_key_file: unusable with grpc_tls_certificate_file",
        ),
        (
            "databroker",
            r#"grpc_tls_certificate_file = "{dir}/junk.pem"
grpc_tls_key_file = "{dir}/server.key""#,
            "grpc_tls_certificate_file: holds no PEM certificate",
        ),
        (
            "databroker",
            &format!("{SERVER}\ngrpc_client_ca_file = \"{{dir}}/missing.pem\""),
            "grpc_client_ca_file: cannot read",
        ),
        (
            "databroker",
            r#"databroker_service_url = "https://127.0.0.1:5443""#,
            "grpc_tls_certificate_file: is required: databroker_service_url is https://",
        ),
        (
            "databroker",
            &format!("databroker_service_url = \"http://127.0.0.1:5443\"\n{SERVER}"),
            "databroker_service_url: is http:// but this databroker serves TLS",
        ),
        (
            "proxy",
            r#"databroker_service_url = "http://127.0.0.1:5443"
databroker_tls_ca_file = "{dir}/ca.pem""#,
            "databroker_tls_ca_file: is set but databroker_service_url is not an https:// URL",
        ),
        (
            "proxy",
            r#"databroker_tls_server_name = "databroker.internal""#,
            "databroker_tls_server_name: is set but databroker_service_url is not an https:// URL",
        ),
        (
            "proxy",
            r#"databroker_service_url = "https://127.0.0.1:5443"
databroker_tls_client_cert_file = "{dir}/client.pem""#,
            "databroker_tls_client_key_file: is required when databroker_tls_client_cert_file is set",
        ),
        (
            "proxy",
            r#"databroker_service_url = "https://127.0.0.1:5443"
databroker_tls_client_key_file = "{dir}/client.key""#,
            "databroker_tls_client_cert_file: is required when databroker_tls_client_key_file is set",
        ),
        (
            "proxy",
            r#"databroker_service_url = "https://127.0.0.1:5443"
databroker_tls_ca_file = "{dir}/ca.pem"
databroker_tls_client_cert_file = "{dir}/client.pem"
databroker_tls_client_key_file = "{dir}/stray.key""#,
            "databroker_tls_client_key_file: unusable with databroker_tls_client_cert_file",
        ),
        (
            "proxy",
            r#"databroker_service_url = "https://127.0.0.1:5443"
databroker_tls_server_name = "not a name""#,
            "databroker_tls_server_name: \"not a name\" is not a host name",
        ),
        (
            "proxy",
            r#"databroker_service_url = "https://127.0.0.1:5443"
databroker_tls_ca_file = "{dir}/junk.pem""#,
            "databroker_tls_ca_file: holds no PEM certificate",
        ),
        (
            "proxy",
            r#"databroker_service_url = "grpc://127.0.0.1:5443""#,
            "databroker_service_url: scheme \"grpc\" is not supported",
        ),
    ];
    for (services, extra, want) in cases {
        let errors = f.errors(services, extra);
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "services = {services}, keys\n{extra}\nwant {want:?}, got {errors:#?}"
        );
    }
}
