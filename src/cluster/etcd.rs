//! etcd v3 through its JSON gateway (`/v3/...`, served by every etcd since
//! 3.3 on the client port) over ureq, a well-kept blocking HTTP client.
//! Chosen over the gRPC client crates because those compile etcd's protos
//! in their build script (a `protoc` in the install step) and bring tonic
//! and tokio, which would add more to a fresh `make test` than the whole
//! agent needs; the gateway is etcd's own, documented API, and no gRPC or
//! protobuf is written by hand. Keys and values travel base64-encoded and
//! 64-bit integers as strings, as the gateway's JSON mapping says.

#![forbid(unsafe_code)]

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoint answered ({0})")]
    Unreachable(String),
    #[error("etcd refused the request: {0}")]
    Refused(String),
    #[error("etcd's answer could not be read: {0}")]
    Malformed(String),
}

/// A key and its value as etcd holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// What a create-if-absent transaction found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The key was absent and now exists at this revision.
    Yes { revision: i64 },
    /// The key existed: here it is.
    Exists(KeyValue),
}

/// One change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, revision: i64 },
}

/// Client options: endpoints (`host:port`), credentials, the deadline of
/// each request.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub user: Option<(String, String)>,
    pub request_timeout: Duration,
    /// HTTPS with this configuration (`etcds://`); plain HTTP without.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl EtcdOptions {
    /// An HTTP client that connects within the request timeout, over TLS
    /// when configured.
    fn agent(&self) -> ureq::AgentBuilder {
        let builder = ureq::AgentBuilder::new().timeout_connect(self.request_timeout);
        match &self.tls {
            Some(config) => builder.tls_config(config.clone()),
            None => builder,
        }
    }

    fn url(&self, endpoint: usize, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.endpoints[endpoint])
    }
}

pub struct Etcd {
    options: EtcdOptions,
    agent: ureq::Agent,
    /// The endpoint that answered last: tried first.
    current: usize,
    token: Option<String>,
}

impl Etcd {
    pub fn new(options: EtcdOptions) -> Self {
        // A whole request within its timeout: connect, then the answer.
        let agent = options.agent().timeout(options.request_timeout).build();
        Etcd { options, agent, current: 0, token: None }
    }

    /// POST a JSON body to a gateway path, trying each endpoint once,
    /// authenticating (again) when etcd asks for it.
    fn call(&mut self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        match self.call_once(path, body) {
            Err(EtcdError::Refused(why)) if self.options.user.is_some() && why.contains("token") => {
                self.token = None;
                self.call_once(path, body)
            }
            other => other,
        }
    }

    fn call_once(&mut self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        if self.token.is_none() && self.options.user.is_some() && path != "/v3/auth/authenticate" {
            self.authenticate()?;
        }
        let n = self.options.endpoints.len();
        let mut last_error = String::from("no endpoints");
        for attempt in 0..n {
            let index = (self.current + attempt) % n;
            let url = self.options.url(index, path);
            let mut request = self.agent.post(&url);
            if let Some(token) = &self.token {
                request = request.set("Authorization", token);
            }
            match request.send_json(body.clone()) {
                Ok(response) => {
                    self.current = index;
                    return response.into_json::<Value>().map_err(|e| EtcdError::Malformed(e.to_string()));
                }
                Err(ureq::Error::Status(code, response)) => {
                    self.current = index;
                    let text = response.into_string().unwrap_or_default();
                    let message = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v.get("message").or(v.get("error")).and_then(Value::as_str).map(str::to_owned))
                        .unwrap_or(text);
                    return Err(EtcdError::Refused(format!("HTTP {code}: {message}")));
                }
                Err(ureq::Error::Transport(t)) => last_error = format!("{}: {t}", self.options.endpoints[index]),
            }
        }
        Err(EtcdError::Unreachable(last_error))
    }

    fn authenticate(&mut self) -> Result<(), EtcdError> {
        let Some((name, password)) = self.options.user.clone() else { return Ok(()) };
        let answer = self.call_once("/v3/auth/authenticate", &json!({ "name": name, "password": password }))?;
        let token = answer.get("token").and_then(Value::as_str).ok_or_else(|| malformed("authenticate", &answer))?;
        self.token = Some(token.to_owned());
        Ok(())
    }

    /// A new lease of `ttl` seconds.
    pub fn grant(&mut self, ttl: Duration) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/lease/grant", &json!({ "TTL": ttl.as_secs().max(1) }))?;
        int(&answer, "ID").filter(|id| *id != 0).ok_or_else(|| malformed("lease grant", &answer))
    }

    /// Renews the lease: its remaining TTL, or None when etcd no longer
    /// knows it (expired).
    pub fn keepalive(&mut self, lease: i64) -> Result<Option<Duration>, EtcdError> {
        let answer = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        let result = answer.get("result").unwrap_or(&answer);
        if let Some(error) = answer.get("error") {
            return Err(EtcdError::Refused(error.to_string()));
        }
        Ok(int(result, "TTL").filter(|ttl| *ttl > 0).map(|ttl| Duration::from_secs(ttl as u64)))
    }

    pub fn revoke(&mut self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() })).map(drop)
    }

    /// Creates `key` bound to `lease` if it does not exist (compare
    /// create_revision = 0), else returns what is there.
    pub fn create_if_absent(&mut self, key: &str, value: &[u8], lease: i64) -> Result<Created, EtcdError> {
        let k = B64.encode(key);
        let body = json!({
            "compare": [{ "key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
            "success": [{ "request_put": { "key": k, "value": B64.encode(value), "lease": lease.to_string() } }],
            "failure": [{ "request_range": { "key": k } }],
        });
        let answer = self.call("/v3/kv/txn", &body)?;
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            let revision = answer.get("header").and_then(|h| int(h, "revision"));
            return revision.map(|revision| Created::Yes { revision }).ok_or_else(|| malformed("txn", &answer));
        }
        let kv = answer.pointer("/responses/0/response_range/kvs/0").map(key_value).transpose()?;
        match kv {
            Some(kv) => Ok(Created::Exists(kv)),
            // Deleted between the compare and the range: cannot happen in
            // one transaction, but a retry decides it.
            None => Err(EtcdError::Malformed("a failed create found no key".into())),
        }
    }

    /// Sets `key` bound to `lease`, whatever was there.
    pub fn put(&mut self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let body = json!({ "key": B64.encode(key), "value": B64.encode(value), "lease": lease.to_string() });
        self.call("/v3/kv/put", &body).map(drop)
    }

    /// Deletes `key` only if it is still the one created at
    /// `create_revision` (not a newer owner's). True if it was deleted.
    pub fn delete_if_created_at(&mut self, key: &str, create_revision: i64) -> Result<bool, EtcdError> {
        let k = B64.encode(key);
        let body = json!({
            "compare": [{ "key": k, "target": "CREATE", "result": "EQUAL",
                          "create_revision": create_revision.to_string() }],
            "success": [{ "request_delete_range": { "key": k } }],
        });
        let answer = self.call("/v3/kv/txn", &body)?;
        Ok(answer.get("succeeded").and_then(Value::as_bool) == Some(true))
    }

    /// Every key under `prefix` and the store's revision at that moment.
    pub fn range_prefix(&mut self, prefix: &str) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let body = json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) });
        let answer = self.call("/v3/kv/range", &body)?;
        let revision =
            answer.get("header").and_then(|h| int(h, "revision")).ok_or_else(|| malformed("range", &answer))?;
        let kvs = match answer.get("kvs").and_then(Value::as_array) {
            Some(kvs) => kvs.iter().map(key_value).collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok((revision, kvs))
    }

    /// Opens a watch of every key under `prefix` from `start_revision` on;
    /// the returned stream blocks reading it. `idle_timeout` bounds how long
    /// a read may wait: etcd sends progress notifications only every ten
    /// minutes, so a silent watch is re-opened from its last revision
    /// rather than trusted forever (a dead TCP peer looks the same).
    pub fn watch(
        &mut self,
        prefix: &str,
        start_revision: i64,
        idle_timeout: Duration,
    ) -> Result<WatchStream, EtcdError> {
        let body = json!({ "create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        // A fresh token for every watch: the stream has no retry of its
        // own, and a token left idle since the last request may have
        // expired (etcd's simple tokens last 5 minutes without use).
        if self.options.user.is_some() {
            self.authenticate()?;
        }
        let watch_agent = self.options.agent().timeout_read(idle_timeout).build();
        let n = self.options.endpoints.len();
        let mut last_error = String::from("no endpoints");
        for attempt in 0..n {
            let index = (self.current + attempt) % n;
            let url = self.options.url(index, "/v3/watch");
            let mut request = watch_agent.post(&url);
            if let Some(token) = &self.token {
                request = request.set("Authorization", token);
            }
            match request.send_json(body.clone()) {
                Ok(response) => {
                    let reader = std::io::BufReader::new(response.into_reader());
                    return Ok(WatchStream {
                        values:
                            serde_json::Deserializer::from_reader(Box::new(reader) as Box<dyn std::io::Read + Send>)
                                .into_iter(),
                    });
                }
                Err(ureq::Error::Status(code, response)) => {
                    return Err(EtcdError::Refused(format!(
                        "HTTP {code}: {}",
                        response.into_string().unwrap_or_default()
                    )));
                }
                Err(ureq::Error::Transport(t)) => last_error = format!("{}: {t}", self.options.endpoints[index]),
            }
        }
        Err(EtcdError::Unreachable(last_error))
    }
}

/// A watch's stream of responses.
pub struct WatchStream {
    values: serde_json::StreamDeserializer<'static, serde_json::de::IoRead<Box<dyn std::io::Read + Send>>, Value>,
}

/// One response of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchBatch {
    /// The watch is set up.
    Created,
    /// Changes, in order, up to the header's revision.
    Events { revision: i64, events: Vec<WatchEvent> },
    /// etcd compacted the history the watch asked for: re-read everything.
    Compacted { compact_revision: i64 },
    /// etcd cancelled the watch (reason given).
    Cancelled(String),
}

impl WatchStream {
    /// The next response; an error when the connection ended or timed out.
    pub fn next_batch(&mut self) -> Result<WatchBatch, EtcdError> {
        let value = match self.values.next() {
            Some(Ok(value)) => value,
            Some(Err(e)) => return Err(EtcdError::Unreachable(format!("the watch ended: {e}"))),
            None => return Err(EtcdError::Unreachable("the watch ended".into())),
        };
        if let Some(error) = value.get("error") {
            return Err(EtcdError::Refused(error.to_string()));
        }
        let result = value.get("result").ok_or_else(|| malformed("watch", &value))?;
        if let Some(compact_revision) = int(result, "compact_revision").filter(|r| *r > 0) {
            return Ok(WatchBatch::Compacted { compact_revision });
        }
        if result.get("canceled").and_then(Value::as_bool) == Some(true) {
            let reason = result.get("cancel_reason").and_then(Value::as_str).unwrap_or("no reason given");
            return Ok(WatchBatch::Cancelled(reason.to_owned()));
        }
        if result.get("created").and_then(Value::as_bool) == Some(true) {
            return Ok(WatchBatch::Created);
        }
        let revision = result.get("header").and_then(|h| int(h, "revision")).unwrap_or(0);
        let mut events = Vec::new();
        for event in result.get("events").and_then(Value::as_array).into_iter().flatten() {
            let kv = event.get("kv").ok_or_else(|| malformed("watch event", event))?;
            if event.get("type").and_then(Value::as_str) == Some("DELETE") {
                let key = decode_string(kv.get("key"))?;
                events.push(WatchEvent::Delete { key, revision: int(kv, "mod_revision").unwrap_or(revision) });
            } else {
                events.push(WatchEvent::Put(key_value(kv)?));
            }
        }
        Ok(WatchBatch::Events { revision, events })
    }
}

/// The end of the range that holds every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn int(value: &Value, field: &str) -> Option<i64> {
    match value.get(field)? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn decode(value: Option<&Value>) -> Result<Vec<u8>, EtcdError> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => B64.decode(s).map_err(|e| EtcdError::Malformed(format!("base64: {e}"))),
        Some(other) => Err(EtcdError::Malformed(format!("expected base64, got {other}"))),
    }
}

fn decode_string(value: Option<&Value>) -> Result<String, EtcdError> {
    String::from_utf8(decode(value)?).map_err(|e| EtcdError::Malformed(format!("a key is not UTF-8: {e}")))
}

fn key_value(kv: &Value) -> Result<KeyValue, EtcdError> {
    Ok(KeyValue {
        key: decode_string(kv.get("key"))?,
        value: decode(kv.get("value"))?,
        // Fields equal to 0 are left out of the JSON.
        create_revision: int(kv, "create_revision").unwrap_or(0),
        mod_revision: int(kv, "mod_revision").unwrap_or(0),
        lease: int(kv, "lease").unwrap_or(0),
    })
}

fn malformed(what: &str, answer: &Value) -> EtcdError {
    let mut text = answer.to_string();
    text.truncate(300);
    EtcdError::Malformed(format!("{what}: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end("/lrpm/farm/"), b"/lrpm/farm0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
