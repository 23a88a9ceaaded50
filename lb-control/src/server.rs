//! The API's HTTP/1 server: hyper under the axum router, with the limits
//! that keep clients from starving it.
//!
//! - a connection cap (a semaphore): a connection beyond it is closed as
//!   soon as it is accepted, so idle clients can never use up the process's
//!   file descriptors, and the cap is kept below the descriptor limit;
//! - a header-read timeout (hyper's): half-sent request heads are dropped;
//! - an idle timeout: a connection with no bytes either way is closed;
//! - accept errors are logged, at most once per [`LOG_EVERY`], and never
//!   spin the accept loop.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::Instant,
};

use crate::config::Api;

/// Repeated warnings (accept errors, refused connections) are logged at
/// most this often, with the number left out.
pub const LOG_EVERY: Duration = Duration::from_secs(5);
/// Pause after an accept error (e.g. out of file descriptors) so the loop
/// waits for connections to close instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// File descriptors kept for everything but API connections: maps, the
/// program, netlink sockets, the state file, the runtime.
const FD_RESERVE: u64 = 128;

/// The server's limits, from the `[api]` config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl From<&Api> for ServerLimits {
    fn from(api: &Api) -> Self {
        Self {
            header_read_timeout: api.header_read_timeout,
            idle_timeout: api.idle_timeout,
            max_connections: api.max_connections,
        }
    }
}

/// Raises the soft file-descriptor limit to the hard one (systemd and
/// shells start services at a soft 1024 for `select()`'s sake; this
/// process does not use `select()`), and returns how many connections fit
/// under it: `wanted`, or less if the limit is lower.
pub fn fit_connections_to_fd_limit(wanted: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "raising the file descriptor limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft).unwrap_or(1024)
        }
    };
    let fit = usize::try_from(soft.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX).max(1);
    if fit < wanted {
        tracing::warn!(
            max_connections = wanted,
            fd_limit = soft,
            using = fit,
            "api.max_connections does not fit the file descriptor limit (raise LimitNOFILE)"
        );
        fit
    } else {
        wanted
    }
}

/// Logs a repeated event at most once per period.
struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    fn new(every: Duration) -> Self {
        Self { every, last: None, suppressed: 0 }
    }

    /// `Some(events left out since the last log)` when it is time to log.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then stops
/// accepting, lets open calls finish and returns once every connection is
/// closed (bound that wait from outside).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut accept_errors = RateLimited::new(LOG_EVERY);
    let mut refused = RateLimited::new(LOG_EVERY);
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if let Some(suppressed) = accept_errors.ready() {
                    tracing::warn!(error = %e, suppressed, "accepting an API connection failed");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Closed at once: the client learns now, and no descriptor is held.
            drop(stream);
            if let Some(suppressed) = refused.ready() {
                tracing::warn!(%peer, max_connections = limits.max_connections, suppressed,
                    "API connection limit reached; closing new connections");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(stream, app.clone(), limits, stop_rx.clone(), permit));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One connection: hyper's HTTP/1 with the header-read timeout, closed
/// gracefully (after the call in flight) when idle or when the server
/// stops, and dropped if it does not close within another header timeout.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: ServerLimits,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked { inner: stream, activity: activity.clone() });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut close_by: Option<Instant> = None;
    loop {
        let idle_until = activity.last() + limits.idle_timeout;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "API connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(idle_until), if close_by.is_none() => {
                if activity.last() + limits.idle_timeout <= Instant::now() {
                    conn.as_mut().graceful_shutdown();
                    close_by = Some(Instant::now() + limits.header_read_timeout);
                }
            }
            _ = stop.changed(), if close_by.is_none() => {
                conn.as_mut().graceful_shutdown();
                close_by = Some(Instant::now() + limits.header_read_timeout);
            }
            _ = tokio::time::sleep_until(close_by.unwrap_or_else(Instant::now)), if close_by.is_some() => return,
        }
    }
}

/// When a connection last moved a byte.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream that records its activity.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_logs_once_per_period_and_counts_the_rest() {
        let mut log = RateLimited::new(Duration::from_millis(200));
        assert_eq!(log.ready(), Some(0));
        assert_eq!(log.ready(), None);
        assert_eq!(log.ready(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(log.ready(), Some(2));
        assert_eq!(log.ready(), None);
    }
}
