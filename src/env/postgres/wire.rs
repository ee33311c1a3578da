//! A connection that speaks only PostgreSQL's simple query protocol, for a step client's loop.
//!
//! tokio-postgres puts a task and two channels between a statement and its socket: a request
//! goes down one channel to the connection's task, which writes it, reads the answer and sends
//! it back up another. A tight loop of one-row UPDATEs paid for that hand-off with every step
//! (`locklab bench driver`: a loop of this protocol written straight on the socket did 1.02×
//! pgbench where tokio-postgres did 0.93×). A step client runs text statements one at a time,
//! so it needs none of that: it writes its statement and reads the answer itself.
//!
//! What it keeps of tokio-postgres's behaviour, so a step file's verdicts do not change:
//! - the same startup (client_encoding UTF8, user, database, options, application_name) and
//!   authentication (trust, password, MD5, SCRAM-SHA-256), without TLS as everywhere in
//!   locklab;
//! - an error the server sends while no statement is running (a FATAL from
//!   idle_in_transaction_session_timeout, say) ends the connection: the next statement fails
//!   as `connection-closed`, not with that error's SQLSTATE;
//! - dropped, it says goodbye (Terminate) as a dropped tokio-postgres client does.

use std::time::Duration;

use anyhow::Context;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::config::Host;

use crate::history::class;
use crate::workload::OpError;

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(bytes).await,
            Stream::Unix(s) => s.write_all(bytes).await,
        }
    }

    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_buf(buf).await,
            Stream::Unix(s) => s.read_buf(buf).await,
        }
    }

    /// What is there to read without waiting (Ok(0): the other side closed).
    fn try_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Unix(s) => s.try_read(buf),
        }
    }

    fn try_write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(bytes),
            Stream::Unix(s) => s.try_write(bytes),
        }
    }
}

/// The longest message a server sends (PostgreSQL's own limit on a field is 1 GB).
const MAX_MESSAGE: i32 = 0x4000_0000;

/// One backend message: its type byte and its body.
struct Msg {
    kind: u8,
    body: std::ops::Range<usize>,
}

/// A session on the server (or through a pooler), one simple query at a time.
pub struct Wire {
    stream: Stream,
    /// What was read and not yet taken, from `start`.
    buf: Vec<u8>,
    start: usize,
    out: Vec<u8>,
    /// The backend's key for a cancel request.
    pub pid: i32,
    pub secret: i32,
    /// A statement was left unanswered (its future dropped) or the server ended the session:
    /// nothing more can be sent on it.
    closed: bool,
}

/// Why a statement failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The server's error: its SQLSTATE and message.
    Db { code: String, message: String },
    /// The connection is gone (or was never usable again).
    Closed,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Db { code, message } => write!(f, "{message} (SQLSTATE {code})"),
            WireError::Closed => f.write_str("the connection is closed"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<WireError> for OpError {
    fn from(e: WireError) -> OpError {
        match e {
            // As `OpError::from(tokio_postgres::Error)` names them.
            WireError::Db { message, .. } if message.contains(class::QUERY_WAIT_TIMEOUT) => {
                OpError::new(class::QUERY_WAIT_TIMEOUT)
            }
            WireError::Db { message, .. } if message.contains("no more connections allowed") => {
                OpError::new(class::POOLER_FULL)
            }
            WireError::Db { code, .. } => OpError { class: code },
            WireError::Closed => OpError::new(class::CONNECTION_CLOSED),
        }
    }
}

impl Wire {
    /// Connects as `cfg` says (its hosts in turn, within its connect timeout) and logs in.
    pub async fn connect(cfg: &tokio_postgres::Config) -> anyhow::Result<Wire> {
        let timeout = cfg
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(5));
        let mut last = None;
        for i in 0..cfg.get_hosts().len().max(cfg.get_hostaddrs().len()) {
            let port = cfg
                .get_ports()
                .get(i)
                .or_else(|| cfg.get_ports().first())
                .copied()
                .unwrap_or(5432);
            let opened = tokio::time::timeout(timeout, open(cfg, i, port)).await;
            let stream = match opened {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    last = Some(e);
                    continue;
                }
                Err(_) => {
                    last = Some(anyhow::anyhow!("timed out connecting"));
                    continue;
                }
            };
            let mut wire = Wire {
                stream,
                buf: Vec::with_capacity(8192),
                start: 0,
                out: Vec::with_capacity(256),
                pid: 0,
                secret: 0,
                closed: false,
            };
            match tokio::time::timeout(timeout, wire.startup(cfg)).await {
                Ok(Ok(())) => return Ok(wire),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(anyhow::anyhow!("timed out logging in")),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no host to connect to")))
    }

    async fn startup(&mut self, cfg: &tokio_postgres::Config) -> anyhow::Result<()> {
        let user = cfg.get_user().context("no user to log in as")?;
        let mut params = vec![("client_encoding", "UTF8"), ("user", user)];
        if let Some(db) = cfg.get_dbname() {
            params.push(("database", db));
        }
        if let Some(options) = cfg.get_options() {
            params.push(("options", options));
        }
        if let Some(app) = cfg.get_application_name() {
            params.push(("application_name", app));
        }
        let mut body = 196_608i32.to_be_bytes().to_vec();
        for (k, v) in params {
            for s in [k, v] {
                body.extend_from_slice(s.as_bytes());
                body.push(0);
            }
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        self.stream.write_all(&msg).await?;
        let password = cfg.get_password().unwrap_or_default().to_vec();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let m = self.next().await.map_err(|_| {
                anyhow::anyhow!("the server closed the connection while logging in")
            })?;
            let body = self.buf[m.body.clone()].to_vec();
            match m.kind {
                b'R' => {
                    let code = be_i32(&body, 0).context("a malformed authentication request")?;
                    let rest = &body[4..];
                    match code {
                        0 => {}
                        3 => self.send(b'p', &cstring(&password)).await?,
                        5 => {
                            let salt: [u8; 4] = rest
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .context("a malformed MD5 request")?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                &password,
                                salt,
                            );
                            self.send(b'p', &cstring(hash.as_bytes())).await?;
                        }
                        10 => {
                            let offered: Vec<&[u8]> = rest.split(|b| *b == 0).collect();
                            anyhow::ensure!(
                                offered.contains(&SCRAM_SHA_256.as_bytes()),
                                "the server offers no SASL mechanism locklab speaks"
                            );
                            let s = ScramSha256::new(&password, ChannelBinding::unsupported());
                            let mut out = cstring(SCRAM_SHA_256.as_bytes());
                            out.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                            out.extend_from_slice(s.message());
                            self.send(b'p', &out).await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().context("SASL out of order")?;
                            s.update(rest)?;
                            let out = s.message().to_vec();
                            self.send(b'p', &out).await?;
                        }
                        12 => scram.as_mut().context("SASL out of order")?.finish(rest)?,
                        other => anyhow::bail!(
                            "an authentication method locklab does not speak ({other})"
                        ),
                    }
                }
                b'K' => {
                    self.pid = be_i32(&body, 0).context("a malformed BackendKeyData")?;
                    self.secret = be_i32(&body, 4).context("a malformed BackendKeyData")?;
                }
                b'E' => {
                    let (code, message) = error_fields(&body);
                    return Err(WireError::Db { code, message }.into());
                }
                b'Z' => return Ok(()),
                _ => {}
            }
        }
    }

    async fn send(&mut self, kind: u8, body: &[u8]) -> std::io::Result<()> {
        self.out.clear();
        self.out.push(kind);
        self.out
            .extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        self.out.extend_from_slice(body);
        self.stream.write_all(&self.out).await
    }

    /// The next whole message, reading as needed.
    async fn next(&mut self) -> Result<Msg, WireError> {
        loop {
            if let Some(m) = self.parse()? {
                return Ok(m);
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => {
                    self.closed = true;
                    return Err(WireError::Closed);
                }
                Ok(_) => {}
            }
        }
    }

    /// A whole message at `start`, if one is there.
    /// A length no server sends (under its own 4 bytes, or over the 1 GB a message may hold)
    /// ends the session rather than waiting for the rest of it until the cut-off.
    fn parse(&mut self) -> Result<Option<Msg>, WireError> {
        let at = self.start;
        let Some(len) = be_i32(&self.buf, at + 1) else {
            return Ok(None);
        };
        if !(4..=MAX_MESSAGE).contains(&len) {
            self.closed = true;
            return Err(WireError::Closed);
        }
        let end = at + 1 + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        self.start = end;
        Ok(Some(Msg {
            kind: self.buf[at],
            body: at + 5..end,
        }))
    }

    /// An error the server sent while no statement ran ends the session, as tokio-postgres
    /// ends it; notices and parameter changes are read past.
    fn unsolicited(&mut self) -> Result<(), WireError> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.try_read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    return Err(WireError::Closed);
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.closed = true;
                    return Err(WireError::Closed);
                }
            }
        }
        while let Some(m) = self.parse()? {
            if !matches!(m.kind, b'N' | b'S' | b'A') {
                self.closed = true;
                return Err(WireError::Closed);
            }
        }
        Ok(())
    }

    /// Runs `sql` (one or more statements) and reads its answer to the end; with `capture`,
    /// the first column of the last row any statement returned (None: no row; Some(None):
    /// NULL). The first error the server reported fails it.
    pub async fn query(
        &mut self,
        sql: &str,
        capture: bool,
    ) -> Result<Option<Option<String>>, WireError> {
        if self.closed {
            return Err(WireError::Closed);
        }
        self.unsolicited()?;
        // Until the answer is read to its end, an abandoned statement leaves the session
        // unusable.
        self.closed = true;
        self.out.clear();
        self.out.push(b'Q');
        self.out
            .extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        self.out.extend_from_slice(sql.as_bytes());
        self.out.push(0);
        if self.stream.write_all(&self.out).await.is_err() {
            return Err(WireError::Closed);
        }
        let mut error = None;
        let mut last = None;
        loop {
            // A FATAL error comes with no ReadyForQuery after it, only the end of the
            // connection: the error is the statement's, as tokio-postgres reports it.
            let m = match self.next().await {
                Ok(m) => m,
                Err(closed) => return Err(error.unwrap_or(closed)),
            };
            match m.kind {
                b'E' if error.is_none() => {
                    let (code, message) = error_fields(&self.buf[m.body]);
                    error = Some(WireError::Db { code, message });
                }
                b'D' if capture => last = Some(first_column(&self.buf[m.body])),
                // COPY FROM STDIN has no data to send here: refused, and the server answers
                // with an error.
                b'G' => self
                    .send(b'f', b"COPY FROM STDIN is not supported\0")
                    .await
                    .map_err(|_| WireError::Closed)?,
                b'Z' => break,
                _ => {}
            }
        }
        self.closed = false;
        match error {
            Some(e) => Err(e),
            None => Ok(last),
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        // Terminate, best effort and without waiting: the server ends the session now rather
        // than when it notices the socket closed.
        let _ = self.stream.try_write(&[b'X', 0, 0, 0, 4]);
    }
}

async fn open(cfg: &tokio_postgres::Config, i: usize, port: u16) -> anyhow::Result<Stream> {
    if let Some(addr) = cfg.get_hostaddrs().get(i) {
        let s = tokio::net::TcpStream::connect((*addr, port)).await?;
        let _ = s.set_nodelay(true);
        return Ok(Stream::Tcp(s));
    }
    match cfg.get_hosts().get(i) {
        Some(Host::Tcp(host)) => {
            let s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = s.set_nodelay(true);
            Ok(Stream::Tcp(s))
        }
        Some(Host::Unix(dir)) => Ok(Stream::Unix(
            tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?,
        )),
        None => anyhow::bail!("no host to connect to"),
    }
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn cstring(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    v.push(0);
    v
}

/// An ErrorResponse's SQLSTATE (`C`) and message (`M`).
fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        let text = String::from_utf8_lossy(&tail[..end]).into_owned();
        match kind {
            b'C' => code = text,
            b'M' => message = text,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    (code, message)
}

/// A DataRow's first column as text (None: NULL, or no column).
fn first_column(body: &[u8]) -> Option<String> {
    let n = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    if n < 1 {
        return None;
    }
    let len = be_i32(body, 2)?;
    let len = usize::try_from(len).ok()?;
    Some(String::from_utf8_lossy(body.get(6..6 + len)?).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_error_s_code_and_message_and_a_row_s_first_column() {
        let body = b"SERROR\0VERROR\0C55P03\0Mcould not obtain lock\0\0";
        assert_eq!(
            error_fields(body),
            ("55P03".to_string(), "could not obtain lock".to_string())
        );
        let mut row = 2i16.to_be_bytes().to_vec();
        row.extend_from_slice(&3i32.to_be_bytes());
        row.extend_from_slice(b"abc");
        row.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(first_column(&row), Some("abc".to_string()));
        let mut null = 1i16.to_be_bytes().to_vec();
        null.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(first_column(&null), None);
        assert_eq!(first_column(&0i16.to_be_bytes()), None);
    }

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// A session over one end of a socket pair, the other end playing the server with `reply`
    /// (then closing its side when `close`).
    async fn answered(reply: Vec<u8>, close: bool) -> Result<Option<Option<String>>, WireError> {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
        let mut wire = Wire {
            stream: Stream::Unix(ours),
            buf: Vec::new(),
            start: 0,
            out: Vec::new(),
            pid: 0,
            secret: 0,
            closed: false,
        };
        let server = tokio::spawn(async move {
            let mut query = [0u8; 64];
            let _ = theirs.read(&mut query).await;
            let _ = theirs.write_all(&reply).await;
            if !close {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
        let got = tokio::time::timeout(Duration::from_secs(5), wire.query("SELECT 1", true))
            .await
            .expect("an answer, not a wait");
        server.abort();
        got
    }

    #[tokio::test]
    async fn a_statement_s_answer_is_read_to_its_end_and_a_broken_one_ends_the_session() {
        let mut row = 1i16.to_be_bytes().to_vec();
        row.extend_from_slice(&1i32.to_be_bytes());
        row.push(b'7');
        let ok = [
            msg(b'T', b"x"),
            msg(b'D', &row),
            msg(b'C', b"SELECT 1\0"),
            msg(b'Z', b"I"),
        ]
        .concat();
        assert_eq!(answered(ok, false).await, Ok(Some(Some("7".into()))));
        // A FATAL with the end of the connection after it, no ReadyForQuery: its code.
        let fatal = msg(b'E', b"SFATAL\0C57P01\0Mterminating connection\0\0");
        assert_eq!(
            answered(fatal, true).await,
            Err(WireError::Db {
                code: "57P01".into(),
                message: "terminating connection".into()
            })
        );
        // A length no server sends: the session ends at once rather than at the cut-off.
        let mut bad = vec![b'D'];
        bad.extend_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(answered(bad, false).await, Err(WireError::Closed));
        assert_eq!(answered(Vec::new(), true).await, Err(WireError::Closed));
    }

    #[test]
    fn errors_are_named_as_tokio_postgres_s_are() {
        let db = |code: &str, message: &str| {
            OpError::from(WireError::Db {
                code: code.into(),
                message: message.into(),
            })
            .class
        };
        assert_eq!(db("55P03", "could not obtain lock"), "55P03");
        assert_eq!(db("08P01", "query_wait_timeout"), class::QUERY_WAIT_TIMEOUT);
        assert_eq!(
            db("08P01", "no more connections allowed (max_client_conn)"),
            class::POOLER_FULL
        );
        assert_eq!(
            OpError::from(WireError::Closed).class,
            class::CONNECTION_CLOSED
        );
    }
}
