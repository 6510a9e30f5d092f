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
/// WebSockets, which their own tasks end) to finish.
pub async fn serve<L>(
    mut listener: L,
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
        let router = router.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let router = router.clone();
                async move {
                    let answer = router.oneshot(req.map(Body::new)).await;
                    Ok::<_, Infallible>(answer.unwrap_or_else(|never| match never {}))
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let io = TokioIo::new(Held { io, _slot: slot });
            let conn = builder.serve_connection(io, service).with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = stopped.changed() => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(stopped);
    drop(listener);
    let _ = stop.send(());
    stop.closed().await;
    Ok(())
}
