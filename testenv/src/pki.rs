//! Certificates and keys of the test control plane: a CA, the API server's
//! serving certificate, client certificates for the admin and for
//! kube-controller-manager, and the service-account signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{Result, io};

/// A certificate with its private key, both PEM encoded.
pub(crate) struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

pub(crate) struct Pki {
    pub ca: CertPair,
    pub apiserver: CertPair,
    pub admin: CertPair,
    pub controller_manager: CertPair,
    /// Client certificate the API server presents to aggregated API servers.
    pub front_proxy: CertPair,
    /// Private key that signs service-account tokens (PKCS#8, ECDSA P-256).
    pub sa_key_pem: String,
    /// Its public half, which the API server uses to verify tokens.
    pub sa_pub_pem: String,
}

/// Paths of the files written by [`Pki::write`].
pub(crate) struct PkiFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    pub front_proxy_cert: PathBuf,
    pub front_proxy_key: PathBuf,
}

/// Common name of the API server's front-proxy client certificate.
pub(crate) const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// Names under which the API server is reachable; all go into its certificate.
const APISERVER_NAMES: &[&str] = &[
    "127.0.0.1",
    "localhost",
    // First address of --service-cluster-ip-range: the in-cluster service IP.
    "10.0.0.1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster",
    "kubernetes.default.svc.cluster.local",
];

fn leaf(
    common_name: &str,
    organization: Option<&str>,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<CertPair> {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl Pki {
    pub fn generate() -> Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "peregrine-testenv-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = CertPair {
            cert_pem: ca_cert.pem(),
            key_pem: ca_key.serialize_pem(),
        };
        let issuer = Issuer::new(ca_params, ca_key);

        let apiserver = leaf(
            "kube-apiserver",
            None,
            APISERVER_NAMES,
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
        )?;
        let admin = leaf(
            "peregrine-testenv-admin",
            Some("system:masters"),
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        )?;
        let controller_manager = leaf(
            "system:kube-controller-manager",
            None,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        )?;
        let front_proxy = leaf(
            FRONT_PROXY_CLIENT,
            None,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        )?;
        let sa = KeyPair::generate()?;
        Ok(Pki {
            ca,
            apiserver,
            admin,
            controller_manager,
            front_proxy,
            sa_key_pem: sa.serialize_pem(),
            sa_pub_pem: sa.public_key_pem(),
        })
    }

    pub fn write(&self, dir: &Path) -> Result<PkiFiles> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let files = PkiFiles {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            apiserver_cert: dir.join("apiserver.crt"),
            apiserver_key: dir.join("apiserver.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
            front_proxy_cert: dir.join("front-proxy-client.crt"),
            front_proxy_key: dir.join("front-proxy-client.key"),
        };
        for (path, content) in [
            (&files.ca_cert, &self.ca.cert_pem),
            (&files.ca_key, &self.ca.key_pem),
            (&files.apiserver_cert, &self.apiserver.cert_pem),
            (&files.apiserver_key, &self.apiserver.key_pem),
            (&files.sa_key, &self.sa_key_pem),
            (&files.sa_pub, &self.sa_pub_pem),
            (&files.front_proxy_cert, &self.front_proxy.cert_pem),
            (&files.front_proxy_key, &self.front_proxy.key_pem),
        ] {
            write_private(path, content)?;
        }
        Ok(files)
    }
}

/// Writes a file readable by its owner only.
pub(crate) fn write_private(path: &Path, content: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("writing {}", path.display())))?;
    f.write_all(content.as_bytes())
        .map_err(io(format!("writing {}", path.display())))
}
