//! Accepting connections so that a crowd of peers cannot take the server from the fleet: one
//! accept loop for plaintext and TLS ([`accept`]), a cap on open connections that sheds the
//! least useful connection to make room ([`Connections`]), an IO wrapper ([`Guarded`]) that
//! closes a connection which stays silent after it was accepted or goes idle later, and a
//! waiting room ([`upgrade`]) that keeps a connection away from TLS and HTTP/2 until it speaks.
//!
//! # What the loop and the table do
//!
//! - **Accept errors back off** (50 ms, doubling to 1 s, back to 50 ms after a success) instead
//!   of retrying at once: out of file descriptors (EMFILE, ENFILE) the listener stays readable,
//!   and an immediate retry spins a core. The failures are logged at most once every 5 s, with
//!   their count. Errors that concern one connection only (it was reset before it was accepted)
//!   are skipped without a pause.
//! - **At most `Limits::max_connections` connections are open**, and never more than the
//!   process's open-file limit minus a reserve (an eighth of it, at least 64) for the listener,
//!   files and the runtime; at start the soft limit is raised to the hard one. At the cap a new
//!   connection sheds the open connection that is worth least: first one whose client
//!   certificate was refused, then one that never sent a byte, then one that never carried an
//!   admitted request, the longest idle first within each class. A connection that carried an
//!   admitted request is shed only if it has been idle for half the idle timeout (an honest
//!   client's connection carries a PING at least every 20 s); otherwise the new connection is
//!   closed at once, as it is while [`MAX_SHEDDING`] shed connections have yet to close.
//!   Either way the count `connection_limit` rises. A peer that reopens its connections as
//!   fast as they are shed costs an accept, a scan of the table and a close each (the
//!   `idle_connections` bench measures it).
//! - **Silent and idle connections are closed**: a connection must send its first byte (after
//!   the TLS handshake, under TLS: the handshake must finish too) within
//!   `Limits::first_bytes_timeout` of being accepted (`connection_silent`), and must not go
//!   `Limits::idle_timeout` without sending a byte later (`connection_idle`). The server pings
//!   every peer at a third of the idle timeout (at most every 20 s), so a live peer always has
//!   something to send. Under mutual TLS, a connection whose client certificate was refused
//!   (see [`crate::net::admission`]) is closed [`REFUSED_LINGER`] later, once the refusal had time
//!   to reach the client (`connection_unauthenticated`).
//!
//! # Memory a peer can hold
//!
//! A peer that has not authenticated gets no request past [`crate::net::admission`]: each of its
//! streams is answered at once, before its body is read, so it holds no message buffer. What
//! it can hold is the state of its connections, and only as many as the cap allows, each for
//! at most the first-bytes deadline if it sends nothing, the idle timeout if it stops, and one
//! second after a refused certificate. A connection that never sends a byte holds its socket,
//! a table entry, a parked task and a timer: about 2 KB of the process's memory (5,000 of them
//! measured at +9 MB resident), besides the kernel's socket buffers. Once it speaks, per
//! connection (hyper's and h2's defaults, set explicitly in [`crate::net::server`]): a read buffer of at most one frame (16 KiB frames), the
//! HPACK table (4 KiB), one header block being decoded (at most 16 KiB, the header list limit),
//! the rustls record buffers under TLS (about 34 KiB), and per open stream a few hundred bytes
//! of h2 state plus the refusal waiting to be sent. With the defaults, 10,000 connections ×
//! (about 70 KiB + 1,024 streams × about 0.5 KiB) stays under 6 GiB in the worst case, and
//! under 1 GiB for peers that do not also open every stream they may; a tighter
//! `--max-connections` or `--max-streams-per-connection` lowers it in proportion. Authenticated
//! clients may also fill a message buffer per open stream (up to `max_chunk_bytes` + 64 KiB),
//! bounded in total by `Limits::max_streams`.

use crate::config::Limits;
use crate::net::auth::AuthError;
use crate::refusal::{Refusal, RefusalCounter};
use futures::Stream;
use futures::task::AtomicWaker;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info, warn};

/// First pause after a failed accept; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between failed accepts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Failed accepts are logged at most this often, with how many failed since.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// How long a connection whose client certificate was refused stays open, so the refusal
/// reaches the client before the connection closes.
pub(crate) const REFUSED_LINGER: Duration = Duration::from_secs(1);
/// Most connections shed but not closed yet; past it a new connection at the cap is closed
/// instead. A shed connection's descriptor is freed when its task next runs, so while the
/// runtime is busy this bounds the descriptors open to the cap plus this many, well within the
/// reserve under the open-file limit.
const MAX_SHEDDING: usize = 32;
/// `EMFILE` and `ENFILE`: the process or the system is out of file descriptors (the same
/// numbers on Linux, macOS and the BSDs).
const OUT_OF_DESCRIPTORS: [i32; 2] = [24, 23];

/// A connection that never sent a byte.
const SILENT: u8 = 0;
/// A connection that sent bytes but no admitted request yet.
const SPOKE: u8 = 1;
/// A connection that carried an admitted request.
const ADMITTED: u8 = 2;

/// Identifies an open connection: its local and remote addresses (unique among the open
/// connections of a listener, and what tonic hands every request in [`TcpConnectInfo`]).
type Key = (SocketAddr, SocketAddr);

/// What the table knows about one open connection, shared between the table and the
/// connection's [`Guarded`] stream.
#[derive(Debug)]
pub(crate) struct Conn {
    key: Key,
    /// Milliseconds since [`Table::epoch`] of the last byte read (of the accept until then).
    last_read: AtomicU64,
    /// [`SILENT`], [`SPOKE`] or [`ADMITTED`].
    class: AtomicU8,
    /// Set when the table sheds the connection; its stream fails on its next poll.
    shed: AtomicBool,
    /// Milliseconds since [`Table::epoch`] at which the connection closes whatever it does;
    /// `u64::MAX` for never.
    close_at: AtomicU64,
    /// Why the connection's client certificate was refused, once it was.
    refusal: OnceLock<AuthError>,
    /// Wakes the task polling the connection when it is shed or given a closing time.
    waker: AtomicWaker,
}

impl Conn {
    /// Marks the connection as one that carried an admitted request.
    pub(crate) fn admitted(&self) {
        if self.class.load(Ordering::Relaxed) != ADMITTED {
            self.class.store(ADMITTED, Ordering::Relaxed);
        }
    }

    /// The refusal of the connection's client certificate, if it was refused.
    pub(crate) fn refusal(&self) -> Option<&AuthError> {
        self.refusal.get()
    }

    /// How the table ranks the connection when it must shed one, lower first: its class (a
    /// refused certificate below [`SILENT`]) and when it last sent a byte.
    fn rank(&self) -> (u8, u64) {
        let class = if self.refusal.get().is_some() {
            0
        } else {
            self.class.load(Ordering::Relaxed) + 1
        };
        (class, self.last_read.load(Ordering::Relaxed))
    }

    /// True for a connection that never carried an admitted request (see [`Conn::rank`]).
    fn unproven(rank: (u8, u64)) -> bool {
        rank.0 <= SPOKE + 1
    }

    fn close_at(&self, at_ms: u64) {
        self.close_at.fetch_min(at_ms, Ordering::Relaxed);
        self.waker.wake();
    }
}

/// The open connections and their cap, shared by the accept loop, the streams and
/// [`crate::net::admission`].
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    table: Arc<Table>,
}

#[derive(Debug)]
struct Table {
    /// Most connections open at once (the configured cap, lowered to fit the file limit).
    cap: usize,
    first_bytes: Duration,
    idle: Duration,
    /// Origin of the millisecond clocks in [`Conn`].
    epoch: Instant,
    refusals: RefusalCounter,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    conns: HashMap<Key, Arc<Conn>>,
    /// Connections shed but not closed yet: they no longer count against the cap.
    shedding: usize,
}

impl Connections {
    /// The table for `limits`, counting what it sheds in `refusals`. Raises the
    /// process's soft open-file limit to the hard one, and lowers the connection cap to fit
    /// under it.
    pub(crate) fn new(limits: &Limits, refusals: RefusalCounter) -> Self {
        let cap = fit_to_file_limit(limits.max_connections);
        Self {
            table: Arc::new(Table {
                cap,
                first_bytes: limits.first_bytes_timeout,
                idle: limits.idle_timeout,
                epoch: Instant::now(),
                refusals,
                open: Mutex::default(),
            }),
        }
    }

    /// Most connections open at once.
    #[cfg(test)]
    fn cap(&self) -> usize {
        self.table.cap
    }

    /// Connections open now (shed ones included until they close).
    #[cfg(test)]
    fn len(&self) -> usize {
        crate::sync::lock(&self.table.open).conns.len()
    }

    /// The open connection a request arrived on, from the addresses tonic attached to it.
    pub(crate) fn find(&self, local: SocketAddr, remote: SocketAddr) -> Option<Arc<Conn>> {
        crate::sync::lock(&self.table.open)
            .conns
            .get(&(local, remote))
            .cloned()
    }

    /// Closes `conn` [`REFUSED_LINGER`] from now, remembering why its certificate was refused.
    pub(crate) fn refuse(&self, conn: &Conn, refusal: AuthError) {
        if conn.refusal.set(refusal).is_ok() {
            conn.close_at(self.table.now_ms() + REFUSED_LINGER.as_millis() as u64);
        }
    }

    /// Takes `stream` into the table, shedding another connection if the table is full, or
    /// closes it (returning `None`) if none may be shed or its addresses cannot be read (the
    /// peer is already gone).
    fn admit(&self, stream: TcpStream) -> Option<Guarded<TcpStream>> {
        let table = &self.table;
        let key = (stream.local_addr().ok()?, stream.peer_addr().ok()?);
        let now = Instant::now();
        let conn = Arc::new(Conn {
            key,
            last_read: AtomicU64::new(table.ms(now)),
            class: AtomicU8::new(SILENT),
            shed: AtomicBool::new(false),
            close_at: AtomicU64::new(u64::MAX),
            refusal: OnceLock::new(),
            waker: AtomicWaker::new(),
        });
        let full = {
            let mut open = crate::sync::lock(&table.open);
            let full = open.conns.len() - open.shedding >= table.cap;
            if full && (open.shedding >= MAX_SHEDDING || !table.shed_one(&mut open, now)) {
                drop(open);
                table.refusals.count_refusal(Refusal::ConnectionLimit);
                debug!(peer = %key.1, cap = table.cap, "connection refused: at the connection cap");
                return None;
            }
            if let Some(old) = open.conns.insert(key, conn.clone())
                && old.shed.load(Ordering::Relaxed)
            {
                open.shedding -= 1;
            }
            full
        };
        if full {
            table.refusals.count_refusal(Refusal::ConnectionLimit);
        }
        Some(Guarded {
            inner: stream,
            sleep: Box::pin(tokio::time::sleep_until(now + table.first_bytes)),
            conn,
            table: table.clone(),
            counting: true,
            spoke: false,
            accepted: now,
            last_read: now,
            failed: false,
        })
    }

    /// Out of file descriptors: sheds a connection that may be shed, to make room.
    fn shed_for_room(&self) {
        let table = &self.table;
        let shed = {
            let mut open = crate::sync::lock(&table.open);
            open.shedding < MAX_SHEDDING && table.shed_one(&mut open, Instant::now())
        };
        if shed {
            table.refusals.count_refusal(Refusal::ConnectionLimit);
        }
    }
}

impl Table {
    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn now_ms(&self) -> u64 {
        self.ms(Instant::now())
    }

    /// Sheds the connection worth least (see the module docs) if it may be shed; true if one
    /// was.
    fn shed_one(&self, open: &mut Open, now: Instant) -> bool {
        let victim = open
            .conns
            .values()
            .filter(|c| !c.shed.load(Ordering::Relaxed))
            .min_by_key(|c| c.rank());
        let Some(victim) = victim else {
            return false;
        };
        let rank = victim.rank();
        let idle_ms = self.ms(now).saturating_sub(rank.1);
        let sheddable = Conn::unproven(rank) || idle_ms >= self.idle.as_millis() as u64 / 2;
        if sheddable {
            debug!(peer = %victim.key.1, class = rank.0, idle_ms, "connection shed to make room");
            victim.shed.store(true, Ordering::Relaxed);
            victim.waker.wake();
            open.shedding += 1;
        }
        sheddable
    }

    fn remove(&self, conn: &Arc<Conn>) {
        let mut open = crate::sync::lock(&self.open);
        if open
            .conns
            .get(&conn.key)
            .is_some_and(|c| Arc::ptr_eq(c, conn))
        {
            open.conns.remove(&conn.key);
            if conn.shed.load(Ordering::Relaxed) {
                open.shedding -= 1;
            }
        }
    }
}

/// The connection cap, lowered to fit under the process's open-file limit (raised first to
/// the hard limit) minus a reserve.
fn fit_to_file_limit(max_connections: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(err) => match rlimit::getrlimit(rlimit::Resource::NOFILE) {
            Ok((soft, _)) => {
                warn!(error = %err, soft, "could not raise the open-file limit");
                soft
            }
            Err(err) => {
                warn!(error = %err, "could not read the open-file limit");
                return max_connections;
            }
        },
    };
    let reserve = (soft / 8).max(64);
    let fits = usize::try_from(soft.saturating_sub(reserve)).unwrap_or(usize::MAX);
    let cap = max_connections.min(fits).max(1);
    if cap < max_connections {
        warn!(
            cap,
            max_connections,
            open_file_limit = soft,
            "connection cap lowered to fit the open-file limit"
        );
    } else {
        info!(cap, open_file_limit = soft, "connection cap");
    }
    cap
}

/// Accepts connections on `listener` for as long as the stream is polled, taking each into
/// `connections`: the one accept loop of plaintext and TLS. It never yields an error: failed
/// accepts back off (see the module docs). Dropping the stream closes the listener.
pub(crate) fn accept(
    listener: TcpListener,
    connections: Connections,
) -> impl Stream<Item = Guarded<TcpStream>> + Send + 'static {
    let state = (listener, connections, Backoff::default());
    futures::stream::unfold(state, |(listener, connections, mut backoff)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    backoff.succeeded();
                    // Small messages must not wait for Nagle's algorithm: a round is a chain of
                    // small RPCs.
                    let _ = stream.set_nodelay(true);
                    if let Some(guarded) = connections.admit(stream) {
                        return Some((guarded, (listener, connections, backoff)));
                    }
                }
                Err(err) if one_connection(&err) => {
                    debug!(error = %err, "accept failed for one connection");
                }
                Err(err) => {
                    if err
                        .raw_os_error()
                        .is_some_and(|e| OUT_OF_DESCRIPTORS.contains(&e))
                    {
                        connections.shed_for_room();
                    }
                    backoff.failed(&err).await;
                }
            }
        }
    })
}

/// Hands each connection `accepted` yields to `upgrade` once it has sent its first bytes, each
/// on its own task, and yields what `upgrade` makes of it: the stream itself for plaintext,
/// the TLS stream after a handshake. Until a connection speaks it holds a socket, a table
/// entry and a parked task, and no HTTP/2 or TLS state. The loop ends, releasing the port, when
/// the returned stream is dropped.
pub(crate) fn upgrade<IO, F, Fut>(
    accepted: impl Stream<Item = Guarded<TcpStream>> + Send + 'static,
    upgrade: F,
) -> impl Stream<Item = io::Result<IO>> + Send + 'static
where
    IO: Send + 'static,
    F: Fn(Guarded<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<IO>> + Send + 'static,
{
    let upgrade = Arc::new(upgrade);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(accepted);
        loop {
            let stream = tokio::select! {
                stream = futures::StreamExt::next(&mut accepted) => match stream {
                    Some(stream) => stream,
                    None => break,
                },
                () = tx.closed() => break,
            };
            let (tx, upgrade) = (tx.clone(), upgrade.clone());
            let upgrading = async move {
                let mut stream = stream;
                if stream.first_bytes().await.is_err() {
                    return None;
                }
                upgrade(stream).await
            };
            tokio::spawn(async move {
                if let Some(io) = upgrading.await {
                    let _ = tx.send(Ok(io)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// True for accept errors that concern one connection (gone before it was accepted), after
/// which the next accept may succeed at once.
fn one_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// The pause after failed accepts, and how often they are logged.
#[derive(Debug)]
struct Backoff {
    delay: Duration,
    /// Failures since the last log line.
    failures: u64,
    last_log: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            delay: FIRST_BACKOFF,
            failures: 0,
            last_log: None,
        }
    }
}

impl Backoff {
    fn succeeded(&mut self) {
        self.delay = FIRST_BACKOFF;
    }

    async fn failed(&mut self, err: &io::Error) {
        self.failures += 1;
        let now = Instant::now();
        if self.last_log.is_none_or(|at| now - at >= LOG_EVERY) {
            warn!(
                error = %err,
                failures = self.failures,
                pause_ms = self.delay.as_millis() as u64,
                "accepting connections fails; backing off"
            );
            self.failures = 0;
            self.last_log = Some(now);
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
    }
}

/// An accepted stream that fails (and so is closed by the server) when its connection is
/// shed, stays silent past the first-bytes deadline, goes idle past the idle timeout, or
/// reaches a closing time; it leaves the table when dropped. The deadlines are checked
/// whenever the stream would wait, and one timer wakes the connection's task when the next
/// one passes.
#[derive(Debug)]
pub(crate) struct Guarded<T> {
    inner: T,
    conn: Arc<Conn>,
    table: Arc<Table>,
    /// Fires at the next deadline (possibly early: it is moved lazily).
    sleep: Pin<Box<Sleep>>,
    /// Whether bytes read count as the peer speaking (not during a TLS handshake).
    counting: bool,
    /// The peer sent a byte (after the handshake, under TLS).
    spoke: bool,
    accepted: Instant,
    last_read: Instant,
    /// A deadline passed or the connection was shed: the stream only fails from now on.
    failed: bool,
}

impl<T> Guarded<T> {
    /// The peer's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.conn.key.1
    }

    /// Bytes read until now were the TLS handshake's; from now on they count as the peer
    /// speaking. Until then the stream is silent and the first-bytes deadline stands.
    pub(crate) fn start_counting(&mut self) {
        self.counting = true;
    }

    /// Reads made from now on are the TLS handshake's (see [`Guarded::start_counting`]).
    pub(crate) fn handshaking(mut self) -> Self {
        self.counting = false;
        self
    }

    fn read_some(&mut self) {
        if !self.counting {
            return;
        }
        let now = Instant::now();
        self.last_read = now;
        self.conn
            .last_read
            .store(self.table.ms(now), Ordering::Relaxed);
        if !self.spoke {
            self.spoke = true;
            let _ = self.conn.class.compare_exchange(
                SILENT,
                SPOKE,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// When the connection must have sent something by, and the refusal reason if it has not.
    fn deadline(&self) -> (Instant, Refusal) {
        let close_at = self.conn.close_at.load(Ordering::Relaxed);
        let limit = if self.spoke {
            (self.last_read + self.table.idle, Refusal::ConnectionIdle)
        } else {
            (
                self.accepted + self.table.first_bytes,
                Refusal::ConnectionSilent,
            )
        };
        if close_at != u64::MAX {
            let at = self.table.epoch + Duration::from_millis(close_at);
            if at < limit.0 {
                return (at, Refusal::ConnectionUnauthenticated);
            }
        }
        limit
    }

    fn fail(&mut self, refusal: Refusal) -> io::Error {
        if !self.failed {
            self.failed = true;
            if refusal != Refusal::ConnectionLimit {
                // Shed connections were counted when the table chose them.
                self.table.refusals.count_refusal(refusal);
            }
            debug!(peer = %self.conn.key.1, %refusal, "connection closed");
        }
        io::Error::new(io::ErrorKind::TimedOut, refusal.reason())
    }

    /// Called where the stream is about to wait: fails it if it was shed or a deadline passed,
    /// otherwise makes sure the task is woken for the next deadline and for shedding.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.failed || self.conn.shed.load(Ordering::Relaxed) {
            return Err(self.fail(Refusal::ConnectionLimit));
        }
        self.conn.waker.register(cx.waker());
        if self.conn.shed.load(Ordering::Relaxed) {
            return Err(self.fail(Refusal::ConnectionLimit));
        }
        loop {
            // A closing time may have come before the timer's deadline.
            let (deadline, reason) = self.deadline();
            if deadline < self.sleep.deadline() {
                self.sleep.as_mut().reset(deadline);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            // The timer fired, but the deadline may have moved later since it was set.
            if Instant::now() >= deadline {
                return Err(self.fail(reason));
            }
            self.sleep.as_mut().reset(deadline);
        }
    }

    fn shed_now(&mut self) -> io::Result<()> {
        if self.failed || self.conn.shed.load(Ordering::Relaxed) {
            return Err(self.fail(Refusal::ConnectionLimit));
        }
        Ok(())
    }
}

impl Guarded<TcpStream> {
    /// Waits until the peer has sent something (or closed), failing as a read would if the
    /// connection is shed or its first-bytes deadline passes first.
    async fn first_bytes(&mut self) -> io::Result<()> {
        let mut byte = [0u8; 1];
        std::future::poll_fn(|cx| {
            self.shed_now()?;
            // A peek, not the readiness alone: tokio deems a new socket readable until a read
            // says otherwise.
            match self.inner.poll_peek(cx, &mut ReadBuf::new(&mut byte)) {
                Poll::Ready(peeked) => Poll::Ready(peeked.map(|_| ())),
                Poll::Pending => {
                    self.check(cx)?;
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        self.table.remove(&self.conn);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.shed_now()?;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.read_some();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                this.check(cx)?;
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.shed_now()?;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if written.is_pending() {
            this.check(cx)?;
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.shed_now()?;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if written.is_pending() {
            this.check(cx)?;
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.shed_now()?;
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        if flushed.is_pending() {
            this.check(cx)?;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Guarded<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The local and remote addresses tonic attached to a request, plaintext or TLS.
pub(crate) fn request_addrs<B>(request: &tonic::codegen::http::Request<B>) -> Option<Key> {
    let info = request.extensions().get::<TcpConnectInfo>().or_else(|| {
        request
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>()
            .map(|tls| tls.get_ref())
    })?;
    Some((info.local_addr()?, info.remote_addr()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::engine::Coordinator;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn coordinator() -> Coordinator {
        let data = shoal_datasets::load(&shoal_datasets::DatasetSource::Digits, 0.2, 0).unwrap();
        let spec =
            shoal_models::ModelSpec::for_dataset(shoal_models::ModelKind::LogReg, &data.train);
        Coordinator::new(crate::RunConfig::default(), Limits::default(), spec)
    }

    fn limits(max_connections: usize, first_bytes_ms: u64, idle_ms: u64) -> Limits {
        Limits {
            max_connections,
            first_bytes_timeout: Duration::from_millis(first_bytes_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            ..Limits::default()
        }
    }

    /// A listener whose accepted (guarded) streams are echoed back until they fail.
    async fn echo_server(connections: Connections) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut accepted = std::pin::pin!(accept(listener, connections));
            while let Some(mut stream) = futures::StreamExt::next(&mut accepted).await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Reads until EOF or an error, within `within`; true if the server closed the stream.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        tokio::time::timeout(within, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn silent_and_idle_connections_are_closed_and_counted() {
        let coordinator = coordinator();
        let connections = Connections::new(&limits(100, 300, 600), coordinator.refusal_counter());
        let addr = echo_server(connections.clone()).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut talker = TcpStream::connect(addr).await.unwrap();
        talker.write_all(b"hi").await.unwrap();
        let mut echoed = [0u8; 2];
        talker.read_exact(&mut echoed).await.unwrap();
        let started = std::time::Instant::now();
        assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
        let silent_after = started.elapsed();
        assert!(closed_within(&mut talker, Duration::from_secs(5)).await);
        assert!(silent_after < Duration::from_secs(2), "{silent_after:?}");
        let refusals = coordinator.refusals();
        assert_eq!(refusals.get("connection_silent"), Some(&1), "{refusals:?}");
        assert_eq!(refusals.get("connection_idle"), Some(&1), "{refusals:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while connections.len() > 0 && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert_eq!(connections.len(), 0);
    }

    #[tokio::test]
    async fn at_the_cap_the_silent_go_first_and_the_busy_stay() {
        let coordinator = coordinator();
        let connections =
            Connections::new(&limits(2, 60_000, 60_000), coordinator.refusal_counter());
        assert_eq!(connections.cap(), 2);
        let addr = echo_server(connections.clone()).await;
        // One connection that speaks and is admitted, one silent one.
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        busy.read_exact(&mut one).await.unwrap();
        for conn in crate::sync::lock(&connections.table.open).conns.values() {
            if conn.class.load(Ordering::Relaxed) == SPOKE {
                conn.admitted();
            }
        }
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // A third connection sheds the silent one...
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
        third.write_all(b"y").await.unwrap();
        third.read_exact(&mut one).await.unwrap();
        for conn in crate::sync::lock(&connections.table.open).conns.values() {
            conn.admitted();
        }
        // ...and a fourth finds only busy, recently active connections: it is refused.
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut fourth, Duration::from_secs(5)).await);
        busy.write_all(b"z").await.unwrap();
        busy.read_exact(&mut one).await.unwrap();
        assert_eq!(
            coordinator.refusals().get("connection_limit"),
            Some(&2),
            "{:?}",
            coordinator.refusals()
        );
    }

    #[tokio::test]
    async fn a_refused_certificate_closes_the_connection_soon() {
        let coordinator = coordinator();
        let connections =
            Connections::new(&limits(10, 60_000, 60_000), coordinator.refusal_counter());
        let addr = echo_server(connections.clone()).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        stream.read_exact(&mut one).await.unwrap();
        let key = (addr, stream.local_addr().unwrap());
        let conn = connections.find(key.0, key.1).unwrap();
        connections.refuse(&conn, AuthError::NoCertificate);
        assert_eq!(conn.refusal(), Some(&AuthError::NoCertificate));
        assert!(closed_within(&mut stream, REFUSED_LINGER * 5).await);
        assert_eq!(
            coordinator.refusals().get("connection_unauthenticated"),
            Some(&1)
        );
    }

    #[tokio::test]
    async fn connections_wait_until_they_speak() {
        let coordinator = coordinator();
        let connections =
            Connections::new(&limits(10, 60_000, 60_000), coordinator.refusal_counter());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upgraded = upgrade(accept(listener, connections), |s| async { Some(s) });
        let mut upgraded = std::pin::pin!(upgraded);
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let next = futures::StreamExt::next(&mut upgraded);
        let waited = tokio::time::timeout(Duration::from_millis(300), next).await;
        assert!(waited.is_err(), "a silent connection was handed on");
        silent.write_all(b"x").await.unwrap();
        let next = futures::StreamExt::next(&mut upgraded);
        let spoke = tokio::time::timeout(Duration::from_secs(5), next).await;
        assert!(
            matches!(spoke, Ok(Some(Ok(_)))),
            "a speaking connection was not"
        );
    }

    #[test]
    fn the_cap_fits_under_the_file_limit() {
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        let cap = fit_to_file_limit(usize::MAX);
        assert!((cap as u64) < soft.max(2), "{cap} {soft}");
        assert_eq!(fit_to_file_limit(3), 3);
    }
}
