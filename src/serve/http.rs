//! Connections: accepted up to a cap, each with a deadline on its request heads (which also
//! ends idle keep-alive connections), and all of them given a bounded time to finish on
//! SIGTERM. The routes themselves are axum's; this is what runs them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

/// The most a request head (request line and headers) may take: longer is answered 431.
pub const MAX_HEAD: usize = 64 << 10;

/// How connections are served.
pub struct Limits {
    /// Open connections at most; those beyond are answered 503 and closed.
    pub connections: usize,
    /// From a connection's start, or the end of its last answer, to the end of the next request
    /// head; past it the connection is closed.
    pub head_within: Duration,
    /// After SIGTERM, how long requests in flight have to finish before the process exits.
    pub drain_within: Duration,
}

/// Connections turned away at the cap that are still being answered; past this many, a
/// connection is closed without an answer (a flood must not cost a file per connection).
const TURNING_AWAY: usize = 256;

/// Serves `app` on `listener` until `stop` completes, then lets the requests in flight finish,
/// for at most `limits.drain_within`. Returns whether every connection finished in time.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) -> bool {
    let open = Arc::new(Semaphore::new(limits.connections));
    let turning_away = Arc::new(Semaphore::new(TURNING_AWAY));
    let (closing, closed) = watch::channel(false);
    let service = TowerToHyperService::new(app);
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of files or a connection reset before it was taken: wait, then go on.
                    debug!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match open.clone().try_acquire_owned() {
            Ok(permit) => {
                let (service, mut closed) = (service.clone(), closed.clone());
                let head_within = limits.head_within;
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(head_within)
                        .max_buf_size(MAX_HEAD)
                        .serve_connection(TokioIo::new(Reasons::new(stream)), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = async { drop(closed.wait_for(|c| *c).await) } => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                    drop(permit);
                });
            }
            Err(_) => match turning_away.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        turn_away(stream).await;
                        drop(permit);
                    });
                }
                Err(_) => drop(stream),
            },
        }
    }
    drop(listener);
    let _ = closing.send(true);
    let all = limits.connections as u32;
    let drained = tokio::time::timeout(limits.drain_within, open.acquire_many(all)).await;
    if drained.is_err() {
        warn!(
            seconds = limits.drain_within.as_secs(),
            "stopping: connections still open after the drain deadline are closed"
        );
    }
    drained.is_ok()
}

/// Answers a connection over the cap 503 and closes it, reading what the client sent
/// meanwhile so that the close does not reset the connection before the client reads the
/// answer.
async fn turn_away(mut stream: TcpStream) {
    let body = r#"{"error": "too many open connections (SMTRAIN_SERVE_CONNECTIONS); retry shortly", "status": 503}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let second = Duration::from_secs(1);
    if tokio::time::timeout(second, stream.write_all(answer.as_bytes())).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(second, async {
        while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}

/// Raises this process's open-file limit to its hard limit, so that the connection cap, not
/// the default soft limit (often 1,024), decides how many clients are served. Returns the
/// limit in force.
pub fn raise_file_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The connection cap in force: the setting, less what the open-file limit cannot hold (the
/// model, logs and the listener need some files too).
pub fn connection_cap(setting: usize, file_limit: u64) -> usize {
    let cap = (file_limit.saturating_sub(64) as usize).min(setting).max(1);
    if cap < setting {
        info!(
            connections = cap,
            file_limit,
            "the open-file limit holds fewer connections than SMTRAIN_SERVE_CONNECTIONS"
        );
    }
    cap
}

/// A connection whose answers from the HTTP layer itself get a JSON reason: hyper answers a
/// request head it cannot parse (400, 414, 431) with an empty body, and the contract is a JSON
/// `{"error", "status"}` for every error. Those answers are recognised by their status and
/// their `content-length: 0`, which no answer of the routes has for these statuses.
struct Reasons<S> {
    inner: S,
    /// The rewritten answer, how much of it is written, and the length hyper asked to write.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> Reasons<S> {
    fn new(inner: S) -> Self {
        Self { inner, pending: None }
    }
}

/// `head` with a JSON body, if it is one of hyper's own bodiless error answers.
fn with_reason(head: &[u8]) -> Option<Vec<u8>> {
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let why = match status {
        b"400" => "the request line or a header could not be parsed",
        b"414" => "the request URI is too long",
        b"431" => "the request line and headers are over 64 KB",
        _ => return None,
    };
    const EMPTY: &[u8] = b"\r\ncontent-length: 0\r\n";
    let at = head.windows(EMPTY.len()).position(|w| w == EMPTY)?;
    if !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let code = std::str::from_utf8(status).ok()?;
    let body = format!("{{\"error\": \"{why}\", \"status\": {code}}}");
    let mut out = head[..at].to_vec();
    out.extend_from_slice(b"\r\ncontent-type: application/json");
    out.extend_from_slice(format!("\r\ncontent-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(&head[at + EMPTY.len()..]);
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl<S: AsyncRead + Unpin> AsyncRead for Reasons<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Reasons<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match with_reason(buf) {
                Some(answer) => this.pending = Some((answer, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        let (answer, written, asked) = this.pending.as_mut().expect("a pending answer");
        while *written < answer.len() {
            match ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[*written..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => *written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let asked = *asked;
        this.pending = None;
        Poll::Ready(Ok(asked))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodiless_protocol_errors_get_a_json_reason() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
                     date: Mon, 07 Dec 2026 01:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(with_reason(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("\r\ncontent-type: application/json\r\n"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())), "{head}");
        assert!(head.ends_with("GMT"), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 431);
        // Answers with bodies, and other statuses, are left alone.
        assert_eq!(with_reason(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 40\r\n\r\n"), None);
        assert_eq!(
            with_reason(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(with_reason(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), None);
    }
}
