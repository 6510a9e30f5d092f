//! Accepting HTTP connections for both binaries (the daemon's API and LAN
//! peers, the relay), with the limits `axum::serve` does not set:
//!
//! - **A cap on open connections, counted at accept.** A connection holds
//!   its slot for its whole life, through a WebSocket upgrade, so sockets
//!   that never upgrade (or never send a byte) count too. Past the cap a
//!   new socket is closed at once and `refused` is called (for metrics).
//! - **A header-read timeout.** A client has [`Limits::header_read_timeout`]
//!   to send a request's headers, so a socket trickling bytes cannot hold a
//!   slot for ever.
//!
//! - **TLS inside the slot**, when configured: the handshake (bounded in
//!   time) runs after the slot is taken, and the connection's TLS binding
//!   ([`ConnectionBinding`]) is on every request, so a WebSocket handler
//!   can bind its handshake to the TLS session it runs in ([`crate::tls`]).
//!
//! The server is HTTP/1.1 (with upgrades for WebSockets), which is all the
//! API, the relay and the peers speak. Shutdown is graceful: accepting
//! stops, and open requests finish.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;

/// Limits of one listening socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most (HTTP requests and WebSockets alike).
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
}

/// The [`crate::tls::Binding`] of the connection a request came on (`None`
/// on plain TCP), in every request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionBinding(pub Option<crate::tls::Binding>);

/// What one connection's task needs.
struct Connection {
    router: Router,
    limits: Limits,
    /// Changes when the server shuts down.
    stopped: watch::Receiver<()>,
}

impl Connection {
    /// Serves HTTP/1 (and upgrades) on `io` until it closes.
    async fn serve<I>(mut self, io: Held<I>, binding: Option<crate::tls::Binding>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let binding = ConnectionBinding(binding);
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let router = router.clone();
            req.extensions_mut().insert(binding);
            async move {
                let answer = router.oneshot(req.map(Body::new)).await;
                Ok::<_, Infallible>(answer.unwrap_or_else(|never| match never {}))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = self.stopped.changed() => conn.as_mut().graceful_shutdown(),
        }
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// [`Limits::header_read_timeout`] by default: ample for any real client.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's socket with its slot: the slot is freed when the socket
/// is dropped, whether it served requests or a WebSocket.
struct Held<I> {
    io: I,
    _slot: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Held<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Held<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`
/// resolves; then stops accepting and waits for open requests (not
/// WebSockets, which their own tasks end) to finish. With `tls`, every
/// connection first completes a TLS handshake (within
/// [`crate::tls::HANDSHAKE_TIMEOUT`]) inside its slot, so sockets that
/// stall mid-handshake count against the cap too.
pub async fn serve<L>(
    mut listener: L,
    tls: Option<Arc<crate::tls::ServerConfig>>,
    router: Router,
    limits: Limits,
    refused: Arc<dyn Fn() + Send + Sync>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener,
    L::Io: Unpin,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    // Dropping the sender tells every connection to finish; each holds a
    // receiver until it has, so `closed()` waits for them.
    let (stop, stopped) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused();
            drop(io);
            continue;
        };
        let connection = Connection {
            router: router.clone(),
            limits,
            stopped: stopped.clone(),
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                return connection.serve(Held { io, _slot: slot }, None).await;
            };
            match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                Ok(Ok(tls)) => {
                    let binding = crate::tls::binding(tls.get_ref().1);
                    connection.serve(Held { io: tls, _slot: slot }, binding).await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        });
    }
    drop(stopped);
    drop(listener);
    let _ = stop.send(());
    stop.closed().await;
    Ok(())
}
