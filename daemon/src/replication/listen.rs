//! The `--peer-listen` server: LAN peers dialling in.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use sitesync_sync::accept::ConnectionBinding;
use sitesync_sync::session::Session;
use sitesync_sync::tls::Channel;
use tokio::net::TcpListener;

use super::*;

/// A LAN peer's WebSocket on `--peer-listen`, always over TLS: the
/// handshake is bound to the connection's TLS session.
pub(super) async fn accept_peer(
    State(repl): State<Arc<Replication>>,
    Extension(ConnectionBinding(binding)): Extension<ConnectionBinding>,
    ws: WebSocketUpgrade,
) -> Response {
    sitesync_sync::link::limit_upgrade(ws).on_upgrade(move |socket| async move {
        let Some(token) = repl.token.clone() else { return };
        let session = Session::server(
            repl.service.device().0,
            &repl.device_name,
            Arc::new(token),
            rand::random(),
        )
        .over(Channel {
            binding,
            server_trusted: false,
        })
        .comparing()
        .with_revocations(repl.book.clone());
        let observer = Arc::new(PeerObserver {
            repl: repl.clone(),
            peer_id: Mutex::new(None),
            connected: Default::default(),
        });
        let reason = repl.run_session(socket, session, observer.clone()).await.reason;
        let id = *observer.peer_id.lock().unwrap_or_else(|p| p.into_inner());
        match id {
            Some(id) => repl.update(id, |v| {
                v.state = "disconnected";
                v.latency_ms = None;
                v.quality = None;
                v.last_error = Some(reason);
            }),
            None => tracing::info!(%reason, "LAN peer refused"),
        }
    })
}

/// Binds `--peer-listen` and serves LAN peers in the background.
pub async fn listen_for_peers(
    repl: Arc<Replication>,
    addr: SocketAddr,
    limits: sitesync_sync::accept::Limits,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = repl.serve_peers(listener, limits).await {
            tracing::error!(error = %e, "LAN peer listener failed");
        }
    });
    Ok(bound)
}

impl Replication {
    /// Accepts LAN peers on `listener` (WebSocket at `/`), admitting only
    /// devices of this daemon's own organisation.
    pub async fn serve_peers(
        self: Arc<Self>,
        listener: TcpListener,
        limits: sitesync_sync::accept::Limits,
    ) -> std::io::Result<()> {
        let app = Router::new()
            .route("/", get(accept_peer))
            .with_state(self.clone());
        let counted = self.clone();
        let refused = Arc::new(move || {
            tracing::debug!("a LAN peer socket past --max-peers was closed");
            counted.counters.peers_refused.inc();
        });
        let config = tls::self_signed_config().map_err(std::io::Error::other)?;
        let listener = sitesync_sync::link::without_nagle(listener);
        sitesync_sync::accept::serve(
            listener,
            Some(config),
            app,
            limits,
            refused,
            std::future::pending(),
        )
        .await
    }
}
