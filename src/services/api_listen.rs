//! The API's listener: plain HTTP or TLS (and mTLS), every connection bounded — at most
//! `api.max_connections` open (one more is closed at once), its TLS handshake and its request
//! headers within their timeouts, closed when idle (no request in flight and no byte either
//! way) for `api.idle_timeout_ms` — and nothing kept of it once it closes. Slow clients hold
//! neither file descriptors the store needs nor memory for long.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use vigil_query::api;

/// How long and how many.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub tls_handshake_timeout_ms: u64,
    pub header_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
}

/// What a connection is doing: when a byte last moved (ms since `epoch`) and the requests in
/// flight.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(since))
    }
}

/// A stream that records when bytes move.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request in flight on a connection, for as long as it lives (a cancelled one included).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Serve `app` on `listener` (TLS when `tls` is given) until `stopped`, then let requests in
/// flight finish (for up to 10 s).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    limits: ConnLimits,
) -> anyhow::Result<()> {
    assert!(limits.max_connections > 0);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let places = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut conns = tokio::task::JoinSet::new();
    let (mut refused, mut said) = (0u64, None::<Instant>);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            // Closed connections are forgotten as they close.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait rather than spin.
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(place) = places.clone().try_acquire_owned() else {
                    refused += 1;
                    if said.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(refused, max_connections = limits.max_connections, %peer,
                            "API connections refused: as many are open as api.max_connections allows");
                        said = Some(Instant::now());
                    }
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, app, watcher) = (acceptor.clone(), app.clone(), graceful.watcher());
                conns.spawn(async move {
                    let _place = place;
                    let Some(acceptor) = acceptor else {
                        return connection(tcp, peer, None, app, watcher, limits).await;
                    };
                    let handshake = Duration::from_millis(limits.tls_handshake_timeout_ms);
                    let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(t)) => t,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "TLS handshake not done in time: closed");
                            return;
                        }
                    };
                    use sha2::Digest;
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| api::ClientCert(sha2::Sha256::digest(c.as_ref()).into()));
                    connection(tls, peer, cert, app, watcher, limits).await;
                });
            }
        }
    }
    // Requests in flight finish (for up to 10 s); idle connections close at once.
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    conns.abort_all();
    Ok(())
}

/// One connection: HTTP/1 or HTTP/2, the peer (and client certificate) on every request,
/// closed once idle for `idle_timeout_ms`.
async fn connection<T>(
    io: T,
    peer: SocketAddr,
    cert: Option<api::ClientCert>,
    app: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
    limits: ConnLimits,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let activity = Arc::new(Activity {
        epoch: Instant::now(),
        last_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let io = Tracked {
        inner: io,
        activity: activity.clone(),
    };
    let on_request = activity.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        if let Some(c) = cert {
            req.extensions_mut().insert(c);
        }
        on_request.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(on_request.clone());
        let answer = app.clone().oneshot(req.map(axum::body::Body::new));
        async move {
            let r = answer.await;
            drop(in_flight);
            r
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that closes its side once it has sent a request still has it run (and
    // recorded): its answer just has nowhere to go.
    builder
        .http1()
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    builder.http2().timer(TokioTimer::new());
    let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), svc));
    tokio::pin!(conn);
    let idle_limit = Duration::from_millis(limits.idle_timeout_ms);
    let mut tick = tokio::time::interval(
        idle_limit
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(50)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut conn => return,
            _ = tick.tick() => {
                if activity.idle_for().is_some_and(|d| d >= idle_limit) {
                    // Nothing in flight: dropping the connection closes it.
                    tracing::debug!(%peer, "idle API connection closed");
                    return;
                }
            }
        }
    }
}
