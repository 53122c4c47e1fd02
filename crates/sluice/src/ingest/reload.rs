//! Certificates and API keys that change while serving: read again every
//! `ingest.reload_interval` and swapped in whole when they load.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use sluice_core::sync::RecoverRw;
use tokio_util::sync::CancellationToken;

use super::{Ingest, load_keys};
use crate::config::IngestSettings;
use crate::events::Reloaded;

/// The contents' digest of the files a reload follows (a missing file digests as empty).
fn digest_of(paths: &[&Path]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in paths {
        h.update(std::fs::read(p).unwrap_or_default());
        h.update([0u8]);
    }
    h.finalize().into()
}

/// Reads the TLS certificate and key and the API key file again every
/// `ingest.reload_interval`, and swaps in what changed: a certificate rotated by cert-manager
/// (Kubernetes updates the mounted Secret in place) or a new key list is served without a
/// restart. A file that does not load leaves the current one in place, said in the log and in
/// `sluice_ingest_reload_errors_total`.
pub(super) async fn reload(
    ic: IngestSettings,
    state: Arc<Ingest>,
    tls: Option<crate::serve::SharedTls>,
    stop: CancellationToken,
) {
    let tls_files: Vec<&Path> = [ic.tls_cert.as_deref(), ic.tls_key.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let mut tls_seen = digest_of(&tls_files);
    let key_file = ic.api_keys_file.as_deref();
    let mut keys_seen = digest_of(&key_file.into_iter().collect::<Vec<_>>());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ic.reload_interval) => {}
        }
        if let (Some(shared), Some(cert), Some(key)) = (&tls, &ic.tls_cert, &ic.tls_key) {
            let now = digest_of(&tls_files);
            if now != tls_seen {
                let loaded = tls_acceptor(cert, key);
                if let Ok(acceptor) = &loaded {
                    *shared.write_locked() = acceptor.clone();
                    tls_seen = now;
                }
                Reloaded::Tls {
                    cert,
                    outcome: loaded.as_ref().map(|_| ()),
                }
                .emit();
            }
        }
        if let Some(path) = key_file {
            let now = digest_of(&[path]);
            if now != keys_seen {
                let loaded = load_keys(&ic);
                let outcome = match loaded {
                    Ok(keys) => {
                        let n = keys.len();
                        *state.keys.write_locked() = Arc::new(keys);
                        keys_seen = now;
                        Ok(n)
                    }
                    Err(error) => Err(error),
                };
                Reloaded::ApiKeys {
                    file: path,
                    outcome: outcome.as_ref().copied(),
                }
                .emit();
            }
        }
    }
}

pub(super) fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read ingest.tls_cert {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("ingest.tls_cert {} is not PEM certificates", cert.display()))?;
    if certs.is_empty() {
        bail!("ingest.tls_cert {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "cannot read ingest.tls_key {} as a PEM private key",
            key.display()
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("ingest.tls_cert and ingest.tls_key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
