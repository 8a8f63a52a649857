//! The cluster CA and member certificates for mutual TLS between members.
//!
//! Every member (placement driver, shard node, proxy) holds a certificate signed by
//! the cluster CA and trusts only that CA, both as a server and as a client, so a
//! peer without a certificate of this cluster is refused during the handshake.
//! Certificates name `redraft` as a DNS SAN, which is the server name every member
//! dials; addresses are not part of identity, so members may move.
//!
//! Files in a certificate directory: `ca.pem`, `ca.key` (keep it to add members),
//! `<member>.pem`, `<member>.key`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The DNS name in every member certificate and the server name members dial.
pub const SERVER_NAME: &str = "redraft";

/// Creates `ca.pem`/`ca.key` in `dir` unless they exist, then a certificate for each
/// of `members` that does not exist yet.
pub fn ensure_certs(dir: &Path, members: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_pem, ca_key_pem) = (dir.join("ca.pem"), dir.join("ca.key"));
    if !ca_pem.exists() {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_private(&ca_key_pem, &key.serialize_pem())?;
        std::fs::write(&ca_pem, cert.pem())?;
    }
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&ca_key_pem)?)?;
    // The issuer is rebuilt from the same parameters: subject and key identifier
    // are all a signature needs from the CA certificate.
    let issuer = Issuer::new(ca_params()?, ca_key);
    for member in members {
        let (cert_path, key_path) = member_paths(dir, member);
        if cert_path.exists() && key_path.exists() {
            continue;
        }
        let key = KeyPair::generate()?;
        let names = [SERVER_NAME, "localhost", "127.0.0.1"].map(String::from).to_vec();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, member.as_str());
        let cert = params.signed_by(&key, &issuer)?;
        write_private(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, cert.pem())?;
    }
    Ok(())
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "redraft cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// `<dir>/<member>.pem` and `<dir>/<member>.key`.
pub fn member_paths(dir: &Path, member: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{member}.pem")), dir.join(format!("{member}.key")))
}

/// A member's TLS identity and the CA it trusts.
#[derive(Debug)]
pub struct TlsIdentity {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    /// Loads `ca.pem` and the member's certificate and key from `dir`.
    pub fn load(dir: &Path, member: &str) -> Result<TlsIdentity> {
        let (cert, key) = member_paths(dir, member);
        Self::from_files(&dir.join("ca.pem"), &cert, &key)
    }

    /// Loads a CA bundle, a certificate chain and a private key from PEM files.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<TlsIdentity> {
        let read_certs = |p: &Path| -> Result<Vec<CertificateDer<'static>>> {
            CertificateDer::pem_file_iter(p)
                .with_context(|| format!("reading {}", p.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing {}", p.display()))
        };
        Ok(TlsIdentity {
            ca: read_certs(ca)?,
            chain: read_certs(cert)?,
            key: PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?,
        })
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in &self.ca {
            roots.add(cert.clone())?;
        }
        Ok(Arc::new(roots))
    }

    /// Server side: present our certificate, require one signed by the cluster CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, Self::provider()).build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"redraft".to_vec()];
        Ok(config)
    }

    /// The proxy's client port (RESP over TLS, as `redis-cli --tls` speaks it):
    /// TLS 1.2 or 1.3, our certificate; client certificates signed by the cluster
    /// CA are required when `require_client_cert` (Redis's `tls-auth-clients
    /// yes`), else verified only when offered.
    pub fn client_port_config(&self, require_client_cert: bool) -> Result<rustls::ServerConfig> {
        let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, Self::provider());
        let verifier = if require_client_cert {
            builder.build()?
        } else {
            builder.allow_unauthenticated().build()?
        };
        Ok(rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?)
    }

    /// Client side: trust only the cluster CA, present our certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"redraft".to_vec()];
        Ok(config)
    }
}
