//! tokio glue (feature `tokio`): async listeners from the named sockets and an
//! async upgrade. The drain signal and the connection tracker have their async
//! waits next to their blocking ones ([`crate::DrainSignal::recv`],
//! [`crate::ConnectionTracker::idle`]).

use std::net::ToSocketAddrs;
use std::path::Path;

use crate::{Error, Handover, Result};

impl Handover {
    /// [`Handover::tcp_listener`] as a tokio listener. Must be called within a
    /// tokio runtime.
    pub fn tokio_tcp_listener(
        &self,
        name: &str,
        addr: impl ToSocketAddrs,
    ) -> Result<tokio::net::TcpListener> {
        let listener = self.tcp_listener(name, addr)?;
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(|e| Error::io(format!("registering socket {name:?} with tokio"), e))
    }

    /// [`Handover::udp_socket`] as a tokio socket.
    pub fn tokio_udp_socket(
        &self,
        name: &str,
        addr: impl ToSocketAddrs,
    ) -> Result<tokio::net::UdpSocket> {
        let socket = self.udp_socket(name, addr)?;
        socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UdpSocket::from_std(socket))
            .map_err(|e| Error::io(format!("registering socket {name:?} with tokio"), e))
    }

    /// [`Handover::unix_listener`] as a tokio listener.
    pub fn tokio_unix_listener(
        &self,
        name: &str,
        path: impl AsRef<Path>,
    ) -> Result<tokio::net::UnixListener> {
        let listener = self.unix_listener(name, path)?;
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(listener))
            .map_err(|e| Error::io(format!("registering socket {name:?} with tokio"), e))
    }

    /// [`Handover::upgrade`] on a blocking thread, for async callers.
    pub async fn upgrade_async(&self) -> Result<u32> {
        let handover = self.clone();
        tokio::task::spawn_blocking(move || handover.upgrade())
            .await
            .map_err(|e| Error::io("upgrade task", std::io::Error::other(e)))?
    }
}
