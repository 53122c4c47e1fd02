//! Serving an HTTP API that no client can hold open: what `sluice ingest` listens with.
//!
//! - **Connection limit**: at most `max_connections` are served at once; beyond it new
//!   connections wait in the kernel's listen backlog (a slot is taken at accept, before any TLS
//!   handshake, so half-open handshakes count too).
//! - **Header-read timeout**: a request's headers must arrive within `header_read_timeout` once
//!   the connection waits for them. hyper starts that wait again after each response, so the
//!   same bound closes an idle keep-alive connection.
//! - **TLS handshake timeout**: the same bound.
//! - **Body-read timeout**: the handler's (see `ingest`), answered 408.
//! - **Graceful shutdown with a deadline**: on shutdown the listener stops, every connection is
//!   told to finish its request in flight and close; after `shutdown_timeout` what is left is
//!   closed. [`serve`] returns by then, whatever the clients do.

use sluice_core::sync::RecoverRw;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What keeps clients from holding the port.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub shutdown_timeout: Duration,
}

/// A connection's stream: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

type Accepted = (Box<dyn Io>, SocketAddr, OwnedSemaphorePermit);

/// The TLS identity served, swappable while serving (a rotated certificate): each handshake
/// takes the acceptor current when its connection arrives.
pub type SharedTls = Arc<std::sync::RwLock<tokio_rustls::TlsAcceptor>>;

/// Accepts connections (at most `max_connections` held at once), handshaking TLS when given,
/// and hands them over on a channel. Ends when the receiver is dropped or `stop` fires.
fn spawn_acceptor(
    listener: TcpListener,
    tls: Option<SharedTls>,
    limits: ServeLimits,
    stop: CancellationToken,
) -> mpsc::Receiver<Accepted> {
    let (tx, rx) = mpsc::channel::<Accepted>(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let slot = tokio::select! {
                _ = stop.cancelled() => return,
                s = slots.clone().acquire_owned() => match s {
                    Ok(s) => s,
                    Err(_) => return,
                },
            };
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(c) => c,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            match &tls {
                None => {
                    if tx
                        .send((Box::new(tcp) as Box<dyn Io>, peer, slot))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(shared) => {
                    let acceptor = shared.read_locked().clone();
                    let tx = tx.clone();
                    let handshake = limits.header_read_timeout;
                    tokio::spawn(async move {
                        match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let _ =
                                    tx.send((Box::new(stream) as Box<dyn Io>, peer, slot)).await;
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%error, %peer, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    rx
}

/// Serves `app` on `listener` until `shutdown`, then drains within `limits.shutdown_timeout`.
/// Returns how many connections had to be closed at the deadline.
pub async fn serve(
    listener: TcpListener,
    tls: Option<SharedTls>,
    app: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) -> Result<usize> {
    let stop_accepting = CancellationToken::new();
    let mut incoming = spawn_acceptor(listener, tls, limits, stop_accepting.clone());
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = incoming.recv() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Some((io, peer, slot)) = accepted else {
            break;
        };
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        let header_read_timeout = limits.header_read_timeout;
        conns.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    stop_accepting.cancel();
    drop(incoming);
    let deadline = tokio::time::Instant::now() + limits.shutdown_timeout;
    while !conns.is_empty() {
        match tokio::time::timeout_at(deadline, conns.join_next()).await {
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let cut = conns.len();
    if cut > 0 {
        tracing::warn!(
            connections = cut,
            "ingest.shutdown_timeout passed: closing connections still open"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    Ok(cut)
}
