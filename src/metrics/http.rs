//! A minimal HTTP/1.1 server for `/metrics`, `/healthz`, `/readyz` and the
//! dashboard (`/`, `/api/status`, `/api/farm`, `POST /api/jobs/ID/VERB`) over
//! the connection table the control socket uses too (src/connections.rs):
//! non-blocking sockets, one request per connection, the response queued
//! whole and written on `POLLOUT`, then the connection closed
//! (`Connection: close`). It decides nothing: routed
//! requests go up to the supervisor, which renders the answer.
//!
//! What a hostile client can cost is bounded: a request head is at most
//! `MAX_REQUEST_HEAD` bytes (then 431), a connection lives at most
//! `CLIENT_TIMEOUT` (a slowloris is dropped then), and at most `MAX_CLIENTS`
//! are open at once: beyond that the listener is not polled, so further
//! connections wait in the kernel's backlog instead of being refused.

use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::time::Duration;

use crate::connections::{ConnectionId, Connections, Decoded, Decoder, Limits, Outgoing, Overflow};

/// The request line and headers; a GET has nothing else to send.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client has this long to send its request and read the response.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once; more wait in the backlog.
pub const MAX_CLIENTS: usize = 512;
/// The listen backlog: where connections wait while `MAX_CLIENTS` are open.
const BACKLOG: i32 = 1024;

/// What a routed GET asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Healthz,
    Readyz,
    /// `GET /`: the dashboard's page (with `--dashboard`).
    Dashboard,
    /// `GET /api/status`: the status document, as `lrpmctl status --json`.
    ApiStatus,
    /// `GET /api/farm`: the farm's own figures and the last hour's history.
    ApiFarm,
}

impl Route {
    pub const COUNT: usize = 6;
}

/// A GET the supervisor answers: the route, and whether it was a HEAD
/// (the same headers, no body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub route: Route,
    pub head: bool,
}

/// What a dashboard action asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionVerb {
    Restart,
    Recycle,
    Stop,
    Start,
}

impl ActionVerb {
    fn parse(word: &str) -> Option<ActionVerb> {
        Some(match word {
            "restart" => ActionVerb::Restart,
            "recycle" => ActionVerb::Recycle,
            "stop" => ActionVerb::Stop,
            "start" => ActionVerb::Start,
            _ => return None,
        })
    }
}

/// `POST /api/jobs/ID/VERB`, with the bearer token it carried (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The job id, percent-decoded.
    pub job: String,
    pub verb: ActionVerb,
    pub token: Option<String>,
}

/// A request the supervisor answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Get(Request),
    Action(Action),
}

/// A response; bodies are shared, so one rendering serves every client of
/// a loop turn.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Rc<[u8]>,
    /// How long the body took to render, sent as `X-Render-Microseconds`
    /// (the dashboard's page paces its polls by it).
    pub render_us: Option<u64>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Rc::from(body.into().into_bytes()),
            render_us: None,
        }
    }
}

/// What parsing the bytes received so far gave.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Partial,
    Routed(Incoming),
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
            if let Some(rest) = path.strip_prefix("/api/jobs/") {
                return parse_action(request.method, rest, request.headers);
            }
            let route = match path {
                "/metrics" => Route::Metrics,
                "/healthz" => Route::Healthz,
                "/readyz" => Route::Readyz,
                "/" | "/index.html" => Route::Dashboard,
                "/api/status" => Route::ApiStatus,
                "/api/farm" => Route::ApiFarm,
                _ => return Parsed::Refused(404, NOT_FOUND),
            };
            match request.method {
                Some("GET") => Parsed::Routed(Incoming::Get(Request { route, head: false })),
                Some("HEAD") => Parsed::Routed(Incoming::Get(Request { route, head: true })),
                _ => Parsed::Refused(405, "method not allowed: use GET\n"),
            }
        }
    }
}

pub const NOT_FOUND: &str =
    "not found: the paths are /metrics, /healthz and /readyz (and with --dashboard: /, /api/status, /api/farm)\n";

/// `ID/VERB` after `/api/jobs/`: a POST, the id percent-encoded (any byte
/// a job id may hold), the token from `Authorization: Bearer`.
fn parse_action(method: Option<&str>, rest: &str, headers: &[httparse::Header<'_>]) -> Parsed {
    let Some((id, verb)) = rest.rsplit_once('/') else { return Parsed::Refused(404, NOT_FOUND) };
    let Some(verb) = ActionVerb::parse(verb) else {
        return Parsed::Refused(404, "not found: the actions are restart, recycle, stop and start\n");
    };
    if method != Some("POST") {
        return Parsed::Refused(405, "method not allowed: actions are POST requests\n");
    }
    let Ok(job) = percent_encoding::percent_decode_str(id).decode_utf8() else {
        return Parsed::Refused(400, "bad request: the job id is not UTF-8\n");
    };
    if job.is_empty() {
        return Parsed::Refused(404, NOT_FOUND);
    }
    let token = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    Parsed::Routed(Incoming::Action(Action { job: job.into_owned(), verb, token }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn head_of(response: &Response) -> Vec<u8> {
    let allow = if response.status == 405 { "Allow: GET, HEAD\r\n" } else { "" };
    let challenge = if response.status == 401 { "WWW-Authenticate: Bearer\r\n" } else { "" };
    // The page loads nothing from elsewhere and is never framed.
    let page = if response.content_type.starts_with("text/html") {
        "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'\r\nX-Content-Type-Options: nosniff\r\n"
    } else {
        ""
    };
    let render = response.render_us.map_or_else(String::new, |us| format!("X-Render-Microseconds: {us}\r\n"));
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{allow}{challenge}{page}{render}Connection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    )
    .into_bytes()
}

/// The request head as the connection table reads it: at most
/// `MAX_REQUEST_HEAD` bytes, parsed each time more arrives.
#[derive(Default)]
pub struct HeadDecoder(Vec<u8>);

impl Decoder for HeadDecoder {
    type Request = Incoming;

    fn room(&self) -> usize {
        MAX_REQUEST_HEAD.saturating_sub(self.0.len())
    }

    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn decode(&mut self) -> Decoded<Incoming> {
        match parse(&self.0) {
            Parsed::Partial => Decoded::Partial,
            Parsed::Routed(request) => Decoded::Request(request),
            Parsed::Refused(status, text) => Decoded::Refused(outgoing(&Response::text(status, text), false)),
        }
    }
}

/// A response as it goes out (without its body for a HEAD).
fn outgoing(response: &Response, head_only: bool) -> Outgoing {
    Outgoing { head: head_of(response), body: (!head_only).then(|| Rc::clone(&response.body)) }
}

pub type HttpClientId = ConnectionId;

const LIMITS: Limits = Limits { max_clients: MAX_CLIENTS, timeout: CLIENT_TIMEOUT, overflow: Overflow::Backlog };

pub struct HttpServer {
    address: SocketAddr,
    pub clients: Connections<TcpListener, HeadDecoder>,
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
        Ok(HttpServer { address, clients: Connections::new("metrics listener", listener, LIMITS) })
    }

    /// The address it listens on (the port the kernel chose for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Queues the response (without its body for a HEAD) and tries to send
    /// it at once.
    pub fn respond(&mut self, id: HttpClientId, response: &Response, head_only: bool) {
        self.clients.respond(id, outgoing(response, head_only));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_methods_and_refusals() {
        let get = |path: &str| parse(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let routed = |route, head| Parsed::Routed(Incoming::Get(Request { route, head }));
        assert_eq!(get("/metrics"), routed(Route::Metrics, false));
        assert_eq!(get("/readyz?verbose=1"), routed(Route::Readyz, false));
        assert_eq!(parse(b"HEAD /healthz HTTP/1.0\r\n\r\n"), routed(Route::Healthz, true));
        assert_eq!(get("/"), routed(Route::Dashboard, false));
        assert_eq!(get("/api/status"), routed(Route::ApiStatus, false));
        assert!(matches!(get("/nope"), Parsed::Refused(404, _)));
        assert!(matches!(get("/metrics/x"), Parsed::Refused(404, _)));
        assert!(matches!(parse(b"POST /metrics HTTP/1.1\r\n\r\n"), Parsed::Refused(405, _)));
        assert!(matches!(parse(b"garbage\r\n\r\n"), Parsed::Refused(400, _)));
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), Parsed::Partial);
    }

    #[test]
    fn actions_are_posts_with_a_percent_encoded_id_and_a_bearer_token() {
        let action = |request: &str| parse(request.as_bytes());
        assert_eq!(
            action("POST /api/jobs/orders%20eu%2F1/restart HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 0\r\n\r\n"),
            Parsed::Routed(Incoming::Action(Action {
                job: "orders eu/1".into(),
                verb: ActionVerb::Restart,
                token: Some("s3cret".into())
            }))
        );
        assert_eq!(
            action("POST /api/jobs/7/stop HTTP/1.1\r\n\r\n"),
            Parsed::Routed(Incoming::Action(Action { job: "7".into(), verb: ActionVerb::Stop, token: None }))
        );
        // A token in the query string is not a token.
        assert_eq!(
            action("POST /api/jobs/7/stop?token=s3cret HTTP/1.1\r\n\r\n"),
            Parsed::Routed(Incoming::Action(Action { job: "7".into(), verb: ActionVerb::Stop, token: None }))
        );
        assert!(matches!(action("GET /api/jobs/7/restart HTTP/1.1\r\n\r\n"), Parsed::Refused(405, _)));
        assert!(matches!(action("POST /api/jobs/7/explode HTTP/1.1\r\n\r\n"), Parsed::Refused(404, _)));
        assert!(matches!(action("POST /api/jobs//restart HTTP/1.1\r\n\r\n"), Parsed::Refused(404, _)));
        assert!(matches!(action("POST /api/jobs/%ff/restart HTTP/1.1\r\n\r\n"), Parsed::Refused(400, _)));
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
