//! TLS server configs from PEM files: a default certificate and extra ones chosen by SNI. TLS 1.2 and 1.3 only
//! (rustls has nothing older), ALPN `h2` then `http/1.1`.

use std::{collections::HashMap, path::Path, sync::Arc};

use rustls::{
    ServerConfig,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::{Error, config::TlsConfig};

/// Builds the rustls config of one TLS listener.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(ring::default_provider());
    let default = load_certified_key(&tls.cert, &tls.key, &provider)?;
    let mut by_name = HashMap::new();
    for sni in &tls.sni {
        let key = Arc::new(load_certified_key(&sni.cert, &sni.key, &provider)?);
        for name in &sni.names {
            by_name.insert(name.to_ascii_lowercase(), key.clone());
        }
    }
    let resolver = SniResolver {
        default: Arc::new(default),
        by_name,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(format!("protocol versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, Error> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| Error::Tls(format!("reading certificate {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Error::Tls(format!("{} holds no PEM certificate", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("reading private key {}: {e}", key.display())))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| Error::Tls(format!("private key {}: {e}", key.display())))?;
    let ck = CertifiedKey::new(chain, signing_key);
    ck.keys_match().map_err(|e| {
        Error::Tls(format!(
            "certificate {} does not match key {}: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(ck)
}

#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let picked = hello
            .server_name()
            .and_then(|name| self.by_name.get(&name.to_ascii_lowercase()))
            .unwrap_or(&self.default);
        Some(picked.clone())
    }
}
