//! HTTPS for the tests: certificates made at run time (rcgen), a rustls
//! client configuration that trusts exactly one of them, and HTTPS clients
//! under load that reconnect only when the server says `Connection: close`.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::clients::{read_response, Seen};

/// Longest any client runs, whatever the test does.
const LIFETIME: Duration = Duration::from_secs(180);

/// A self-signed certificate for `localhost` and its key, written as PEM files.
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Certificate {
    /// A new certificate and key, written to `dir/NAME.crt` and `dir/NAME.key`.
    pub fn generate(dir: &Path, name: &str) -> Certificate {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        Certificate {
            cert,
            key,
            der: made.cert.der().clone(),
        }
    }

    /// Copies this certificate's files over `other`'s (by rename, as a
    /// deployment would).
    pub fn install_as(&self, other: &Certificate) {
        for (from, to) in [(&self.cert, &other.cert), (&self.key, &other.key)] {
            let staging = to.with_extension("staging");
            std::fs::copy(from, &staging).unwrap();
            std::fs::rename(&staging, to).unwrap();
        }
    }

    /// A client configuration trusting only this certificate, asking for
    /// `alpn` (e.g. `h2`, `http/1.1`).
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A TLS connection to `addr` as `localhost`, handshake done.
pub fn connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(tls)
}

/// HTTPS clients, each one request at a time, that never retry: any error
/// ends the client and is recorded. Keep-alive clients reconnect only after
/// a response that said `Connection: close` (as any client does); the others
/// open a new connection per request.
pub struct HttpsLoad {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Seen>>,
}

impl HttpsLoad {
    pub fn start(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        keep_alive: usize,
        fresh: usize,
    ) -> HttpsLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let threads = (0..keep_alive + fresh)
            .map(|index| {
                let (stop, answered, config) = (
                    Arc::clone(&stop),
                    Arc::clone(&answered),
                    Arc::clone(&config),
                );
                let reuse = index < keep_alive;
                std::thread::spawn(move || client(addr, &config, reuse, &stop, &answered))
            })
            .collect();
        HttpsLoad {
            stop,
            answered,
            threads,
        }
    }

    /// Requests answered so far, by all clients.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits until `more` requests beyond `from` were answered.
    pub fn wait_for(&self, from: u64, more: u64, timeout: Duration) -> bool {
        super::try_wait_until(timeout, || (self.answered() >= from + more).then_some(())).is_some()
    }

    /// Stops every client; what each saw.
    pub fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("a client thread panicked"))
            .collect()
    }
}

fn client(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    reuse: bool,
    stop: &AtomicBool,
    answered: &AtomicU64,
) -> Seen {
    let mut seen = Seen::default();
    let started = Instant::now();
    let request: &[u8] = if reuse {
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    };
    let outcome = (|| -> Result<(), String> {
        let mut connection = None;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < LIFETIME {
            // The stream, and the bytes read past the last response.
            let (tls, pending) = match &mut connection {
                Some(open) => open,
                None => connection.insert((connect(addr, config)?, Vec::new())),
            };
            tls.write_all(request).map_err(|e| format!("write: {e}"))?;
            let response = read_response(tls, pending)?;
            if response.status != 200 {
                return Err(format!("status {}", response.status));
            }
            seen.answered_by(response.pid);
            seen.verified += 1;
            answered.fetch_add(1, Ordering::Relaxed);
            if response.close || !reuse {
                seen.told_to_close += u64::from(response.close && reuse);
                connection = None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    })();
    seen.broken = outcome.err();
    seen
}
