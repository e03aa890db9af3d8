//! TLS to etcd (`etcds://`): the CA that signs etcd's certificates
//! (`--cluster-ca`, else the Mozilla roots webpki-roots ships) and a client
//! certificate for etcd's `--client-cert-auth` (`--cluster-cert`,
//! `--cluster-key`). Read once; a file that does not parse is the command
//! line's error, at startup, not a retry loop later.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// The files of `--cluster-ca`, `--cluster-cert` and `--cluster-key`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

fn certificates(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{flag} {}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{flag} {}: no certificate in the file (PEM, BEGIN CERTIFICATE)", path.display()));
    }
    Ok(certs)
}

/// The rustls configuration for these files.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match &files.ca {
        Some(ca) => {
            for cert in certificates(ca, "--cluster-ca")? {
                roots.add(cert).map_err(|e| format!("--cluster-ca {}: {e}", ca.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    // ring, as ureq's own TLS uses (rustls deprecates it for lacking
    // post-quantum key exchange; aws-lc-rs would add a cmake build).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let config = match (&files.cert, &files.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, "--cluster-cert")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("--cluster-key {}: not a PEM private key: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("--cluster-cert and --cluster-key do not make a client certificate: {e}"))?
        }
        (Some(_), None) => return Err("--cluster-cert needs --cluster-key".into()),
        (None, Some(_)) => return Err("--cluster-key needs --cluster-cert".into()),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_missing_or_not_pem_are_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("lrpm-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let missing = dir.join("missing.pem");
        let error = |files: TlsFiles| client_config(&files).err().unwrap();
        assert!(error(TlsFiles { ca: Some(missing.clone()), ..Default::default() }).starts_with("--cluster-ca "));
        let e = error(TlsFiles { ca: Some(garbage.clone()), ..Default::default() });
        assert!(e.contains("no certificate"), "{e}");
        let e = error(TlsFiles { cert: Some(garbage.clone()), ..Default::default() });
        assert_eq!(e, "--cluster-cert needs --cluster-key");
        let e = error(TlsFiles { key: Some(garbage.clone()), ..Default::default() });
        assert_eq!(e, "--cluster-key needs --cluster-cert");
        // No CA: the public roots, and no client certificate.
        assert!(client_config(&TlsFiles::default()).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
