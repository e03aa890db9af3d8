//! A minimal HTTP/1.1 server for `/metrics`, `/healthz` and `/readyz`,
//! driven by the supervisor's poll loop as the control socket's server is
//! (src/control/server.rs): non-blocking sockets, one request per
//! connection, the response queued whole and written on `POLLOUT`, then the
//! connection closed (`Connection: close`). It decides nothing: routed
//! requests go up to the supervisor, which renders the answer.
//!
//! What a hostile client can cost is bounded: a request head is at most
//! `MAX_REQUEST_HEAD` bytes (then 431), a connection lives at most
//! `CLIENT_TIMEOUT` (a slowloris is dropped then), and at most `MAX_CLIENTS`
//! are open at once: beyond that the listener is not polled, so further
//! connections wait in the kernel's backlog instead of being refused.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The request line and headers; a GET has nothing else to send.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client has this long to send its request and read the response.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once; more wait in the backlog.
pub const MAX_CLIENTS: usize = 512;
/// The listen backlog: where connections wait while `MAX_CLIENTS` are open.
const BACKLOG: i32 = 1024;
/// After EMFILE/ENFILE on accept, the listener rests this long.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(200);

/// What a routed request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Healthz,
    Readyz,
}

/// A request the supervisor answers: the route, and whether it was a HEAD
/// (the same headers, no body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub route: Route,
    pub head: bool,
}

/// A response; bodies are shared, so one rendering serves every client of
/// a loop turn.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Rc<[u8]>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: Rc::from(body.into().into_bytes()) }
    }
}

/// What parsing the bytes received so far gave.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Partial,
    Routed(Request),
    /// Answered by the server itself (400, 404, 405, 431).
    Refused(u16, &'static str),
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => {
            Parsed::Refused(431, "request header fields too large\n")
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::Refused(431, "too many header fields\n"),
        Err(_) => Parsed::Refused(400, "bad request\n"),
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or("/");
            let path = path.split(['?', '#']).next().unwrap_or(path);
            let route = match path {
                "/metrics" => Route::Metrics,
                "/healthz" => Route::Healthz,
                "/readyz" => Route::Readyz,
                _ => return Parsed::Refused(404, "not found: the paths are /metrics, /healthz and /readyz\n"),
            };
            match request.method {
                Some("GET") => Parsed::Routed(Request { route, head: false }),
                Some("HEAD") => Parsed::Routed(Request { route, head: true }),
                _ => Parsed::Refused(405, "method not allowed: use GET\n"),
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn head_of(response: &Response) -> Vec<u8> {
    let allow = if response.status == 405 { "Allow: GET, HEAD\r\n" } else { "" };
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{allow}Connection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    )
    .into_bytes()
}

struct Client {
    stream: TcpStream,
    received: Vec<u8>,
    /// The status line and headers, then the body (shared), written from
    /// `written` on each `POLLOUT`.
    head: Vec<u8>,
    body: Option<Rc<[u8]>>,
    written: usize,
    awaiting_response: bool,
    deadline: Instant,
}

impl Client {
    fn pending(&self) -> usize {
        self.head.len() + self.body.as_ref().map_or(0, |b| b.len())
    }

    fn wants_write(&self) -> bool {
        self.written < self.pending()
    }
}

pub type HttpClientId = u64;

pub struct HttpServer {
    listener: TcpListener,
    address: SocketAddr,
    clients: HashMap<HttpClientId, Client>,
    next_id: HttpClientId,
    paused_until: Option<Instant>,
    /// EMFILE was logged and no accept has succeeded since.
    out_of_descriptors_logged: bool,
}

impl HttpServer {
    /// Listens on `address`. std sets SO_REUSEADDR (a restarted host gets
    /// its port back while old connections linger in TIME_WAIT) but listens
    /// with a backlog of 128; listening again raises it, so connections
    /// waiting while `MAX_CLIENTS` are open are not dropped.
    pub fn bind(address: SocketAddr) -> std::io::Result<HttpServer> {
        use nix::sys::socket::{listen, Backlog};
        let listener = TcpListener::bind(address)?;
        listen(&listener, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        Ok(HttpServer {
            listener,
            address,
            clients: HashMap::new(),
            next_id: 0,
            paused_until: None,
            out_of_descriptors_logged: false,
        })
    }

    /// The address it listens on (the port the kernel chose for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn listener(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Ends a rest of the listener that is over (call before `accepting`).
    pub fn resume(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|until| until <= now) {
            self.paused_until = None;
        }
    }

    /// Whether to poll the listener this turn: not while `MAX_CLIENTS` are
    /// open (connections wait in the backlog) nor while accept rests after
    /// running out of descriptors.
    pub fn accepting(&self) -> bool {
        self.paused_until.is_none() && self.clients.len() < MAX_CLIENTS
    }

    /// Every descriptor a forked child must close.
    pub fn all_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.listener.as_raw_fd()];
        fds.extend(self.clients.values().map(|c| c.stream.as_raw_fd()));
        fds
    }

    /// Client descriptors to poll, with whether each wants to write.
    pub fn client_fds(&self) -> Vec<(HttpClientId, BorrowedFd<'_>, bool)> {
        self.clients.iter().map(|(id, c)| (*id, c.stream.as_fd(), c.wants_write())).collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.values().map(|c| c.deadline).chain(self.paused_until).min()
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Accepts pending connections up to `MAX_CLIENTS`.
    pub fn accept_all(&mut self, now: Instant) {
        while self.clients.len() < MAX_CLIENTS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.out_of_descriptors_logged {
                        self.out_of_descriptors_logged = false;
                        tracing::info!("metrics listener: accepting connections again");
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let id = self.next_id;
                    self.next_id += 1;
                    self.clients.insert(
                        id,
                        Client {
                            stream,
                            received: Vec::new(),
                            head: Vec::new(),
                            body: None,
                            written: 0,
                            awaiting_response: false,
                            deadline: now + CLIENT_TIMEOUT,
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if !self.out_of_descriptors_logged {
                        self.out_of_descriptors_logged = true;
                        tracing::warn!(
                            clients = self.clients.len(),
                            "metrics listener: {e}; not accepting connections for {}ms (raise the open-files limit: ulimit -n, LimitNOFILE=)",
                            ACCEPT_PAUSE.as_millis()
                        );
                    }
                    self.paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
                // ECONNABORTED and the like concern one connection only.
                Err(e) => {
                    tracing::debug!("metrics listener: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads from a readable client; returns its request once whole and
    /// routed. Malformed, oversized and unrouted requests are answered here.
    pub fn read_client(&mut self, id: HttpClientId) -> Option<Request> {
        let client = self.clients.get_mut(&id)?;
        if client.awaiting_response {
            return None;
        }
        let mut buf = [0u8; 2048];
        let mut closed = false;
        while client.received.len() < MAX_REQUEST_HEAD {
            let room = (MAX_REQUEST_HEAD - client.received.len()).min(buf.len());
            match client.stream.read(&mut buf[..room]) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => client.received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.clients.remove(&id);
                    return None;
                }
            }
        }
        match parse(&client.received) {
            Parsed::Partial if closed => {
                self.clients.remove(&id);
                None
            }
            Parsed::Partial => None,
            Parsed::Refused(status, text) => {
                client.awaiting_response = true;
                self.respond(id, &Response::text(status, text), false);
                None
            }
            Parsed::Routed(request) => {
                client.awaiting_response = true;
                client.received = Vec::new();
                Some(request)
            }
        }
    }

    /// Queues the response (without its body for a HEAD) and tries to send
    /// it at once.
    pub fn respond(&mut self, id: HttpClientId, response: &Response, head_only: bool) {
        if let Some(client) = self.clients.get_mut(&id) {
            client.head = head_of(response);
            client.body = (!head_only).then(|| Rc::clone(&response.body));
            client.written = 0;
            self.write_client(id);
        }
    }

    /// Writes pending output; the connection closes once the response is out.
    pub fn write_client(&mut self, id: HttpClientId) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        while client.wants_write() {
            let head_len = client.head.len();
            let chunk: &[u8] = if client.written < head_len {
                &client.head[client.written..]
            } else {
                match &client.body {
                    Some(body) => &body[client.written - head_len..],
                    None => break,
                }
            };
            match client.stream.write(chunk) {
                Ok(0) => break,
                Ok(n) => client.written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        if let Some(client) = self.clients.remove(&id) {
            let _ = client.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Drops clients that did not finish in time.
    pub fn expire(&mut self, now: Instant) {
        self.clients.retain(|_, c| c.deadline > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_methods_and_refusals() {
        let get = |path: &str| parse(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(get("/metrics"), Parsed::Routed(Request { route: Route::Metrics, head: false }));
        assert_eq!(get("/readyz?verbose=1"), Parsed::Routed(Request { route: Route::Readyz, head: false }));
        assert_eq!(
            parse(b"HEAD /healthz HTTP/1.0\r\n\r\n"),
            Parsed::Routed(Request { route: Route::Healthz, head: true })
        );
        assert!(matches!(get("/"), Parsed::Refused(404, _)));
        assert!(matches!(get("/metrics/x"), Parsed::Refused(404, _)));
        assert!(matches!(parse(b"POST /metrics HTTP/1.1\r\n\r\n"), Parsed::Refused(405, _)));
        assert!(matches!(parse(b"garbage\r\n\r\n"), Parsed::Refused(400, _)));
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), Parsed::Partial);
    }

    #[test]
    fn an_endless_head_is_refused_at_the_limit() {
        let mut head = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while head.len() < MAX_REQUEST_HEAD {
            head.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        head.truncate(MAX_REQUEST_HEAD);
        assert!(matches!(parse(&head), Parsed::Refused(431, _)));
        let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-{i}: a\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many), Parsed::Refused(431, _)));
    }

    #[test]
    fn a_response_head_closes_the_connection() {
        let head = String::from_utf8(head_of(&Response::text(503, "not ready\n"))).unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 10\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        );
        assert!(String::from_utf8(head_of(&Response::text(405, ""))).unwrap().contains("Allow: GET, HEAD\r\n"));
    }
}
