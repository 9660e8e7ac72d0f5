//! [`TestCa`]: a throwaway certificate authority (rcgen) for TLS and mTLS upstreams.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A CA that issues server and client certificates for tests.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A PEM certificate chain and its PEM private key.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A self-signed certificate for `names` (a listener's), written to `dir` as `<stem>.pem` and
/// `<stem>.key`; returns both paths.
pub fn write_self_signed(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names).expect("self-signed certificate");
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, certified.cert.pem()).expect("write certificate");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write key");
    (cert, key)
}

// === impl TestCa ===

impl TestCa {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { cert, key }
    }

    /// The CA certificate (PEM), to trust.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Issued {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with common name `name`.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("certificate params");
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/<stem>.pem` and returns its path.
    pub fn write_cert(&self, dir: &Path, stem: &str) -> PathBuf {
        let p = dir.join(format!("{stem}.pem"));
        std::fs::write(&p, self.cert_pem()).expect("write CA certificate");
        p
    }
}

// === impl Issued ===

impl Issued {
    /// Writes `dir/<stem>.pem` and `dir/<stem>.key`; returns (certificate, key) paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{stem}.pem"));
        let k = dir.join(format!("{stem}.key"));
        std::fs::write(&c, &self.cert_pem).expect("write certificate");
        std::fs::write(&k, &self.key_pem).expect("write key");
        (c, k)
    }
}
