//! TLS for every link, and the channel binding that ties a handshake's
//! proofs to the TLS session they travel in.
//!
//! - **Servers.** A relay on the internet terminates TLS with the operator's
//!   certificate ([`server_config`]); a daemon's `--peer-listen` always
//!   speaks TLS, with a certificate it makes itself at start-up
//!   ([`self_signed_config`]): nobody on a site LAN can get one a CA
//!   signs for a DHCP address. [`crate::accept::serve`] runs the TLS
//!   handshake and tags each request with the session's [`Binding`].
//! - **Clients.** [`ClientTls`] dials `wss://` under a [`Trust`]: a relay's
//!   certificate must chain to a trusted root; a LAN peer's may be its own,
//!   and the session then accepts only a handshake proof bound to this
//!   very TLS session. A device in the middle (which must run a TLS
//!   session of its own with each side) cannot produce a proof that
//!   verifies.
//!
//! The binding is 32 bytes of RFC 5705 keying material exported under
//! [`EXPORTER_LABEL`] (the `tls-exporter` binding of RFC 9266): both ends
//! of one TLS session compute the same bytes; two sessions spliced by a
//! relaying attacker do not. Relays sign without it (a relay may sit behind
//! a TLS-terminating proxy, which would change the bytes); their link is
//! authenticated by their WebPKI certificate instead.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// A server's TLS configuration, as [`crate::accept::serve`] takes it.
pub use rustls::ServerConfig;

/// The label of the keying material a handshake binds to.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-sitesync-channel-binding";

pub use crate::credentials::{Binding, Channel};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the certificate chain {path}: {detail}")]
    Cert { path: String, detail: String },
    #[error("reading the private key {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("the certificate and key do not form a TLS configuration: {0}")]
    Config(String),
    #[error("reading CA certificates from {path}: {detail}")]
    Roots { path: String, detail: String },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_with(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// A server configuration from PEM files (`sitesync-relay serve
/// --tls-cert/--tls-key`).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            detail: "no PEM certificate in it".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        detail: e.to_string(),
    })?;
    server_with(chain, key)
}

/// A server configuration with a certificate made now, for a daemon's
/// `--peer-listen`. Its key never leaves the process and a new one is made
/// at every start: clients do not trust it (nothing could vouch for it on a
/// site LAN), they trust the bound handshake instead (module docs).
pub fn self_signed_config() -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let made = rcgen::generate_simple_self_signed(vec!["sitesync-peer".to_owned()])
        .map_err(|e| TlsError::Config(format!("making the LAN certificate: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    server_with(vec![made.cert.der().clone()], key)
}

/// Time a client has to finish its TLS handshake ([`crate::accept`] runs
/// it inside the connection's slot).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The [`Binding`] of a finished TLS session, either end.
pub fn binding<D>(conn: &rustls::ConnectionCommon<D>) -> Option<Binding> {
    conn.export_keying_material([0u8; 32], EXPORTER_LABEL, None).ok()
}

/// The [`Binding`] of a connection this side dialled (`None` on plain
/// `ws://`).
pub fn client_binding(stream: &tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>) -> Option<Binding> {
    match stream {
        tokio_tungstenite::MaybeTlsStream::Rustls(s) => binding(s.get_ref().1),
        _ => None,
    }
}

/// What a dialled server's certificate must satisfy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Signed by a trusted root for the name dialled (a relay). Its
    /// handshake proof may be unbound: TLS already says who it is.
    Roots,
    /// Any certificate whose key the server holds (another daemon's
    /// `--peer-listen`, which makes its own): its handshake proof must be
    /// bound to this TLS session ([`Channel`]).
    Binding,
}

/// How a device dials `wss://`: relays against the platform's trusted
/// roots plus any extra CA certificates (`--relay-ca`, for a relay a
/// private CA signed), LAN peers against their bound handshake.
pub struct ClientTls {
    roots: Arc<rustls::ClientConfig>,
    binding: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    /// The platform's roots plus the PEM files in `extra_roots`.
    pub fn new(extra_roots: &[std::path::PathBuf]) -> Result<Arc<Self>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        // Platform roots are best effort: a machine without any still
        // reaches a relay whose CA is given explicitly.
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        for path in extra_roots {
            let bad = |detail: String| TlsError::Roots {
                path: path.display().to_string(),
                detail,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        let builder = || {
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))
        };
        let with_roots = builder()?.with_root_certificates(roots).with_no_client_auth();
        let any_key = AnyKey {
            schemes: provider().signature_verification_algorithms,
        };
        let with_binding = builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(any_key))
            .with_no_client_auth();
        Ok(Arc::new(Self {
            roots: Arc::new(with_roots),
            binding: Arc::new(with_binding),
        }))
    }

    /// The configuration to dial with under `trust`.
    pub fn config(&self, trust: Trust) -> Arc<rustls::ClientConfig> {
        match trust {
            Trust::Roots => self.roots.clone(),
            Trust::Binding => self.binding.clone(),
        }
    }
}

/// Accepts any certificate whose holder proves its key in the TLS
/// handshake: a LAN peer's own. Who the peer is, the bound handshake
/// proof decides.
#[derive(Debug)]
struct AnyKey {
    schemes: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyKey {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    // The TLS handshake's own signatures are always checked against the
    // certificate's key: the server holds the key of the certificate it
    // showed.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.schemes)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.schemes)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.supported_schemes()
    }
}
