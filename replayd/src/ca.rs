//! The per-machine replay CA and the TLS leaf certificates it mints. On first use
//! [`CertificateAuthority::load_or_create`] makes an ECDSA P-256 CA under the user's data
//! directory (key mode 0600, written atomically, never shipped or committed) and loads it on
//! later runs. [`LeafResolver`] is a rustls certificate resolver that mints and caches a leaf
//! per SNI name, so apps that trust the CA accept replayd as api.openai.com and friends.
//! [`CertificateAuthority::trust_bundle`] writes the files the `-- CMD` child is pointed at
//! (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`, `NODE_EXTRA_CA_CERTS`, which Bun
//! reads too, `DENO_CERT`, and a JVM truststore passed through `JAVA_TOOL_OPTIONS`), and
//! [`trust_install`] / [`trust_uninstall`] manage the system store for the daemon modes, in
//! whichever [`TrustLayout`] the machine has (Debian/Ubuntu, Fedora/RHEL or Arch). Every TLS
//! object here uses the rustls `ring` provider explicitly.

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use llmsim_snapshot::atomic::{self, Mode, PublishError};
use llmsim_snapshot::{error_chain, paths};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{ConfigBuilder, ServerConfig, WantsVerifier};
use time::OffsetDateTime;

/// The CA directory's name inside the data directory ([`paths::data_dir`]).
pub const CA_DIR: &str = "ca";
/// File name of the CA's private key (PKCS#8 PEM, mode 0600) inside the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// File name of the CA's certificate (PEM, mode 0644) inside the CA directory.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// Where Debian-style systems keep the system CA bundle that the trust bundle starts from.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where [`trust_install`] puts the CA on Debian-style systems.
pub const SYSTEM_ANCHOR_PATH: &str = "/usr/local/share/ca-certificates/llmsim-replay-ca.crt";
/// The command that rebuilds the Debian-style system store.
pub const UPDATE_CA_CERTIFICATES: &str = "update-ca-certificates";
/// The directory of local anchors on Debian-style systems, whose presence marks that layout.
pub const DEBIAN_ANCHOR_DIR: &str = "/usr/local/share/ca-certificates";
/// The directory of local anchors on Fedora/RHEL-style systems, whose presence marks that
/// layout.
pub const FEDORA_ANCHOR_DIR: &str = "/etc/pki/ca-trust/source/anchors";
/// Where [`trust_install`] puts the CA on Fedora/RHEL-style systems.
pub const FEDORA_ANCHOR_PATH: &str = "/etc/pki/ca-trust/source/anchors/llmsim-replay-ca.pem";
/// The command that rebuilds the Fedora/RHEL-style system store (run as `update-ca-trust extract`).
pub const UPDATE_CA_TRUST: &str = "update-ca-trust";
/// Arch's writable p11-kit trust source, whose presence marks that layout.
pub const ARCH_TRUST_SOURCE: &str = "/etc/ca-certificates/trust-source";
/// p11-kit's trust tool, which stores and removes anchors on Arch-style systems.
pub const P11KIT_TRUST: &str = "trust";
/// File name of the trust bundle (system CAs plus the replay CA) written by
/// [`CertificateAuthority::trust_bundle`].
pub const BUNDLE_FILE: &str = "llmsim-ca-bundle.pem";
/// File name of the copy of the CA certificate written by
/// [`CertificateAuthority::trust_bundle`], for `NODE_EXTRA_CA_CERTS`.
pub const BUNDLE_CA_FILE: &str = "llmsim-replay-ca.pem";
/// File name of the JVM truststore (PKCS12: the JVM's system roots plus the replay CA),
/// kept next to the CA certificate and copied beside the trust bundle.
pub const JAVA_TRUSTSTORE_FILE: &str = "java-truststore.p12";
/// Where Debian-style systems keep the JVM's system roots (`ca-certificates-java`).
pub const SYSTEM_JAVA_CACERTS: &str = "/etc/ssl/certs/java/cacerts";
/// The password of [`SYSTEM_JAVA_CACERTS`] and of the JVM truststore. A truststore holds
/// only public certificates; the JVM and `keytool` want a password all the same, and this
/// is the JDK's well-known default.
pub const JAVA_TRUSTSTORE_PASSWORD: &str = "changeit";
/// The JDK's keystore tool, which writes the JVM truststore.
pub const KEYTOOL: &str = "keytool";
/// The alias of the replay CA in the JVM truststore.
const JAVA_CA_ALIAS: &str = "llmsim-replay-ca";
/// The ALPN protocol name of HTTP/2 over TLS.
pub const H2_ALPN: &[u8] = b"h2";
/// ALPN protocols replay offers, in order of preference: HTTP/2, then HTTP/1.1.
pub const ALPN: &[&[u8]] = &[H2_ALPN, b"http/1.1"];

/// How long the CA is valid for.
const CA_VALIDITY: Duration = Duration::from_hours(10 * 365 * 24);
/// How long a minted leaf is valid for.
const LEAF_VALIDITY: Duration = Duration::from_hours(30 * 24);
/// How far back validity starts, to tolerate clocks that disagree a little.
const BACKDATE: Duration = Duration::from_hours(24);
/// A cached leaf older than this is minted again, well before it expires.
const LEAF_REFRESH: Duration = Duration::from_hours(24);
/// The CA key's mode: never readable by anyone else, not even while it is written.
const KEY_MODE: Mode = Mode::Umasked(0o600);
/// The mode of certificates and trust bundles, whatever the umask: other users' programs
/// (a `-- CMD` child, the system store's readers) must be able to read them.
const PUBLIC_MODE: Mode = Mode::Exact(0o644);
/// Default bound on the number of cached leaves.
const DEFAULT_CACHE_CAPACITY: usize = 1024;
/// Longest host name put into the CA's common name (X.509 caps a CN at 64 characters).
const MAX_HOSTNAME_IN_CN: usize = 32;

/// Errors from creating, loading or using the replay CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Neither `$XDG_DATA_HOME` nor `$HOME` is set to an absolute path, so there is no
    /// default CA directory.
    #[error(
        "cannot find a data directory for the replay CA: set XDG_DATA_HOME or HOME, or pass --ca-dir"
    )]
    NoDataDir,
    /// A directory could not be created.
    #[error("cannot create directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A file could not be written whole under its name.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Which step failed.
        #[source]
        source: PublishError,
    },
    /// A file could not be removed.
    #[error("cannot remove {path}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The CA key file exists but is not a PEM private key.
    #[error("the replay CA key {path} is corrupt; delete it and {cert} to mint a new CA")]
    CorruptKey {
        /// The key file.
        path: PathBuf,
        /// The certificate file that goes with it.
        cert: PathBuf,
        /// Why the key did not load.
        #[source]
        source: rcgen::Error,
    },
    /// The CA key file holds a key that is not ECDSA P-256.
    #[error(
        "the replay CA key {path} is not an ECDSA P-256 key; delete it and {cert} to mint a new CA"
    )]
    WrongKeyType {
        /// The key file.
        path: PathBuf,
        /// The certificate file that goes with it.
        cert: PathBuf,
    },
    /// The CA certificate file is not PEM.
    #[error("the replay CA certificate {path} is not PEM; delete it to mint it again from the key")]
    CorruptCertPem {
        /// The certificate file.
        path: PathBuf,
        /// Why the PEM did not parse.
        #[source]
        source: x509_parser::error::PEMError,
    },
    /// The CA certificate file holds PEM that is not an X.509 certificate.
    #[error("the replay CA certificate {path} is corrupt; delete it to mint it again from the key")]
    CorruptCert {
        /// The certificate file.
        path: PathBuf,
        /// Why the certificate did not parse.
        #[source]
        source: x509_parser::error::X509Error,
    },
    /// The CA certificate parsed but rcgen cannot issue from it.
    #[error(
        "the replay CA certificate {path} cannot be used as an issuer; delete it to mint it again from the key"
    )]
    UnusableCert {
        /// The certificate file.
        path: PathBuf,
        /// Why rcgen rejected it.
        #[source]
        source: rcgen::Error,
    },
    /// The CA certificate does not belong to the CA key.
    #[error(
        "the replay CA certificate {cert} does not match the key {key}; delete the certificate to mint it again from the key"
    )]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The CA certificate has expired.
    #[error(
        "the replay CA certificate {path} has expired; delete it to mint it again from the key"
    )]
    Expired {
        /// The certificate file.
        path: PathBuf,
    },
    /// Generating a key or signing a certificate failed.
    #[error("cannot generate the {what}")]
    Generate {
        /// What was being generated, for example "CA key" or "leaf certificate for api.openai.com".
        what: String,
        /// The underlying rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// The crypto provider could not produce random bytes for a serial number.
    #[error("the crypto provider could not produce random bytes")]
    Random,
    /// rustls rejected the key or the TLS configuration.
    #[error("rustls rejected the {what}")]
    Rustls {
        /// What was rejected.
        what: &'static str,
        /// The underlying rustls error.
        #[source]
        source: rustls::Error,
    },
    /// None of the system trust store layouts replayd knows is present.
    #[error(
        "no known system trust store: found none of {DEBIAN_ANCHOR_DIR} (Debian, Ubuntu), {FEDORA_ANCHOR_DIR} (Fedora, RHEL), {ARCH_TRUST_SOURCE} (Arch)"
    )]
    NoTrustStore,
    /// The JVM truststore, written by `keytool`, could not be put in place.
    #[error("cannot put the JVM truststore at {path}")]
    JavaTruststore {
        /// Where it was going.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The system-store update command could not be started.
    #[error("cannot run {command}")]
    Spawn {
        /// The command.
        command: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The system-store update command ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    CommandFailed {
        /// The command.
        command: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on standard error, trimmed.
        stderr: String,
    },
}

/// The ring crypto provider every TLS object of replayd uses.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs the ring provider as the process-wide rustls default, for code that builds
/// rustls configurations without naming a provider. Returns false when a provider was
/// already installed (which is fine: everything in this module names its provider).
pub fn install_crypto_provider() -> bool {
    rustls::crypto::ring::default_provider()
        .install_default()
        .is_ok()
}

/// The default CA directory: `ca` in the data directory ([`paths::data_dir`]), so
/// `$XDG_DATA_HOME/llmsim/ca`, else `~/.local/share/llmsim/ca`. Under sudo that is root's
/// data directory, which is fine: the CA is per machine.
pub fn default_ca_dir() -> Result<PathBuf, CaError> {
    paths::data_dir()
        .map(|data| data.join(CA_DIR))
        .ok_or(CaError::NoDataDir)
}

/// The replay CA: its issuing key and its certificate, loaded from or created in a directory.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_path: PathBuf,
    cert_path: PathBuf,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("key_path", &self.key_path)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, creating the directory, the key and the certificate first
    /// when they are missing. A missing certificate next to an existing key is minted again
    /// from that key, so leaves already trusted stay valid. Concurrent first runs agree on
    /// one key: the key file is linked into place without replacing an existing one.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| CaError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        let provider = crypto_provider();

        let key = if let Some(pem) = read_optional(&key_path)? {
            parse_key(&pem, &key_path, &cert_path)?
        } else {
            let key = generate_key("CA key")?;
            let pem = key.serialize_pem();
            match atomic::create_new(dir, CA_KEY_FILE, pem.as_bytes(), KEY_MODE, None) {
                Ok(_) => key,
                Err(PublishError::Exists { .. }) => {
                    // Another process created the key first: use that one.
                    let pem = read_optional(&key_path)?.unwrap_or_default();
                    parse_key(&pem, &key_path, &cert_path)?
                }
                Err(source) => {
                    return Err(CaError::Write {
                        path: key_path,
                        source,
                    });
                }
            }
        };

        let (issuer, cert_der, cert_pem) = if let Some(pem) = read_optional(&cert_path)? {
            let der = check_cert(&pem, &key, &key_path, &cert_path)?;
            let issuer =
                Issuer::from_ca_cert_der(&der, key).map_err(|source| CaError::UnusableCert {
                    path: cert_path.clone(),
                    source,
                })?;
            (issuer, der, pem)
        } else {
            let params = ca_params(&provider)?;
            let cert = params
                .self_signed(&key)
                .map_err(|source| CaError::Generate {
                    what: "CA certificate".into(),
                    source,
                })?;
            let pem = cert.pem();
            replace_file(&cert_path, pem.as_bytes())?;
            (Issuer::new(params, key), cert.der().clone(), pem)
        };
        Ok(Self {
            issuer,
            cert_der,
            cert_pem,
            key_path,
            cert_path,
            provider,
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Path of the CA certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Path of the CA key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Writes the trust files for a child process into `out_dir`: a bundle of the system CAs
    /// ([`SYSTEM_CA_BUNDLE`], when present) followed by the replay CA, and a copy of the CA
    /// certificate alone. See [`TrustBundle::env`] for the variables to set.
    pub fn trust_bundle(&self, out_dir: &Path) -> Result<TrustBundle, CaError> {
        self.trust_bundle_with(out_dir, Path::new(SYSTEM_CA_BUNDLE))
    }

    /// Puts the JVM truststore (the JVM's system roots plus this CA) into `out_dir` and
    /// returns its path, for [`TrustBundle::java_truststore`]; `None` when `keytool` cannot
    /// be found. The store is written once next to the CA certificate and written again
    /// only when the certificate or the system roots are newer, so a run pays for the
    /// `keytool` calls only the first time.
    pub fn java_truststore(
        &self,
        out_dir: &Path,
        java: &JavaTrust,
    ) -> Result<Option<PathBuf>, CaError> {
        let cached = self
            .cert_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(JAVA_TRUSTSTORE_FILE);
        let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
        let fresh = modified(&cached).is_some_and(|stored| {
            [&self.cert_path, &java.system_cacerts]
                .into_iter()
                .filter_map(|input| modified(input))
                .all(|input| input <= stored)
        });
        if !fresh && !java.write(self, &cached)? {
            return Ok(None);
        }
        let bytes = fs::read(&cached).map_err(|source| CaError::Read {
            path: cached.clone(),
            source,
        })?;
        let copy = out_dir.join(JAVA_TRUSTSTORE_FILE);
        replace_file(&copy, &bytes)?;
        Ok(Some(copy))
    }

    /// [`Self::trust_bundle`] starting from the system bundle at `system_bundle` instead of
    /// [`SYSTEM_CA_BUNDLE`]; a missing file contributes nothing.
    pub fn trust_bundle_with(
        &self,
        out_dir: &Path,
        system_bundle: &Path,
    ) -> Result<TrustBundle, CaError> {
        fs::create_dir_all(out_dir).map_err(|source| CaError::CreateDir {
            path: out_dir.to_path_buf(),
            source,
        })?;
        let mut bundle = read_optional(system_bundle)?.unwrap_or_default();
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str("# llmsim replay CA\n");
        bundle.push_str(&self.cert_pem);
        let paths = TrustBundle {
            bundle: out_dir.join(BUNDLE_FILE),
            ca_cert: out_dir.join(BUNDLE_CA_FILE),
            java_truststore: None,
        };
        replace_file(&paths.bundle, bundle.as_bytes())?;
        replace_file(&paths.ca_cert, self.cert_pem.as_bytes())?;
        Ok(paths)
    }

    /// Mints a leaf for `sans` signed by this CA, with the given key.
    fn mint_leaf(
        &self,
        sans: Vec<SanType>,
        common_name: &str,
        key: &KeyPair,
    ) -> Result<CertificateDer<'static>, CaError> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial(&self.provider)?);
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        let cert = params
            .signed_by(key, &self.issuer)
            .map_err(|source| CaError::Generate {
                what: format!("leaf certificate for {common_name}"),
                source,
            })?;
        Ok(cert.der().clone())
    }
}

/// The files written by [`CertificateAuthority::trust_bundle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    /// System CAs plus the replay CA: for `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE` and
    /// `CURL_CA_BUNDLE`, which replace the default store.
    pub bundle: PathBuf,
    /// The replay CA alone: for `NODE_EXTRA_CA_CERTS` (node and Bun) and `DENO_CERT`
    /// (Deno), which add to the runtime's built-in store.
    pub ca_cert: PathBuf,
    /// The JVM truststore (PKCS12, the JVM's system roots plus the replay CA), when
    /// `keytool` was found to write it: for `JAVA_TOOL_OPTIONS`.
    pub java_truststore: Option<PathBuf>,
}

impl TrustBundle {
    /// The environment a child needs to trust the replay CA, as (variable, path) pairs.
    pub fn env(&self) -> [(&'static str, &Path); 5] {
        [
            ("SSL_CERT_FILE", &self.bundle),
            ("REQUESTS_CA_BUNDLE", &self.bundle),
            ("CURL_CA_BUNDLE", &self.bundle),
            ("NODE_EXTRA_CA_CERTS", &self.ca_cert),
            ("DENO_CERT", &self.ca_cert),
        ]
    }

    /// Everything the `-- CMD` child gets: [`Self::env`], plus `JAVA_TOOL_OPTIONS` naming
    /// the JVM truststore when there is one, appended to `inherited` (the variable's value
    /// in replayd's own environment) so that options the user set still apply.
    pub fn child_env(&self, inherited: Option<&OsStr>) -> Vec<(&'static str, OsString)> {
        let mut env: Vec<(&'static str, OsString)> = self
            .env()
            .iter()
            .map(|(name, path)| (*name, path.as_os_str().to_owned()))
            .collect();
        if let Some(store) = &self.java_truststore {
            let mut options = OsString::new();
            if let Some(inherited) = inherited.filter(|value| !value.is_empty()) {
                options.push(inherited);
                options.push(" ");
            }
            options.push("-Djavax.net.ssl.trustStore=");
            options.push(store);
            options.push(format!(
                " -Djavax.net.ssl.trustStorePassword={JAVA_TRUSTSTORE_PASSWORD} \
                 -Djavax.net.ssl.trustStoreType=PKCS12"
            ));
            env.push(("JAVA_TOOL_OPTIONS", options));
        }
        env
    }
}

/// Where the JVM truststore comes from: the tool that writes it and the JVM's system roots.
/// [`JavaTrust::default`] is the real machine's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JavaTrust {
    /// The `keytool` command; when it cannot be started, there is no JVM truststore.
    pub keytool: PathBuf,
    /// The JVM's system roots (a JKS or PKCS12 store); a missing file contributes nothing.
    pub system_cacerts: PathBuf,
}

impl Default for JavaTrust {
    fn default() -> Self {
        Self {
            keytool: PathBuf::from(KEYTOOL),
            system_cacerts: PathBuf::from(SYSTEM_JAVA_CACERTS),
        }
    }
}

impl JavaTrust {
    /// Writes the truststore for `ca` at `path` (replacing it whole): the system roots
    /// imported first, then the replay CA. Returns false, writing nothing, when
    /// `keytool` cannot be found.
    fn write(&self, ca: &CertificateAuthority, path: &Path) -> Result<bool, CaError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let scratch = tempfile::Builder::new()
            .prefix(".java-truststore")
            .tempdir_in(dir)
            .map_err(|source| CaError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        let store = scratch.path().join(JAVA_TRUSTSTORE_FILE);
        let store_arg = store.as_os_str();
        if self.system_cacerts.exists() {
            let imported = self.keytool(&[
                OsStr::new("-importkeystore"),
                OsStr::new("-noprompt"),
                OsStr::new("-srckeystore"),
                self.system_cacerts.as_os_str(),
                OsStr::new("-srcstorepass"),
                OsStr::new(JAVA_TRUSTSTORE_PASSWORD),
                OsStr::new("-destkeystore"),
                store_arg,
                OsStr::new("-deststoretype"),
                OsStr::new("PKCS12"),
                OsStr::new("-deststorepass"),
                OsStr::new(JAVA_TRUSTSTORE_PASSWORD),
            ])?;
            if !imported {
                return Ok(false);
            }
        }
        let added = self.keytool(&[
            OsStr::new("-importcert"),
            OsStr::new("-noprompt"),
            OsStr::new("-alias"),
            OsStr::new(JAVA_CA_ALIAS),
            OsStr::new("-file"),
            ca.cert_path.as_os_str(),
            OsStr::new("-keystore"),
            store_arg,
            OsStr::new("-storetype"),
            OsStr::new("PKCS12"),
            OsStr::new("-storepass"),
            OsStr::new(JAVA_TRUSTSTORE_PASSWORD),
        ])?;
        if !added {
            return Ok(false);
        }
        fs::set_permissions(&store, fs::Permissions::from_mode(0o644))
            .and_then(|()| fs::rename(&store, path))
            .map_err(|source| CaError::JavaTruststore {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(true)
    }

    /// Runs `keytool` with `args`. Returns false when it cannot be found.
    fn keytool(&self, args: &[&OsStr]) -> Result<bool, CaError> {
        let output = match Command::new(&self.keytool).args(args).output() {
            Ok(output) => output,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(CaError::Spawn {
                    command: self.keytool.clone(),
                    source,
                });
            }
        };
        if output.status.success() {
            Ok(true)
        } else {
            Err(CaError::CommandFailed {
                command: self.keytool.clone(),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }
}

/// A system trust store kept as an anchor file plus the command that rebuilds the store from
/// it: Debian's and Fedora's layouts. [`SystemTrustStore::default`] is Debian's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemTrustStore {
    /// Where the CA certificate is copied.
    pub anchor: PathBuf,
    /// The command run after the copy or removal (`update-ca-certificates`).
    pub update_command: PathBuf,
}

impl Default for SystemTrustStore {
    fn default() -> Self {
        Self {
            anchor: PathBuf::from(SYSTEM_ANCHOR_PATH),
            update_command: PathBuf::from(UPDATE_CA_CERTIFICATES),
        }
    }
}

impl SystemTrustStore {
    /// Copies the CA certificate to the anchor path and rebuilds the store with
    /// `update-ca-certificates`' arguments (none).
    pub fn install(&self, ca: &CertificateAuthority) -> Result<(), CaError> {
        self.install_with(ca, &[])
    }

    /// Removes the anchor and rebuilds the store from scratch with `update-ca-certificates`'
    /// arguments (`--fresh`). Returns false, without running anything, when the CA was not
    /// installed.
    pub fn uninstall(&self) -> Result<bool, CaError> {
        self.uninstall_with(&["--fresh"])
    }

    /// [`Self::install`] running the update command with `args`.
    fn install_with(&self, ca: &CertificateAuthority, args: &[&str]) -> Result<(), CaError> {
        if let Some(parent) = self.anchor.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|source| CaError::CreateDir {
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
        replace_file(&self.anchor, ca.cert_pem.as_bytes())?;
        run_store_command(&self.update_command, args).map(drop)
    }

    /// [`Self::uninstall`] running the update command with `args`.
    fn uninstall_with(&self, args: &[&str]) -> Result<bool, CaError> {
        match fs::remove_file(&self.anchor) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(CaError::Remove {
                    path: self.anchor.clone(),
                    source,
                });
            }
        }
        run_store_command(&self.update_command, args)?;
        Ok(true)
    }
}

/// Runs one command of a system trust store and returns what it printed on standard output.
fn run_store_command(command: &Path, args: &[impl AsRef<OsStr>]) -> Result<String, CaError> {
    let output = Command::new(command)
        .args(args)
        .output()
        .map_err(|source| CaError::Spawn {
            command: command.to_path_buf(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(CaError::CommandFailed {
            command: command.to_path_buf(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// The system trust store layouts replayd installs its CA into, told apart by the directory
/// each distribution's CA tooling creates ([`TrustLayout::detect`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustLayout {
    /// Debian and Ubuntu: the CA copied to [`SYSTEM_ANCHOR_PATH`], then
    /// `update-ca-certificates` (`--fresh` on removal) rebuilds
    /// `/etc/ssl/certs/ca-certificates.crt`.
    Debian,
    /// Fedora, RHEL and their rebuilds: the CA copied to [`FEDORA_ANCHOR_PATH`], then
    /// `update-ca-trust extract` rebuilds `/etc/pki/ca-trust/extracted/` (which
    /// `/etc/pki/tls/certs/ca-bundle.crt` points into).
    Fedora,
    /// Arch: p11-kit's `trust anchor --store` / `--remove` keep the CA in
    /// [`ARCH_TRUST_SOURCE`] and rebuild `/etc/ca-certificates/extracted/` (which
    /// `/etc/ssl/certs/ca-certificates.crt` points into) themselves.
    Arch,
}

impl fmt::Display for TrustLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Debian => "Debian/Ubuntu, update-ca-certificates",
            Self::Fedora => "Fedora/RHEL, update-ca-trust",
            Self::Arch => "Arch, trust anchor",
        })
    }
}

impl TrustLayout {
    /// The layout of this machine's store. Fedora's and Arch's directories are looked for
    /// before Debian's, which a Fedora or Arch machine does not have but a Debian one with
    /// p11-kit installed still does.
    pub fn detect() -> Result<Self, CaError> {
        Self::detect_in(Path::new("/")).ok_or(CaError::NoTrustStore)
    }

    /// [`Self::detect`] for the tree under `root`.
    fn detect_in(root: &Path) -> Option<Self> {
        [
            (Self::Fedora, FEDORA_ANCHOR_DIR),
            (Self::Arch, ARCH_TRUST_SOURCE),
            (Self::Debian, DEBIAN_ANCHOR_DIR),
        ]
        .into_iter()
        .find(|(_, dir)| root.join(dir.trim_start_matches('/')).is_dir())
        .map(|(layout, _)| layout)
    }

    /// The anchor-file store of the Fedora layout.
    fn fedora_store() -> SystemTrustStore {
        SystemTrustStore {
            anchor: PathBuf::from(FEDORA_ANCHOR_PATH),
            update_command: PathBuf::from(UPDATE_CA_TRUST),
        }
    }

    /// Puts the CA into this layout's store and rebuilds the bundles TLS clients read.
    pub fn install(self, ca: &CertificateAuthority) -> Result<(), CaError> {
        match self {
            Self::Debian => SystemTrustStore::default().install(ca),
            Self::Fedora => Self::fedora_store().install_with(ca, &["extract"]),
            Self::Arch => run_store_command(
                Path::new(P11KIT_TRUST),
                &[
                    OsStr::new("anchor"),
                    OsStr::new("--store"),
                    ca.cert_path().as_os_str(),
                ],
            )
            .map(drop),
        }
    }

    /// Takes the CA whose certificate is `ca_cert` out of this layout's store again. Returns
    /// false when it was not installed (for Arch: when the CA certificate does not exist, or
    /// p11-kit's list of anchors is the same without it).
    pub fn uninstall(self, ca_cert: &Path) -> Result<bool, CaError> {
        match self {
            Self::Debian => SystemTrustStore::default().uninstall(),
            Self::Fedora => Self::fedora_store().uninstall_with(&["extract"]),
            Self::Arch => {
                if !ca_cert.exists() {
                    return Ok(false);
                }
                let trust = Path::new(P11KIT_TRUST);
                let list = ["list", "--filter=ca-anchors"];
                let before = run_store_command(trust, &list)?;
                run_store_command(
                    trust,
                    &[
                        OsStr::new("anchor"),
                        OsStr::new("--remove"),
                        ca_cert.as_os_str(),
                    ],
                )?;
                Ok(run_store_command(trust, &list)? != before)
            }
        }
    }
}

/// Puts the CA into the system store in this machine's [`TrustLayout`], for the daemon
/// modes, and returns the layout. Needs root.
pub fn trust_install(ca: &CertificateAuthority) -> Result<TrustLayout, CaError> {
    let layout = TrustLayout::detect()?;
    layout.install(ca)?;
    Ok(layout)
}

/// Takes the CA whose certificate is the [`CA_CERT_FILE`] in `ca_dir` out of the system store
/// again. Returns false when it was not installed. Needs root.
pub fn trust_uninstall(ca_dir: &Path) -> Result<bool, CaError> {
    TrustLayout::detect()?.uninstall(&ca_dir.join(CA_CERT_FILE))
}

/// A rustls certificate resolver that mints a leaf per SNI name, signed by the replay CA,
/// and caches it (bounded; the oldest entry goes first). A client that sends no SNI gets
/// a leaf for IP addresses: the fallback addresses given at construction, or the one
/// passed to [`LeafResolver::server_config_for_ip`]. All leaves share one P-256 key that
/// lives only in memory.
pub struct LeafResolver {
    ca: Arc<CertificateAuthority>,
    key: KeyPair,
    signing_key: Arc<dyn SigningKey>,
    fallback_ips: Vec<IpAddr>,
    builder: ConfigBuilder<ServerConfig, WantsVerifier>,
    cache: Mutex<LeafCache>,
}

impl fmt::Debug for LeafResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafResolver")
            .field("ca", &self.ca)
            .field("fallback_ips", &self.fallback_ips)
            .finish_non_exhaustive()
    }
}

impl LeafResolver {
    /// A resolver whose SNI-less leaves are for 127.0.0.1 and `::1`.
    pub fn new(ca: Arc<CertificateAuthority>) -> Result<Self, CaError> {
        Self::with_fallback_ips(
            ca,
            vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
        )
    }

    /// A resolver whose SNI-less leaves carry `fallback_ips` as IP SANs.
    pub fn with_fallback_ips(
        ca: Arc<CertificateAuthority>,
        fallback_ips: Vec<IpAddr>,
    ) -> Result<Self, CaError> {
        let key = generate_key("leaf key")?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = ca
            .provider
            .key_provider
            .load_private_key(der)
            .map_err(|source| CaError::Rustls {
                what: "leaf key",
                source,
            })?;
        let builder = ServerConfig::builder_with_provider(ca.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| CaError::Rustls {
                what: "protocol versions",
                source,
            })?;
        Ok(Self {
            ca,
            key,
            signing_key,
            fallback_ips,
            builder,
            cache: Mutex::new(LeafCache::new(DEFAULT_CACHE_CAPACITY)),
        })
    }

    /// Bounds the leaf cache to `capacity` entries (at least one).
    #[must_use]
    pub fn with_cache_capacity(self, capacity: usize) -> Self {
        Self {
            cache: Mutex::new(LeafCache::new(capacity.max(1))),
            ..self
        }
    }

    /// A server configuration that resolves leaves through this resolver and offers `alpn`
    /// (replay offers [`ALPN`]).
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> ServerConfig {
        self.config_with(self.clone(), alpn)
    }

    /// Like [`Self::server_config`], but a client that sends no SNI gets a leaf for `ip`,
    /// typically the original destination the app connected to.
    pub fn server_config_for_ip(self: &Arc<Self>, alpn: &[&[u8]], ip: IpAddr) -> ServerConfig {
        self.config_with(
            Arc::new(ForIp {
                inner: self.clone(),
                ip,
            }),
            alpn,
        )
    }

    fn config_with(&self, resolver: Arc<dyn ResolvesServerCert>, alpn: &[&[u8]]) -> ServerConfig {
        let mut config = self
            .builder
            .clone()
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// The leaf for a DNS name (an IP literal is treated as an IP SAN), from the cache or
    /// freshly minted.
    pub fn leaf_for_name(&self, name: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = name.parse::<IpAddr>() {
            return self.leaf_for_ips(&[ip]);
        }
        self.cached(CacheKey::Name(name.clone()), || {
            let san =
                SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(|source| CaError::Generate {
                            what: format!("leaf certificate for {name}"),
                            source,
                        })?,
                );
            self.ca.mint_leaf(vec![san], &name, &self.key)
        })
    }

    /// The leaf for a set of IP addresses, from the cache or freshly minted.
    pub fn leaf_for_ips(&self, ips: &[IpAddr]) -> Result<Arc<CertifiedKey>, CaError> {
        let common_name = ips
            .first()
            .map_or_else(|| "llmsim replay".to_owned(), ToString::to_string);
        self.cached(CacheKey::Ips(ips.to_vec()), || {
            let sans = ips.iter().copied().map(SanType::IpAddress).collect();
            self.ca.mint_leaf(sans, &common_name, &self.key)
        })
    }

    fn cached(
        &self,
        key: CacheKey,
        mint: impl FnOnce() -> Result<CertificateDer<'static>, CaError>,
    ) -> Result<Arc<CertifiedKey>, CaError> {
        if let Some(hit) = self.lock_cache().get(&key) {
            return Ok(hit);
        }
        // Minting happens outside the lock; two racing handshakes may both mint, which is
        // harmless.
        let cert = mint()?;
        let leaf = Arc::new(CertifiedKey::new(vec![cert], self.signing_key.clone()));
        self.lock_cache().insert(key, leaf.clone());
        Ok(leaf)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, LeafCache> {
        // The cache holds no invariant a panic elsewhere could break.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn resolve_or_log(&self, sni: Option<&str>, ip: Option<IpAddr>) -> Option<Arc<CertifiedKey>> {
        let result = match (sni, ip) {
            (Some(name), _) => self.leaf_for_name(name),
            (None, Some(ip)) => self.leaf_for_ips(&[ip]),
            (None, None) => self.leaf_for_ips(&self.fallback_ips),
        };
        match result {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                tracing::warn!(sni = sni.unwrap_or("-"), error = %error_chain(&e), "cannot mint a TLS leaf");
                None
            }
        }
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.resolve_or_log(client_hello.server_name(), None)
    }
}

/// [`LeafResolver`] with a per-connection IP for SNI-less clients.
#[derive(Debug)]
struct ForIp {
    inner: Arc<LeafResolver>,
    ip: IpAddr,
}

impl ResolvesServerCert for ForIp {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.inner
            .resolve_or_log(client_hello.server_name(), Some(self.ip))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum CacheKey {
    Name(String),
    Ips(Vec<IpAddr>),
}

/// A bounded map of minted leaves; insertion order decides eviction.
struct LeafCache {
    capacity: usize,
    map: HashMap<CacheKey, (Arc<CertifiedKey>, Instant)>,
    order: VecDeque<CacheKey>,
}

impl LeafCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, key: &CacheKey) -> Option<Arc<CertifiedKey>> {
        self.map
            .get(key)
            .filter(|(_, minted)| minted.elapsed() < LEAF_REFRESH)
            .map(|(leaf, _)| leaf.clone())
    }

    fn insert(&mut self, key: CacheKey, leaf: Arc<CertifiedKey>) {
        if self
            .map
            .insert(key.clone(), (leaf, Instant::now()))
            .is_none()
        {
            self.order.push_back(key);
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

fn generate_key(what: &str) -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CaError::Generate {
        what: what.to_owned(),
        source,
    })
}

fn parse_key(pem: &str, key_path: &Path, cert_path: &Path) -> Result<KeyPair, CaError> {
    let key = KeyPair::from_pem(pem).map_err(|source| CaError::CorruptKey {
        path: key_path.to_path_buf(),
        cert: cert_path.to_path_buf(),
        source,
    })?;
    if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(CaError::WrongKeyType {
            path: key_path.to_path_buf(),
            cert: cert_path.to_path_buf(),
        });
    }
    if let Ok(meta) = fs::metadata(key_path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %key_path.display(), "the replay CA key is readable by other users; chmod 600 it");
    }
    Ok(key)
}

/// Parses the CA certificate, checks it belongs to `key` and is still valid, and returns
/// its DER.
fn check_cert(
    pem: &str,
    key: &KeyPair,
    key_path: &Path,
    cert_path: &Path,
) -> Result<CertificateDer<'static>, CaError> {
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| CaError::CorruptCertPem {
            path: cert_path.to_path_buf(),
            source: nom_inner(e, x509_parser::error::PEMError::IncompletePEM),
        })?;
    let x509 = parsed.parse_x509().map_err(|e| CaError::CorruptCert {
        path: cert_path.to_path_buf(),
        source: nom_inner(e, x509_parser::error::X509Error::InvalidCertificate),
    })?;
    if x509.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
        return Err(CaError::KeyMismatch {
            key: key_path.to_path_buf(),
            cert: cert_path.to_path_buf(),
        });
    }
    if x509.validity().not_after.timestamp() < OffsetDateTime::now_utc().unix_timestamp() {
        return Err(CaError::Expired {
            path: cert_path.to_path_buf(),
        });
    }
    Ok(CertificateDer::from(parsed.contents.clone()))
}

fn nom_inner<E>(e: x509_parser::nom::Err<E>, incomplete: E) -> E {
    match e {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
        x509_parser::nom::Err::Incomplete(_) => incomplete,
    }
}

fn ca_params(provider: &CryptoProvider) -> Result<CertificateParams, CaError> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "llmsim");
    dn.push(
        DnType::CommonName,
        format!("llmsim replay CA ({})", hostname()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial(provider)?);
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    Ok(params)
}

fn random_serial(provider: &CryptoProvider) -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    provider
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    // Positive and without a leading zero octet.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// This machine's host name, shortened for the CA's common name.
fn hostname() -> String {
    let name = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    name.chars().take(MAX_HOSTNAME_IN_CN).collect()
}

fn read_optional(path: &Path) -> Result<Option<String>, CaError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CaError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the public file `path` (a certificate or a bundle, mode [`PUBLIC_MODE`]),
/// replacing what it held.
fn replace_file(path: &Path, contents: &[u8]) -> Result<(), CaError> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    atomic::replace(dir, &name, contents, PUBLIC_MODE, None)
        .map(drop)
        .map_err(|source| CaError::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_files_with_the_right_modes() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("nested/ca");
        let ca = CertificateAuthority::load_or_create(&ca_dir).unwrap();
        assert_eq!(mode(ca.key_path()), 0o600);
        assert_eq!(mode(ca.cert_path()), 0o644);
        assert_eq!(mode(&ca_dir), 0o700);
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(&ca_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        let x509 = pem.parse_x509().unwrap();
        let cn = x509.subject().to_string();
        assert!(cn.contains("llmsim replay CA ("), "{cn}");
        assert!(x509.is_ca());
    }

    #[test]
    fn concurrent_first_runs_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let cas: Vec<_> = std::thread::scope(|scope| {
            let runs: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| CertificateAuthority::load_or_create(dir.path()).unwrap()))
                .collect();
            runs.into_iter().map(|run| run.join().unwrap()).collect()
        });
        let public_key = |ca: &CertificateAuthority| {
            let (_, cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
            cert.tbs_certificate.subject_pki.raw.to_vec()
        };
        let first = public_key(&cas[0]);
        assert!(cas.iter().all(|ca| public_key(ca) == first));
        assert_eq!(mode(cas[0].key_path()), 0o600);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // What the runs left behind loads.
        let again = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(public_key(&again), first);
    }

    #[test]
    fn reload_gives_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let second = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(first.cert_der(), second.cert_der());
        assert_eq!(first.cert_pem(), second.cert_pem());
    }

    #[test]
    fn missing_cert_is_minted_again_from_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let key_before = fs::read(first.key_path()).unwrap();
        fs::remove_file(first.cert_path()).unwrap();
        let second = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(fs::read(second.key_path()).unwrap(), key_before);
        assert!(second.cert_path().exists());
    }

    #[test]
    fn corrupt_key_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CA_KEY_FILE), "not a key").unwrap();
        let err = CertificateAuthority::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, CaError::CorruptKey { .. }), "{err:?}");
        assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
    }

    #[test]
    fn mismatched_cert_is_an_error() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(a.path()).unwrap();
        CertificateAuthority::load_or_create(b.path()).unwrap();
        fs::copy(a.path().join(CA_CERT_FILE), b.path().join(CA_CERT_FILE)).unwrap();
        let err = CertificateAuthority::load_or_create(b.path()).unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn trust_bundle_appends_the_ca_to_the_system_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(&dir.path().join("ca")).unwrap();
        let system = dir.path().join("system.crt");
        fs::write(&system, "SYSTEM CAS").unwrap();
        let out = dir.path().join("out");
        let bundle = ca.trust_bundle_with(&out, &system).unwrap();
        let text = fs::read_to_string(&bundle.bundle).unwrap();
        assert!(text.starts_with("SYSTEM CAS\n"));
        assert!(text.ends_with(ca.cert_pem()));
        assert_eq!(fs::read_to_string(&bundle.ca_cert).unwrap(), ca.cert_pem());
        let env = bundle.env();
        assert_eq!(env[0], ("SSL_CERT_FILE", bundle.bundle.as_path()));
        assert_eq!(env[3], ("NODE_EXTRA_CA_CERTS", bundle.ca_cert.as_path()));
        // A machine without a system bundle still gets the CA.
        let bare = ca
            .trust_bundle_with(&dir.path().join("bare"), &dir.path().join("missing"))
            .unwrap();
        assert!(
            fs::read_to_string(&bare.bundle)
                .unwrap()
                .ends_with(ca.cert_pem())
        );
    }

    #[test]
    fn child_env_adds_the_jvm_truststore_after_inherited_java_options() {
        let bundle = TrustBundle {
            bundle: PathBuf::from("/t/bundle.pem"),
            ca_cert: PathBuf::from("/t/ca.pem"),
            java_truststore: Some(PathBuf::from("/t/java-truststore.p12")),
        };
        let env = bundle.child_env(Some(OsStr::new("-Xmx64m")));
        let get = |name: &str| {
            env.iter()
                .find(|(n, _)| *n == name)
                .map_or_else(|| panic!("{name} missing from {env:?}"), |(_, v)| v.clone())
        };
        assert_eq!(get("SSL_CERT_FILE"), OsString::from("/t/bundle.pem"));
        assert_eq!(get("NODE_EXTRA_CA_CERTS"), OsString::from("/t/ca.pem"));
        assert_eq!(get("DENO_CERT"), OsString::from("/t/ca.pem"));
        assert_eq!(
            get("JAVA_TOOL_OPTIONS"),
            OsString::from(
                "-Xmx64m -Djavax.net.ssl.trustStore=/t/java-truststore.p12 \
                 -Djavax.net.ssl.trustStorePassword=changeit -Djavax.net.ssl.trustStoreType=PKCS12"
            )
        );
        let alone = bundle.child_env(None);
        assert!(alone.iter().any(|(n, v)| {
            *n == "JAVA_TOOL_OPTIONS"
                && v.to_string_lossy()
                    .starts_with("-Djavax.net.ssl.trustStore=")
        }));
        // Without a truststore the JVM's settings are left as they are.
        let no_java = TrustBundle {
            java_truststore: None,
            ..bundle
        };
        assert!(
            no_java
                .child_env(Some(OsStr::new("-Xmx64m")))
                .iter()
                .all(|(n, _)| *n != "JAVA_TOOL_OPTIONS")
        );
    }

    #[test]
    fn java_truststore_holds_the_system_roots_and_the_ca_and_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(&dir.path().join("ca")).unwrap();
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        let no_keytool = JavaTrust {
            keytool: dir.path().join("no-keytool"),
            ..JavaTrust::default()
        };
        assert_eq!(ca.java_truststore(&out, &no_keytool).unwrap(), None);
        assert!(!out.join(JAVA_TRUSTSTORE_FILE).exists());

        let java = JavaTrust::default();
        let Some(store) = ca.java_truststore(&out, &java).unwrap() else {
            eprintln!("no keytool on this machine: only the case without one is checked");
            return;
        };
        let list = Command::new(KEYTOOL)
            .args(["-list", "-storetype", "PKCS12", "-storepass"])
            .arg(JAVA_TRUSTSTORE_PASSWORD)
            .arg("-keystore")
            .arg(&store)
            .output()
            .unwrap();
        assert!(list.status.success(), "{list:?}");
        let listing = String::from_utf8_lossy(&list.stdout);
        assert!(listing.contains(&format!("{JAVA_CA_ALIAS}, ")), "{listing}");
        assert!(listing.contains("trustedCertEntry"), "{listing}");
        let entries = listing.matches("trustedCertEntry").count();
        if java.system_cacerts.exists() {
            assert!(entries > 1, "the system roots are missing:\n{listing}");
        }
        // The next run copies the stored truststore instead of running keytool again.
        let cached = ca.cert_path().parent().unwrap().join(JAVA_TRUSTSTORE_FILE);
        let written = fs::metadata(&cached).unwrap().modified().unwrap();
        let again = ca.java_truststore(&out, &no_keytool).unwrap();
        assert_eq!(again, Some(store.clone()));
        assert_eq!(fs::metadata(&cached).unwrap().modified().unwrap(), written);
        assert_eq!(fs::read(&store).unwrap(), fs::read(&cached).unwrap());
    }

    #[test]
    fn system_store_install_and_uninstall_run_the_update_command() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(&dir.path().join("ca")).unwrap();
        let store = SystemTrustStore {
            anchor: dir.path().join("store/llmsim-replay-ca.crt"),
            update_command: PathBuf::from("true"),
        };
        store.install(&ca).unwrap();
        assert_eq!(fs::read_to_string(&store.anchor).unwrap(), ca.cert_pem());
        assert!(store.uninstall().unwrap());
        assert!(!store.anchor.exists());
        assert!(!store.uninstall().unwrap());

        let failing = SystemTrustStore {
            update_command: PathBuf::from("false"),
            ..store.clone()
        };
        let err = failing.install(&ca).unwrap_err();
        assert!(matches!(err, CaError::CommandFailed { .. }), "{err:?}");
        let missing = SystemTrustStore {
            update_command: dir.path().join("no-such-command"),
            ..store
        };
        let err = missing.install(&ca).unwrap_err();
        assert!(matches!(err, CaError::Spawn { .. }), "{err:?}");
    }

    #[test]
    fn the_trust_layout_is_told_apart_by_its_directories() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(TrustLayout::detect_in(root.path()), None);
        let mkdir =
            |dir: &str| fs::create_dir_all(root.path().join(dir.trim_start_matches('/'))).unwrap();
        mkdir(DEBIAN_ANCHOR_DIR);
        assert_eq!(
            TrustLayout::detect_in(root.path()),
            Some(TrustLayout::Debian)
        );
        // Debian's p11-kit leaves the Debian directory in place next to Arch's.
        mkdir(ARCH_TRUST_SOURCE);
        assert_eq!(TrustLayout::detect_in(root.path()), Some(TrustLayout::Arch));
        mkdir(FEDORA_ANCHOR_DIR);
        assert_eq!(
            TrustLayout::detect_in(root.path()),
            Some(TrustLayout::Fedora)
        );
    }

    #[test]
    fn leaf_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path()).unwrap());
        let resolver = LeafResolver::new(ca).unwrap().with_cache_capacity(2);
        let a1 = resolver.leaf_for_name("a.example").unwrap();
        let a2 = resolver.leaf_for_name("A.example.").unwrap();
        assert!(Arc::ptr_eq(&a1, &a2), "names are cached case-insensitively");
        resolver.leaf_for_name("b.example").unwrap();
        resolver.leaf_for_name("c.example").unwrap();
        assert_eq!(resolver.lock_cache().len(), 2);
        let a3 = resolver.leaf_for_name("a.example").unwrap();
        assert!(!Arc::ptr_eq(&a1, &a3), "the oldest entry was evicted");
    }

    fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Serves one TLS connection that echoes a line, and returns the listener address.
    async fn serve_once(
        config: ServerConfig,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let mut buf = [0u8; 5];
                if tls.read_exact(&mut buf).await.is_ok() {
                    let _ = tls.write_all(&buf).await;
                    let _ = tls.shutdown().await;
                }
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn tls_handshake_with_a_minted_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path()).unwrap());
        let resolver = Arc::new(LeafResolver::new(ca.clone()).unwrap());

        // A client trusting the CA connects with SNI api.openai.com.
        let (addr, server) = serve_once(resolver.server_config(ALPN)).await;
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let connector = TlsConnector::from(client_config(roots));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("api.openai.com").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (_, leaf) = x509_parser::parse_x509_certificate(&peer).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            "[DNSName(\"api.openai.com\")]"
        );
        tls.write_all(b"hello").await.unwrap();
        let mut back = Vec::new();
        tls.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello");
        server.await.unwrap();

        // A client trusting only some other CA fails the handshake.
        let other_dir = tempfile::tempdir().unwrap();
        let other = CertificateAuthority::load_or_create(other_dir.path()).unwrap();
        let (addr, server) = serve_once(resolver.server_config(ALPN)).await;
        let mut roots = RootCertStore::empty();
        roots.add(other.cert_der().clone()).unwrap();
        let connector = TlsConnector::from(client_config(roots));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("api.openai.com").unwrap();
        let err = connector.connect(name, tcp).await.unwrap_err();
        // Both CAs carry this machine's name, so the client finds the issuer by name and
        // then rejects the signature.
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn tls_handshake_without_sni_gets_an_ip_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::load_or_create(dir.path()).unwrap());
        let resolver = Arc::new(LeafResolver::new(ca.clone()).unwrap());
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let (addr, server) = serve_once(resolver.server_config_for_ip(ALPN, ip)).await;
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        // rustls sends no SNI for an IP address server name.
        let connector = TlsConnector::from(client_config(roots));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector
            .connect(ServerName::IpAddress(ip.into()), tcp)
            .await
            .unwrap();
        tls.write_all(b"hello").await.unwrap();
        let mut back = Vec::new();
        tls.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello");
        server.await.unwrap();
    }
}
