//! A throwaway certificate authority for tests: an rcgen CA, a leaf for every provider host name
//! (plus `localhost` and the loopback addresses) that the fake provider serves, and a trust bundle
//! (system CAs plus the test CA) that clients are pointed at through the usual environment
//! variables. Nothing is installed system-wide; everything lives in a temporary directory that
//! is removed on drop.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::netns::PROVIDER_HOSTS;

/// Where Debian keeps the system trust store as one PEM bundle.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Names (DNS and IP) on the default leaf: every provider host plus loopback.
fn leaf_names() -> Vec<String> {
    PROVIDER_HOSTS
        .iter()
        .copied()
        .chain(["localhost", "127.0.0.1", "::1"])
        .map(str::to_owned)
        .collect()
}

/// A test CA with one leaf, written as PEM files to a temporary directory (removed on drop).
pub struct TestCa {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_cert_pem: String,
}

impl TestCa {
    /// Creates the CA and the provider leaf and writes `ca.pem`, `ca-key.pem`, `leaf.pem`,
    /// `leaf-key.pem` and `bundle.pem`.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("llmsim-test-ca-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory for the test CA: {e}"));

        let mut params = CertificateParams::new(Vec::<String>::new())
            .unwrap_or_else(|e| panic!("CA parameters: {e}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "llmsim test CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "llmsim tests");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("CA key generation: {e}"));
        let cert = params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("CA self-signing: {e}"));
        let ca_cert_pem = cert.pem();
        write(&dir.path().join("ca.pem"), &ca_cert_pem);
        write(&dir.path().join("ca-key.pem"), &key.serialize_pem());

        let mut bundle = match fs::read_to_string(SYSTEM_BUNDLE) {
            Ok(system) => system,
            Err(e) => {
                eprintln!(
                    "note: {SYSTEM_BUNDLE} unreadable ({e}); the bundle holds only the test CA"
                );
                String::new()
            }
        };
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(&ca_cert_pem);
        write(&dir.path().join("bundle.pem"), &bundle);

        let ca = TestCa {
            dir,
            issuer: Issuer::new(params, key),
            ca_cert_pem,
        };
        let names = leaf_names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        ca.issue_leaf("leaf", &names);
        ca
    }

    /// Issues another leaf signed by this CA for `names` (DNS names or IP addresses), written to
    /// `<stem>.pem` and `<stem>-key.pem` in the CA directory; returns (certificate, key) paths.
    pub fn issue_leaf(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone())
            .unwrap_or_else(|e| panic!("leaf parameters for {names:?}: {e}"));
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map_or("llmsim test leaf", String::as_str),
        );
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("leaf key generation: {e}"));
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("signing the leaf for {names:?}: {e}"));
        let cert_path = self.dir.path().join(format!("{stem}.pem"));
        let key_path = self.dir.path().join(format!("{stem}-key.pem"));
        write(&cert_path, &cert.pem());
        write(&key_path, &key.serialize_pem());
        (cert_path, key_path)
    }

    /// The temporary directory holding every PEM file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate as PEM text.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// `ca.pem`: the CA certificate alone.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `ca-key.pem`: the CA's private key (PKCS#8), for a test that mints its own leaves.
    pub fn ca_key_path(&self) -> PathBuf {
        self.dir.path().join("ca-key.pem")
    }

    /// `leaf.pem`: the leaf for every provider host, `localhost`, `127.0.0.1` and `::1`.
    pub fn leaf_cert_path(&self) -> PathBuf {
        self.dir.path().join("leaf.pem")
    }

    /// `leaf-key.pem`: the leaf's private key (PKCS#8).
    pub fn leaf_key_path(&self) -> PathBuf {
        self.dir.path().join("leaf-key.pem")
    }

    /// `bundle.pem`: the system CAs followed by the test CA.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir.path().join("bundle.pem")
    }

    /// Environment variables that make OpenSSL, Python (`ssl`, httpx, requests), curl and Node
    /// trust the test CA: `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE` (the bundle) and
    /// `NODE_EXTRA_CA_CERTS` (the CA alone; Node adds it to its built-in roots).
    pub fn client_env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("SSL_CERT_FILE", self.bundle_path()),
            ("REQUESTS_CA_BUNDLE", self.bundle_path()),
            ("CURL_CA_BUNDLE", self.bundle_path()),
            ("NODE_EXTRA_CA_CERTS", self.ca_cert_path()),
        ]
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

fn write(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
