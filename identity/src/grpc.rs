//! Mutual TLS for tonic: a server that only accepts admitted peers and hands
//! each handler the caller's [`Principal`], and a channel that presents an
//! [`Identity`].
//!
//! tonic's built-in TLS cannot take a custom client-certificate verifier
//! (needed for revocation), so the TLS layer is tokio-rustls here and tonic
//! serves the already-authenticated streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, server::TlsStream};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{RevocationList, client_config, principal_from_cert, server_config};
use crate::{Identity, IdentityError, Principal, Result};

/// The authenticated peer of a connection, available to every request on it.
#[derive(Clone, Debug)]
pub struct Peer {
    pub principal: Principal,
    pub remote: Option<SocketAddr>,
}

/// A TLS stream whose client certificate has been verified. It fails its
/// next read or write, and wakes an idle reader, once the peer's
/// certificate is revoked: revocation cuts live sessions, not only new ones.
pub struct AdmittedStream {
    inner: TlsStream<TcpStream>,
    peer: Peer,
    watch: RevocationWatch,
    /// Its place in the connection counts, given back when it closes.
    _slot: Slot,
}

/// One connection's look-out for its peer's revocation, on either side.
struct RevocationWatch {
    principal: Principal,
    revoked: RevocationList,
    changes: tokio_stream::wrappers::WatchStream<u64>,
    /// Set once the peer is found revoked: every later poll fails too.
    cut: bool,
}

impl RevocationWatch {
    /// Watching from now on: check `is_revoked` after this, so a revocation
    /// in between is not missed.
    fn new(principal: Principal, revoked: RevocationList) -> Self {
        RevocationWatch {
            changes: tokio_stream::wrappers::WatchStream::from_changes(revoked.changes()),
            principal,
            revoked,
            cut: false,
        }
    }

    fn is_revoked(&self) -> bool {
        self.revoked.is_revoked(&self.principal.serial)
    }

    /// The error to end the connection with, if the peer has been revoked
    /// since the last look; registers `cx` to be woken at the next change.
    fn cut(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        use tokio_stream::Stream as _;
        let revoked = || {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the peer's certificate has been revoked",
            )
        };
        if self.cut {
            return Some(revoked());
        }
        let mut changed = false;
        while let Poll::Ready(Some(_)) = Pin::new(&mut self.changes).poll_next(cx) {
            changed = true;
        }
        if changed && self.is_revoked() {
            tracing::warn!(principal = %self.principal, "closing the connection of a revoked certificate");
            self.cut = true;
            return Some(revoked());
        }
        None
    }
}

/// How many authenticated connections a server holds open at once, per
/// identity and in all (`[connections]` in `node.toml`). A connection over
/// either limit is told so with an HTTP/2 GOAWAY (`ENHANCE_YOUR_CALM`, the
/// reason as debug data) right after its handshake, and closed.
/// Handshakes not yet finished are counted apart (a stranger must not take
/// the places of the admitted): at most `handshakes` at once, each for at
/// most [`HANDSHAKE_TIMEOUT`]; while that many are under way the server
/// accepts no more TCP connections, so further clients wait in the
/// listen backlog rather than cost memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    pub per_identity: usize,
    pub total: usize,
    pub handshakes: usize,
}

impl Default for ConnectionLimits {
    /// Enough for a consortium member's peers and a busy client pool (the
    /// KMS benchmark opens 64 channels as one identity).
    fn default() -> Self {
        ConnectionLimits {
            per_identity: 256,
            total: 8192,
            handshakes: 1024,
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_identity: HashMap<[u8; 32], usize>,
}

/// One counted connection of `identity`.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    identity: [u8; 32],
}

impl Slot {
    /// Takes a place for a connection of `identity`, or says which limit is full.
    fn take(
        counts: &Arc<Mutex<Counts>>,
        limits: ConnectionLimits,
        identity: [u8; 32],
    ) -> std::result::Result<Slot, String> {
        let mut c = counts.lock().expect("connection counts lock");
        let mine = c.per_identity.get(&identity).copied().unwrap_or(0);
        if mine >= limits.per_identity {
            return Err(format!(
                "this identity already has {mine} connections open, the most one identity may; reuse a channel or close some"
            ));
        }
        if c.total >= limits.total {
            return Err(format!(
                "the node has {} connections open, its limit; retry later",
                c.total
            ));
        }
        c.total += 1;
        *c.per_identity.entry(identity).or_default() += 1;
        Ok(Slot {
            counts: counts.clone(),
            identity,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().expect("connection counts lock");
        c.total -= 1;
        if let Some(n) = c.per_identity.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                c.per_identity.remove(&self.identity);
            }
        }
    }
}

/// Ends an authenticated connection the server will not serve, in a way an
/// HTTP/2 client reports: the server's SETTINGS preface, then GOAWAY with
/// no streams accepted, `ENHANCE_YOUR_CALM` and `reason` (RFC 9113 6.5, 6.8).
async fn turn_away(mut tls: TlsStream<TcpStream>, reason: &str) {
    use tokio::io::AsyncWriteExt;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let mut out = Vec::with_capacity(9 + 9 + 8 + reason.len());
    let mut frame = |kind: u8, payload: &[u8]| {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, 0, 0, 0, 0, 0]);
        out.extend_from_slice(payload);
    };
    frame(SETTINGS, &[]);
    let mut goaway = Vec::with_capacity(8 + reason.len());
    goaway.extend_from_slice(&0u32.to_be_bytes());
    goaway.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    goaway.extend_from_slice(reason.as_bytes());
    frame(GOAWAY, &goaway);
    // Closing with the client's preface unread would reset the connection
    // and could destroy the GOAWAY in flight: read until the client, having
    // read it, closes.
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        use tokio::io::AsyncReadExt;
        if tls.write_all(&out).await.is_ok() && tls.flush().await.is_ok() {
            let mut sink = [0u8; 1024];
            while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        let _ = tls.shutdown().await;
    })
    .await;
}

impl AdmittedStream {
    fn cut(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        self.watch.cut(cx)
    }
}

impl Connected for AdmittedStream {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for AdmittedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AdmittedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(e) = self.cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
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
        if let Some(e) = self.cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A client that has not finished its TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Accepts TCP connections on `listener` and yields those whose TLS handshake
/// (with an admitted, unrevoked client certificate) succeeds, within the
/// default [`ConnectionLimits`]. Handshakes run concurrently so a slow or
/// hostile client cannot stall the accept loop.
pub fn incoming(
    listener: TcpListener,
    id: &Identity,
    revoked: RevocationList,
) -> Result<tokio_stream::wrappers::ReceiverStream<std::io::Result<AdmittedStream>>> {
    incoming_within(listener, id, revoked, ConnectionLimits::default())
}

/// [`incoming`], holding at most `limits` connections open.
pub fn incoming_within(
    listener: TcpListener,
    id: &Identity,
    revoked: RevocationList,
    limits: ConnectionLimits,
) -> Result<tokio_stream::wrappers::ReceiverStream<std::io::Result<AdmittedStream>>> {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let mut cfg = server_config(id, revoked.clone())?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(limits.handshakes.max(1)));
    tokio::spawn(async move {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            // A place for the handshake before the accept: backpressure
            // into the listen backlog, not a queue of sockets in memory.
            let handshake = handshakes
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    c
                }
                Err(e) => {
                    // Out of file descriptors and the like: retrying at once
                    // would spin on the same error.
                    tracing::warn!(error = %e, ?backoff, "accept failed; retrying after a pause");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let revoked = revoked.clone();
            let counts = counts.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(handshake);
                let tls = match tls {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                        metrics::counter!("yilian_tls_handshake_failures_total").increment(1);
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                        crate::tls::refused("handshake-timeout");
                        return;
                    }
                };
                let principal = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(principal_from_cert);
                let Some(Ok(principal)) = principal else {
                    tracing::info!(%remote, "connection without an identity refused");
                    return;
                };
                let peer = Peer {
                    principal,
                    remote: Some(remote),
                };
                let watch = RevocationWatch::new(peer.principal.clone(), revoked);
                // A revocation between the handshake and the watch above.
                if watch.is_revoked() {
                    return;
                }
                let slot = match Slot::take(&counts, limits, peer.principal.public_key) {
                    Ok(slot) => slot,
                    Err(reason) => {
                        tracing::warn!(principal = %peer.principal, %remote, %reason, "connection turned away");
                        turn_away(tls, &reason).await;
                        return;
                    }
                };
                let _ = tx
                    .send(Ok(AdmittedStream {
                        inner: tls,
                        peer,
                        watch,
                        _slot: slot,
                    }))
                    .await;
            });
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The authenticated caller of a gRPC request served through [`incoming`].
pub fn caller<T>(req: &tonic::Request<T>) -> std::result::Result<Principal, tonic::Status> {
    req.extensions()
        .get::<Peer>()
        .map(|p| p.principal.clone())
        .ok_or_else(|| tonic::Status::unauthenticated("no admitted client certificate"))
}

/// Connects to a node at `addr` (`host:port`), presenting `id`.
pub async fn connect(addr: &str, id: &Identity) -> Result<Channel> {
    endpoint(addr)?
        .connect_with_connector(dialer(addr, id, None)?)
        .await
        .map_err(|e| IdentityError::Connect {
            addr: addr.to_owned(),
            reason: error_chain(&e),
        })
}

/// As [`connect`], but connects on first use (and again after a failure),
/// so a peer that is down now is reached once it is back.
pub fn connect_lazy(addr: &str, id: &Identity) -> Result<Channel> {
    lazy(addr, id, None)
}

/// As [`connect_lazy`], for a dialer that keeps the revocation list (a
/// member dialing its peers): a node whose certificate is in `revoked` is
/// refused after the handshake, and a live connection to one that becomes
/// revoked is cut, as the server side cuts its clients.
pub fn connect_lazy_watched(
    addr: &str,
    id: &Identity,
    revoked: &RevocationList,
) -> Result<Channel> {
    lazy(addr, id, Some(revoked.clone()))
}

fn lazy(addr: &str, id: &Identity, revoked: Option<RevocationList>) -> Result<Channel> {
    Ok(endpoint(addr)?
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect_with_connector_lazy(dialer(addr, id, revoked)?))
}

fn endpoint(addr: &str) -> Result<Endpoint> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| IdentityError::Address(addr.to_owned()))
}

/// A mutual-TLS connection as tonic's channel sees it.
type TlsIo = TokioIo<Replay<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Dials `addr` with mutual TLS as `id`.
fn dialer(
    addr: &str,
    id: &Identity,
    revoked: Option<RevocationList>,
) -> Result<
    impl tower::Service<Uri, Response = TlsIo, Error = std::io::Error, Future = impl Send>
    + Clone
    + Send
    + 'static,
> {
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| IdentityError::Address(addr.to_owned()))?
        .to_owned();
    let server_name =
        ServerName::try_from(host).map_err(|_| IdentityError::Address(addr.to_owned()))?;
    let mut cfg = client_config(id)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(cfg));
    let target = addr.to_owned();
    Ok(tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let target = target.clone();
        let revoked = revoked.clone();
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            let watch = match revoked {
                Some(list) => Some(watch_server(&tls, list, &target)?),
                None => None,
            };
            let mut io = await_verdict(tls).await?;
            io.watch = watch;
            Ok::<_, std::io::Error>(TokioIo::new(io))
        }
    }))
}

/// The look-out for the revocation of the node `tls` reached at `addr`,
/// or the refusal of a node already revoked.
fn watch_server(
    tls: &tokio_rustls::client::TlsStream<TcpStream>,
    revoked: RevocationList,
    addr: &str,
) -> std::io::Result<RevocationWatch> {
    let principal = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(principal_from_cert)
        .transpose()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the node at {addr} presented no certificate"),
            )
        })?;
    let watch = RevocationWatch::new(principal, revoked);
    if watch.is_revoked() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the certificate of the node at {addr} ({}) has been revoked",
                watch.principal
            ),
        ));
    }
    Ok(watch)
}

/// In TLS 1.3 the client finishes its handshake before the server has judged
/// the client's certificate, so a refusal (revoked, unknown authority) would
/// surface later as a bare "connection closed". The h2 server speaks first
/// (its SETTINGS frame), so reading that first record turns a refusal into
/// the server's own alert ("received fatal alert: CertificateRevoked"); the
/// bytes read are replayed to the HTTP/2 client.
async fn await_verdict(
    mut tls: tokio_rustls::client::TlsStream<TcpStream>,
) -> std::io::Result<Replay<tokio_rustls::client::TlsStream<TcpStream>>> {
    use tokio::io::AsyncReadExt as _;
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut first))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "node did not answer"))?
        .map_err(|e| std::io::Error::new(e.kind(), format!("refused by the node: {e}")))?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "refused by the node: connection closed during the handshake",
        ));
    }
    first.truncate(n);
    if let Some(reason) = go_away_reason(&first) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("refused by the node: {reason}"),
        ));
    }
    Ok(Replay {
        prefix: first,
        pos: 0,
        inner: tls,
        watch: None,
    })
}

/// The debug text of a GOAWAY among the complete HTTP/2 frames at the
/// start of `bytes` (RFC 9113 4.1, 6.8): a server turning the connection
/// away says why there (see `turn_away`).
fn go_away_reason(bytes: &[u8]) -> Option<String> {
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let body = rest.get(9..9 + len)?;
        if rest[3] == 0x7 && len >= 8 {
            return Some(String::from_utf8_lossy(&body[8..]).into_owned());
        }
        rest = &rest[9 + len..];
    }
    None
}

/// A client stream that first yields bytes already read from it, and
/// fails once its server's certificate is revoked, where it is watched.
pub struct Replay<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
    watch: Option<RevocationWatch>,
}

impl<S> Replay<S> {
    fn cut(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        self.watch.as_mut().and_then(|w| w.cut(cx))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.cut(cx) {
            return Poll::Ready(Err(e));
        }
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(e) = self.cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Joins an error and its sources, so a TLS alert buried under transport
/// errors reaches the user ("received fatal alert: CertificateRevoked").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_str = s.to_string();
        if !out.contains(&s_str) {
            out.push_str(": ");
            out.push_str(&s_str);
        }
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::go_away_reason;
    use proptest::prelude::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, 0, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_go_away_after_the_settings_gives_its_reason() {
        let mut goaway = vec![0, 0, 0, 0, 0, 0, 0, 0xb];
        goaway.extend_from_slice(b"too many");
        let mut bytes = frame(0x4, &[0, 3, 0, 0, 0, 100]);
        bytes.extend(frame(0x7, &goaway));
        assert_eq!(go_away_reason(&bytes).as_deref(), Some("too many"));
        // A server that serves: SETTINGS and WINDOW_UPDATE, no reason.
        let mut served = frame(0x4, &[0, 3, 0, 0, 0, 100]);
        served.extend(frame(0x8, &[0, 0, 0x10, 0]));
        assert_eq!(go_away_reason(&served), None);
        // A GOAWAY cut short is not read past its end.
        let cut = frame(0x7, &goaway);
        assert_eq!(go_away_reason(&cut[..cut.len() - 1]), None);
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = go_away_reason(&bytes);
        }
    }
}
