//! HTTPS: [`serve_tls`] is [`serve`](super::serve) with a rustls handshake
//! first (feature `tls`).
//!
//! The drain is the same as for plain HTTP: an HTTP/1.1 connection's next
//! response carries `Connection: close`, an HTTP/2 connection (chosen by ALPN
//! `h2`) gets GOAWAY and its streams in flight finish. A connection is
//! counted from its accept, so a handshake under way when the drain begins
//! completes in this process, and the connection is then drained like the
//! others.
//!
//! TLS connections are drained, never migrated: the session keys and
//! sequence numbers live in this process's rustls state, and handing a
//! socket with its session on to another process needs kernel TLS (kTLS),
//! which the kernels this was built on do not have. The successor serves
//! every new connection; a client's next connection after `Connection: close`
//! or GOAWAY goes there.
//!
//! **Certificates rotate with an upgrade:** each version loads its own
//! ([`server_config`] reads the files at start-up), so replacing the files
//! and upgrading is how a certificate is renewed, with no failed request.
//!
//! ```no_run
//! use handover::{http, Handover};
//! use hyper::{Request, Response};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let handover = Handover::new()?;
//! let tls = http::tls::server_config("cert.pem".as_ref(), "key.pem".as_ref())?;
//! let listener = handover.tokio_tcp_listener("web", "127.0.0.1:8443")?;
//! let server = tokio::spawn(http::serve_tls(
//!     listener,
//!     &handover,
//!     tls,
//!     |_req: Request<hyper::body::Incoming>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("hello\n")))
//!     },
//! ));
//! handover.ready()?;
//! server.await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::connection::{Shared, Transport};
use super::{HttpService, Summary};
use crate::Handover;

/// How long a client may take over its handshake. A connection that never
/// completes one would otherwise hold a drain open until its deadline.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTPS on `listener` with `service` until `handover` drains, as
/// [`serve`](super::serve) does for plain HTTP; resolves when every
/// connection has ended or been closed at the deadline, and the successor's
/// probation is over (if the successor dies on probation, it accepts again).
///
/// `config` is used as given, except that an empty ALPN list becomes `h2`,
/// `http/1.1` (a client that asks for neither gets HTTP/1.1).
pub fn serve_tls<S, M>(
    listener: TcpListener,
    handover: &Handover,
    config: Arc<ServerConfig>,
    service: S,
) -> impl Future<Output = Summary> + Send + 'static
where
    S: HttpService<M>,
{
    let config = if config.alpn_protocols.is_empty() {
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    } else {
        config
    };
    let shared = Arc::new(Shared {
        handler: service.into_handler(),
        drain: handover.drain_signal(),
        handover: handover.clone(),
        // No name: TLS connections neither leave nor arrive by migration.
        listener: None,
        transport: Transport::Tls(TlsAcceptor::from(config)),
    });
    super::run(listener, shared, None)
}

/// Completes the server side of a handshake: the stream, and whether the
/// client chose HTTP/2. `None` if it failed or took too long (logged).
pub(super) async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
) -> Option<(TlsStream<TcpStream>, bool)> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            Some((tls, http2))
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}

/// Why [`server_config`] could not build a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from {}: {source}", path.display())]
    Pem {
        /// `certificates` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {}", .0.display())]
    NoCertificate(PathBuf),
    /// rustls refused the certificates and key (a key that does not match,
    /// an unsupported algorithm).
    #[error("unusable certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server configuration from a PEM certificate chain (leaf first) and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1), with rustls's safe defaults (TLS 1.2
/// and 1.3, the *ring* provider) and ALPN `h2`, `http/1.1`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ConfigError> {
    let pem = |what, source| ConfigError::Pem {
        what,
        path: cert.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|source| pem("certificates", source))?;
    if chain.is_empty() {
        return Err(ConfigError::NoCertificate(cert.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| ConfigError::Pem {
        what: "private key",
        path: key.to_owned(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
