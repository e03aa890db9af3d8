//! One table of client connections for both servers the supervisor runs:
//! the control socket (src/control/server.rs) and the HTTP endpoints
//! (src/metrics/http.rs). Each connection carries one request and one
//! response, then closes. The table does the parts they share, in one place:
//! non-blocking accept with a limit on open connections and a rest after
//! EMFILE/ENFILE (logged once, until an accept succeeds again), reading into
//! the protocol's decoder, writing the response from where the last write
//! stopped, and a deadline per connection. A protocol only says how bytes
//! become a request (`Decoder`) and how a listener hands out streams
//! (`Listener`); the table never blocks and decides nothing.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::poll_set::PollSet;

/// After EMFILE/ENFILE on accept, the listener rests this long: the
/// connection it could not take stays in the backlog, and polling it again
/// at once would spin.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(200);

/// A listening socket the table accepts from.
pub trait Listener: AsFd {
    type Stream: Read + Write + AsFd + AsRawFd;
    fn accept_stream(&self) -> std::io::Result<Self::Stream>;
    /// Made ready for the table: non-blocking, and whatever the transport
    /// wants (TCP_NODELAY).
    fn prepare(stream: &Self::Stream) -> std::io::Result<()>;
    /// Once the response is out: the peer sees the end at once.
    fn finish(stream: &Self::Stream);
}

impl Listener for std::os::unix::net::UnixListener {
    type Stream = std::os::unix::net::UnixStream;

    fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().map(|(stream, _)| stream)
    }

    fn prepare(stream: &Self::Stream) -> std::io::Result<()> {
        stream.set_nonblocking(true)
    }

    fn finish(stream: &Self::Stream) {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

impl Listener for std::net::TcpListener {
    type Stream = std::net::TcpStream;

    fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().map(|(stream, _)| stream)
    }

    fn prepare(stream: &Self::Stream) -> std::io::Result<()> {
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        Ok(())
    }

    fn finish(stream: &Self::Stream) {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

/// What a decoder made of the bytes received so far.
#[derive(Debug)]
pub enum Decoded<R> {
    /// More bytes are needed.
    Partial,
    /// A whole request, for the supervisor to answer.
    Request(R),
    /// Answered by the protocol itself (an HTTP 404), then closed.
    Refused(Outgoing),
    /// Closed without an answer; the reason is logged.
    Dropped(String),
}

/// A protocol's reading side, one per connection.
pub trait Decoder: Default {
    type Request;
    /// How many more bytes it takes before it must decide: reading stops
    /// there, so a hostile client cannot make the table buffer more.
    fn room(&self) -> usize;
    fn push(&mut self, bytes: &[u8]);
    fn decode(&mut self) -> Decoded<Self::Request>;
}

/// A response as it goes out: a head, then a body that may be shared by
/// every client a loop turn answers with the same document.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub head: Vec<u8>,
    pub body: Option<Rc<[u8]>>,
}

impl Outgoing {
    fn len(&self) -> usize {
        self.head.len() + self.body.as_ref().map_or(0, |b| b.len())
    }

    /// The bytes from `offset` on, up to the end of the part it falls in.
    fn from(&self, offset: usize) -> &[u8] {
        if offset < self.head.len() {
            &self.head[offset..]
        } else {
            self.body.as_ref().map_or(&[][..], |body| &body[offset - self.head.len()..])
        }
    }
}

/// What happens to connections beyond `Limits::max_clients`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Accepted and closed at once: the client learns there is no room
    /// (the control socket, whose clients are people and scripts).
    Close,
    /// Not accepted: they wait in the listen backlog until a connection
    /// ends (HTTP, whose clients are scrapers that retry).
    Backlog,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once.
    pub max_clients: usize,
    /// A connection has this long to send its request and read the response.
    pub timeout: Duration,
    pub overflow: Overflow,
}

pub type ConnectionId = u64;

struct Connection<S, D> {
    stream: S,
    decoder: D,
    outgoing: Outgoing,
    /// How much of `outgoing` was written: a large response goes out in
    /// many writes, never moved around in memory between them.
    written: usize,
    awaiting_response: bool,
    deadline: Instant,
}

impl<S, D> Connection<S, D> {
    fn wants_write(&self) -> bool {
        self.written < self.outgoing.len()
    }
}

pub struct Connections<L: Listener, D: Decoder> {
    /// Names the server in logs ("control socket", "metrics listener").
    name: &'static str,
    listener: L,
    limits: Limits,
    open: HashMap<ConnectionId, Connection<L::Stream, D>>,
    next_id: ConnectionId,
    paused_until: Option<Instant>,
    /// EMFILE was logged and no accept has succeeded since.
    out_of_descriptors_logged: bool,
}

impl<L: Listener, D: Decoder> Connections<L, D> {
    /// `listener` must be non-blocking.
    pub fn new(name: &'static str, listener: L, limits: Limits) -> Self {
        Connections {
            name,
            listener,
            limits,
            open: HashMap::new(),
            next_id: 0,
            paused_until: None,
            out_of_descriptors_logged: false,
        }
    }

    pub fn listener(&self) -> &L {
        &self.listener
    }

    /// Ends a rest of the listener that is over (at the start of a turn).
    pub fn resume(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|until| until <= now) {
            self.paused_until = None;
        }
    }

    /// Whether the listener takes connections now: not while it rests
    /// after running out of descriptors, nor, with `Overflow::Backlog`,
    /// while `max_clients` are open.
    pub fn accepting(&self) -> bool {
        let full = self.limits.overflow == Overflow::Backlog && self.open.len() >= self.limits.max_clients;
        self.paused_until.is_none() && !full
    }

    /// Registers what to poll: the listener as `listener` while it is
    /// accepting (never with None), and each connection as
    /// `connection(id, wants_write)`. One waiting for a deferred answer is
    /// not polled: it has nothing more to send, and its hang-up would wake
    /// every turn.
    pub fn register<'a, S: Copy>(
        &'a self,
        set: &mut PollSet<'a, S>,
        listener: Option<S>,
        mut connection: impl FnMut(ConnectionId, bool) -> S,
    ) {
        if let Some(source) = listener.filter(|_| self.accepting()) {
            set.read(self.listener.as_fd(), source);
        }
        for (id, c) in &self.open {
            if !c.awaiting_response || c.wants_write() {
                set.read_or_write(c.stream.as_fd(), c.wants_write(), connection(*id, c.wants_write()));
            }
        }
    }

    /// Every descriptor a forked child must close.
    pub fn all_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.listener.as_fd().as_raw_fd()];
        fds.extend(self.open.values().map(|c| c.stream.as_raw_fd()));
        fds
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|c| c.deadline).chain(self.paused_until).min()
    }

    /// Accepts every pending connection the limits allow.
    pub fn accept_all(&mut self, now: Instant) {
        let mut accepted = 0;
        loop {
            if self.limits.overflow == Overflow::Backlog && self.open.len() >= self.limits.max_clients {
                break;
            }
            match self.listener.accept_stream() {
                Ok(stream) => {
                    accepted += 1;
                    if self.open.len() >= self.limits.max_clients || L::prepare(&stream).is_err() {
                        continue; // dropped: closed at once
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    self.open.insert(
                        id,
                        Connection {
                            stream,
                            decoder: D::default(),
                            outgoing: Outgoing::default(),
                            written: 0,
                            awaiting_response: false,
                            deadline: now + self.limits.timeout,
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Logged once while descriptors stay short: an accept
                    // that a timed-out client's descriptor made possible is
                    // not "accepting again" until a round drains the queue.
                    if !self.out_of_descriptors_logged {
                        self.out_of_descriptors_logged = true;
                        tracing::warn!(
                            clients = self.open.len(),
                            "{}: {e}; not accepting connections for {}ms (raise the open-files limit: ulimit -n, LimitNOFILE=)",
                            self.name,
                            ACCEPT_PAUSE.as_millis()
                        );
                    }
                    self.paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
                // ECONNABORTED and the like concern one connection only.
                Err(e) => {
                    tracing::debug!("{}: accept failed: {e}", self.name);
                    break;
                }
            }
        }
        if accepted > 0 && self.out_of_descriptors_logged {
            self.out_of_descriptors_logged = false;
            tracing::info!("{}: accepting connections again", self.name);
        }
    }

    /// Serves a connection poll found ready: writes what it owes, or reads
    /// and returns its request once whole.
    pub fn ready(&mut self, id: ConnectionId, wants_write: bool) -> Option<D::Request> {
        if wants_write {
            self.write(id);
            None
        } else {
            self.read(id)
        }
    }

    fn read(&mut self, id: ConnectionId) -> Option<D::Request> {
        let connection = self.open.get_mut(&id)?;
        if connection.awaiting_response {
            return None;
        }
        let mut buf = [0u8; 4096];
        let mut closed = false;
        loop {
            let room = connection.decoder.room().min(buf.len());
            if room == 0 {
                break;
            }
            match connection.stream.read(&mut buf[..room]) {
                Ok(0) => {
                    // Half-closed after a whole request (nc -N, socat): still answer it.
                    closed = true;
                    break;
                }
                Ok(n) => connection.decoder.push(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.open.remove(&id);
                    return None;
                }
            }
        }
        match connection.decoder.decode() {
            Decoded::Partial => {
                if closed {
                    self.open.remove(&id);
                }
                None
            }
            Decoded::Request(request) => {
                connection.awaiting_response = true;
                Some(request)
            }
            Decoded::Refused(response) => {
                connection.awaiting_response = true;
                self.respond(id, response);
                None
            }
            Decoded::Dropped(why) => {
                tracing::warn!("{}: client refused: {why}", self.name);
                self.open.remove(&id);
                None
            }
        }
    }

    /// Queues the response and tries to send it at once.
    pub fn respond(&mut self, id: ConnectionId, response: Outgoing) {
        if let Some(connection) = self.open.get_mut(&id) {
            connection.outgoing = response;
            connection.written = 0;
            self.write(id);
        }
    }

    /// Writes pending output; the connection closes once the response is
    /// out, or at the first error.
    fn write(&mut self, id: ConnectionId) {
        let Some(connection) = self.open.get_mut(&id) else { return };
        while connection.wants_write() {
            match connection.stream.write(connection.outgoing.from(connection.written)) {
                Ok(0) => break,
                Ok(n) => connection.written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        if let Some(connection) = self.open.remove(&id) {
            L::finish(&connection.stream);
        }
    }

    /// The answer to this connection's request comes later (an upgrade's
    /// outcome): it is kept until `until` instead of the usual timeout.
    pub fn defer(&mut self, id: ConnectionId, until: Instant) {
        if let Some(connection) = self.open.get_mut(&id) {
            connection.deadline = until;
        }
    }

    /// Drops connections that did not finish in time.
    pub fn expire(&mut self, now: Instant) {
        self.open.retain(|_, c| c.deadline > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    /// One line, at most 16 bytes.
    #[derive(Default)]
    struct Line(Vec<u8>);

    impl Decoder for Line {
        type Request = String;
        fn room(&self) -> usize {
            17 - self.0.len().min(17)
        }
        fn push(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
        fn decode(&mut self) -> Decoded<String> {
            match self.0.iter().position(|b| *b == b'\n') {
                Some(0) => Decoded::Refused(Outgoing { head: b"empty\n".to_vec(), body: None }),
                Some(end) => Decoded::Request(String::from_utf8_lossy(&self.0[..end]).into_owned()),
                None if self.0.len() > 16 => Decoded::Dropped("too long".into()),
                None => Decoded::Partial,
            }
        }
    }

    /// A listener on a fresh socket path; the file goes with the guard.
    struct SocketFile(std::path::PathBuf);

    impl Drop for SocketFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn table(
        overflow: Overflow,
        max_clients: usize,
    ) -> (SocketFile, std::path::PathBuf, Connections<UnixListener, Line>) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("lrpm-connections-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let limits = Limits { max_clients, timeout: Duration::from_secs(5), overflow };
        (SocketFile(path.clone()), path, Connections::new("test", listener, limits))
    }

    fn read_all(mut stream: UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        out
    }

    /// What the table registers: the connections, with whether each wants to write.
    fn polled(table: &Connections<UnixListener, Line>) -> Vec<(ConnectionId, bool)> {
        let mut set = PollSet::default();
        table.register(&mut set, None, |id, w| (id, w));
        set.poll(nix::poll::PollTimeout::ZERO).unwrap()
    }

    /// Serves every ready connection until one yields a request.
    fn next_request(table: &mut Connections<UnixListener, Line>) -> Option<(ConnectionId, String)> {
        polled(table).into_iter().find_map(|(id, w)| table.ready(id, w).map(|r| (id, r)))
    }

    /// Every connection registered, ready or not.
    fn registered(table: &Connections<UnixListener, Line>) -> Vec<ConnectionId> {
        let mut ids = Vec::new();
        table.register(&mut PollSet::default(), None, |id, _| {
            ids.push(id);
            id
        });
        ids
    }

    #[test]
    fn one_request_one_response_then_closed() {
        let (_dir, path, mut table) = table(Overflow::Close, 4);
        let mut client = UnixStream::connect(&path).unwrap();
        let now = Instant::now();
        table.accept_all(now);
        assert_eq!(table.len(), 1);
        client.write_all(b"hel").unwrap();
        assert!(next_request(&mut table).is_none(), "a partial request waits");
        client.write_all(b"lo\n").unwrap();
        let (id, request) = next_request(&mut table).unwrap();
        assert_eq!(request, "hello");
        assert!(registered(&table).is_empty(), "a connection awaiting its answer is not polled");
        let body: Rc<[u8]> = Rc::from(&b"world\n"[..]);
        table.respond(id, Outgoing { head: b"hi ".to_vec(), body: Some(body) });
        assert!(table.is_empty());
        assert_eq!(read_all(client), b"hi world\n");
    }

    #[test]
    fn refused_and_dropped_requests_close_the_connection() {
        let (_dir, path, mut table) = table(Overflow::Close, 4);
        let mut refused = UnixStream::connect(&path).unwrap();
        let mut hostile = UnixStream::connect(&path).unwrap();
        table.accept_all(Instant::now());
        refused.write_all(b"\n").unwrap();
        hostile.write_all(&[b'x'; 40]).unwrap();
        assert!(next_request(&mut table).is_none());
        assert!(next_request(&mut table).is_none());
        assert!(table.is_empty());
        assert_eq!(read_all(refused), b"empty\n");
        // Closed with its bytes unread: an end of file or a reset.
        let mut byte = [0u8; 1];
        assert!(matches!((&hostile).read(&mut byte), Ok(0) | Err(_)));
    }

    #[test]
    fn overflow_closes_or_leaves_connections_in_the_backlog() {
        let (_dir, path, mut table) = table(Overflow::Close, 1);
        let _first = UnixStream::connect(&path).unwrap();
        let second = UnixStream::connect(&path).unwrap();
        table.accept_all(Instant::now());
        assert_eq!(table.len(), 1);
        assert_eq!(read_all(second), b"", "beyond the limit: closed at once");
        assert!(table.accepting());

        let (_dir, path, mut table) = self::table(Overflow::Backlog, 1);
        let mut first = UnixStream::connect(&path).unwrap();
        let mut second = UnixStream::connect(&path).unwrap();
        table.accept_all(Instant::now());
        assert_eq!(table.len(), 1);
        assert!(!table.accepting(), "full: the listener is not polled");
        first.write_all(b"a\n").unwrap();
        let (id, _) = next_request(&mut table).unwrap();
        table.respond(id, Outgoing { head: b"ok\n".to_vec(), body: None });
        assert!(table.accepting());
        table.accept_all(Instant::now());
        second.write_all(b"b\n").unwrap();
        assert_eq!(next_request(&mut table).map(|(_, r)| r).as_deref(), Some("b"), "the waiting one is served");
        drop(first);
    }

    #[test]
    fn deadlines_expire_and_defer() {
        let (_dir, path, mut table) = table(Overflow::Close, 4);
        let _a = UnixStream::connect(&path).unwrap();
        let _b = UnixStream::connect(&path).unwrap();
        let now = Instant::now();
        table.accept_all(now);
        let ids = registered(&table);
        table.defer(ids[0], now + Duration::from_secs(60));
        assert_eq!(table.next_deadline(), Some(now + Duration::from_secs(5)));
        table.expire(now + Duration::from_secs(6));
        assert_eq!(table.len(), 1);
        assert_eq!(table.next_deadline(), Some(now + Duration::from_secs(60)));
    }
}
