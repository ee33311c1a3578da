//! Cancelling a statement in flight, in a way a pooler survives.
//!
//! A cancel request is a connection of its own that carries one message. tokio-postgres closes
//! that connection as soon as the message is written; PgBouncer 1.18 (Debian 12's) crashes when
//! a cancel client goes away before it has finished forwarding the request to the server
//! (`FATAL ... disconnect_client(): bad client state: 0`, pgbouncer issue #801); even a
//! half-close (FIN after the message) reads to it as the client leaving. So locklab writes the
//! request and then waits, its side open, for the other side to close, as the protocol
//! intends (bounded: a pooler that never closes costs 5 s, not a hang).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::Host;
use tokio_postgres::{CancelToken, NoTls};

use super::PgTarget;

/// What it takes to cancel one session's statement: its token and where its server (or
/// pooler) listens.
#[derive(Clone)]
pub struct Canceller {
    key: Key,
    target: PgTarget,
}

/// The session's key: tokio-postgres's token, or the backend's key as a [`super::Wire`] got it.
#[derive(Clone)]
enum Key {
    Token(CancelToken),
    Backend { pid: i32, secret: i32 },
}

impl Canceller {
    pub fn new(client: &tokio_postgres::Client, target: &PgTarget) -> Canceller {
        Canceller {
            key: Key::Token(client.cancel_token()),
            target: target.clone(),
        }
    }

    pub fn of_wire(wire: &super::Wire, target: &PgTarget) -> Canceller {
        Canceller {
            key: Key::Backend {
                pid: wire.pid,
                secret: wire.secret,
            },
            target: target.clone(),
        }
    }

    /// Sends the cancel request; best effort, bounded to 5 s.
    pub async fn cancel(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.send()).await;
    }

    async fn send(&self) -> anyhow::Result<()> {
        let cfg = self.target.config("cancel")?;
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        match cfg.get_hosts().first() {
            Some(Host::Tcp(host)) => {
                let s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                self.over(UntilClosed::new(s)).await?;
            }
            Some(Host::Unix(dir)) => {
                let s =
                    tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?;
                self.over(UntilClosed::new(s)).await?;
            }
            None => anyhow::bail!("no host to send the cancel request to"),
        }
        Ok(())
    }

    async fn over<S>(&self, mut s: UntilClosed<S>) -> anyhow::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match &self.key {
            Key::Token(token) => token.cancel_query_raw(s, NoTls).await?,
            Key::Backend { pid, secret } => {
                use tokio::io::AsyncWriteExt;
                let mut msg = 16i32.to_be_bytes().to_vec();
                msg.extend_from_slice(&80_877_102i32.to_be_bytes());
                msg.extend_from_slice(&pid.to_be_bytes());
                msg.extend_from_slice(&secret.to_be_bytes());
                s.write_all(&msg).await?;
                s.shutdown().await?;
            }
        }
        Ok(())
    }
}

/// A stream whose shutdown first waits for the peer to close, and only then closes its own
/// side.
struct UntilClosed<S> {
    inner: S,
    peer_closed: bool,
}

impl<S> UntilClosed<S> {
    fn new(inner: S) -> UntilClosed<S> {
        UntilClosed {
            inner,
            peer_closed: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for UntilClosed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for UntilClosed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The peer answers a cancel request with nothing but closing the connection.
        let mut scratch = [0u8; 64];
        while !self.peer_closed {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                Poll::Ready(_) => self.peer_closed = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
