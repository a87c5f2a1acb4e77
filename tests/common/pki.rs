//! Test certificates made with rcgen (on ring) in a temporary directory: a CA, and leaf certificates it signs
//! for 127.0.0.1 and localhost, good for both server and client authentication.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tempfile::TempDir;

pub struct Pki {
    pub dir: TempDir,
    name: String,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and key written as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA named `name`; its certificate is at [`Pki::ca_path`].
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("Portico test CA {name}"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate");
        std::fs::write(dir.path().join(format!("{name}-ca.pem")), ca.pem()).expect("write CA");
        Self { dir, name: name.to_string(), ca }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}-ca.pem", self.name))
    }

    /// A leaf for 127.0.0.1 and localhost, signed by this CA, written as `<leaf>.pem` and `<leaf>.key`.
    pub fn issue(&self, leaf: &str) -> Pair {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, leaf);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        let pair = Pair {
            cert: self.dir.path().join(format!("{leaf}.pem")),
            key: self.dir.path().join(format!("{leaf}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write certificate");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
        pair
    }
}
