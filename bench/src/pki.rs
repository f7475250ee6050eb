//! Certificates and a token for the intake: what a Falco DaemonSet (client
//! certificate) and Falcosidekick (bearer token) would be given.

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// The files `peregrine run` and the load generator use.
pub struct Credentials {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub token_file: PathBuf,
    pub token: String,
}

/// Writes a CA, the intake's certificate (127.0.0.1, localhost), Falco's
/// client certificate and a token file into `dir`.
pub fn write(dir: &Path) -> anyhow::Result<Credentials> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "peregrine-bench CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = params.self_signed(&ca_key)?;
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, ca_cert.pem())?;
    let issuer = Issuer::new(params, ca_key);

    let leaf = |name: &str, server: bool| -> anyhow::Result<(PathBuf, PathBuf)> {
        let sans = if server {
            vec!["localhost".to_string(), "127.0.0.1".to_string()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let crt = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&crt, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((crt, key_path))
    };
    let (server_cert, server_key) = leaf("intake", true)?;
    let (client_cert, client_key) = leaf("falco", false)?;
    let token = format!("bench-{:016x}", crate::alerts::Rng::seeded().next());
    let token_file = dir.join("tokens");
    std::fs::write(&token_file, format!("{token}\n"))?;
    Ok(Credentials {
        ca,
        server_cert,
        server_key,
        client_cert,
        client_key,
        token_file,
        token,
    })
}
