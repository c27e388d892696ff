//! One subscriber connection, in each peer's wire protocol:
//!
//! - `signalr`: our hub (negotiate with Bearer, WebSocket, JSON protocol
//!   handshake, `JoinDispatchGroup` waited for by its completion);
//! - `socketio`: Engine.IO v4 over a raw WebSocket
//!   (`/socket.io/?EIO=4&transport=websocket`: open packet `0{…}`, `40`,
//!   `40{"sid":…}`, then `421["join",ROOM]` answered by `431[…]`; events are
//!   `42["JobAssigned",{…}]`; the server's ping `2` is answered with `3`);
//! - `floor`: a bare WebSocket (every connection gets every message).
//!
//! Our hub can also be reached over Long Polling or Server-Sent Events
//! (`--transport`): the same records, carried by HTTP requests (see
//! [`Transport`]); what the connection does with them is the same code.
//!
//! Every payload carries `"jobId":"…"`; a connection reports the job ids of the
//! events it reads (found by a plain search, the same cost for every peer).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::ValueEnum;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{SinkExt, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The SignalR record separator.
const RS: u8 = 0x1e;

/// How often a hub client sends a Ping (the official clients: 15 s; the server drops a silent one after 30 s).
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// The server a run talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// SmartScheduler's hub (SignalR JSON protocol); events are real assignments over HTTP.
    Signalr,
    /// The socket.io peer in bench/socketio (rooms; `POST /publish`).
    Socketio,
    /// `ss-floor`: raw WebSocket broadcast, no groups (`POST /publish`).
    Floor,
}

impl Peer {
    /// The name used in results.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Signalr => "signalr",
            Peer::Socketio => "socketio",
            Peer::Floor => "floor",
        }
    }

    /// Whether a connection receives only its group's events.
    pub fn has_groups(self) -> bool {
        self != Peer::Floor
    }
}

/// How a connection to our hub carries its records (the peers: WebSockets only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// One WebSocket; records in text frames.
    #[value(name = "websockets")]
    WebSockets,
    /// Long Polling: `GET /hubs/jobs?id=…` again and again, each 200 body
    /// holding whole records (204: closed); sends are POSTs.
    #[value(name = "longpolling")]
    LongPolling,
    /// Server-Sent Events: one `GET` with `Accept: text/event-stream`, one
    /// record per `data:` event; sends are POSTs.
    #[value(name = "sse")]
    Sse,
}

impl Transport {
    /// The name used in results.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSockets => "websockets",
            Transport::LongPolling => "longpolling",
            Transport::Sse => "sse",
        }
    }

    /// An HTTP client for Long Polling and SSE connections made from
    /// `source`: no overall timeout (a poll waits up to 90 s, a stream lasts
    /// the run), idle pooled connections dropped after 1 s (the service closes
    /// them after 5 s; see `http_client` in main.rs).
    pub fn http_client(source: Option<IpAddr>) -> Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .local_address(source)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(1))
            .build()?)
    }
}

/// The group a connection joins: a region's dispatchers, or one contractor.
#[derive(Debug, Clone)]
pub enum Group {
    /// `dispatch/{region}` (`JoinDispatchGroup`).
    Dispatch(String),
    /// `contractor/{id}` (`JoinContractorGroup`).
    Contractor(String),
}

impl Group {
    /// The group's name on our hub, and the room's on socket.io.
    pub fn name(&self) -> String {
        match self {
            Group::Dispatch(region) => format!("dispatch/{region}"),
            Group::Contractor(id) => format!("contractor/{id}"),
        }
    }

    fn hub_method(&self) -> (&'static str, &str) {
        match self {
            Group::Dispatch(region) => ("JoinDispatchGroup", region),
            Group::Contractor(id) => ("JoinContractorGroup", id),
        }
    }
}

/// Where and as whom to connect.
pub struct Endpoint {
    /// Base URL (`http://host:port`).
    pub base: String,
    /// The server's address (resolved once).
    pub addr: SocketAddr,
    /// Bearer token (our hub only).
    pub token: String,
}

impl Endpoint {
    /// Resolves `base`.
    pub async fn new(base: &str, token: &str) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base).context("--base")?;
        let host = url.host_str().ok_or_else(|| anyhow!("--base has no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let addr =
            tokio::net::lookup_host((host, port)).await?.next().ok_or_else(|| anyhow!("{host} does not resolve"))?;
        Ok(Self { base, addr, token: token.to_owned() })
    }
}

type Ws = WebSocketStream<TcpStream>;

/// What a read produced.
pub enum Event {
    /// A JobAssigned event with this `jobId`.
    Job(String),
    /// Anything else (pings, acknowledgements).
    Other,
}

/// An open, joined connection.
pub struct Conn {
    peer: Peer,
    link: Link,
    /// SignalR: the unfinished record; records split but not yet returned.
    tail: Vec<u8>,
    records: VecDeque<Vec<u8>>,
    /// Bytes read from the server (see [`Conn::bytes_received`]).
    bytes: u64,
}

/// What carries a connection's records.
enum Link {
    Ws(Ws),
    /// Long Polling or SSE: POSTs to `url` send, `recv` receives.
    Http {
        http: reqwest::Client,
        url: String,
        bearer: String,
        recv: Recv,
    },
}

/// The receiving side of an HTTP transport. Both are safe to cancel (a read
/// dropped by a `select!` loses nothing): the poll in flight is kept, and a
/// stream's `next()` takes nothing until it returns.
enum Recv {
    /// The poll in flight: status, the size of its status line and headers, body.
    Poll(Option<BoxFuture<'static, reqwest::Result<(StatusCode, u64, Bytes)>>>),
    /// The event stream, the unfinished line and the current event's data.
    Sse { body: BoxStream<'static, reqwest::Result<Bytes>>, line: Vec<u8>, data: Vec<u8> },
}

/// Opens a TCP connection from `source` (a loopback address such as
/// 127.0.0.2, to spread the ephemeral ports) and upgrades it.
async fn open_ws(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
    recv_buffer: Option<u32>,
    url: &str,
    bearer: bool,
) -> Result<Ws> {
    let socket = if endpoint.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("bind {ip}"))?;
    }
    if let Some(size) = recv_buffer {
        // Before connecting, so the window the server sees stays small.
        socket.set_recv_buffer_size(size)?;
    }
    let stream = socket.connect(endpoint.addr).await.context("TCP connect")?;
    stream.set_nodelay(true)?;
    let mut request = url.into_client_request()?;
    if bearer {
        request.headers_mut().insert(AUTHORIZATION, format!("Bearer {}", endpoint.token).parse()?);
    }
    // 16 KiB read chunks rather than tungstenite's 128 KiB: thousands of these live in one process.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .context("WebSocket upgrade")?;
    Ok(ws)
}

/// The `"jobId":"…"` of a payload, without parsing it.
fn job_id(text: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"jobId\":\"";
    let start = text.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = text[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&text[start..start + len]).ok().map(str::to_owned)
}

/// The size on the wire of a WebSocket frame from the server (not masked) carrying `len` bytes.
fn ws_frame_size(len: usize) -> u64 {
    let header = match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    (header + len) as u64
}

/// The size on the wire of a response's status line and headers (HTTP/1.1;
/// not the chunk framing of its body, which reqwest does not show).
fn head_size(res: &reqwest::Response) -> u64 {
    let reason = res.status().canonical_reason().unwrap_or("").len();
    let status_line = "HTTP/1.1 200 ".len() + reason + 2;
    let headers: usize = res.headers().iter().map(|(name, value)| name.as_str().len() + 2 + value.len() + 2).sum();
    (status_line + headers + 2) as u64
}

/// One Long Polling request, as a future that owns everything it needs (so
/// that it can be kept while a read is cancelled).
fn poll(
    http: &reqwest::Client,
    url: &str,
    bearer: &str,
) -> BoxFuture<'static, reqwest::Result<(StatusCode, u64, Bytes)>> {
    let request = http.get(url).bearer_auth(bearer);
    Box::pin(async move {
        let res = request.send().await?;
        let status = res.status();
        let head = head_size(&res);
        Ok((status, head, res.bytes().await?))
    })
}

/// Negotiates with our hub; the connection token.
async fn negotiate(http: &reqwest::Client, endpoint: &Endpoint) -> Result<String> {
    let res = http
        .post(format!("{}/hubs/jobs/negotiate?negotiateVersion=1", endpoint.base))
        .bearer_auth(&endpoint.token)
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await.context("negotiate answer")?;
    if !status.is_success() {
        bail!("negotiate: {status} {body}");
    }
    body["connectionToken"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("negotiate: no connectionToken in {body}"))
}

/// Opens the receiving side of a Long Polling or SSE connection: the first
/// poll (answered at once), or the event stream. Returns it with the bytes read.
async fn open_http(transport: Transport, http: &reqwest::Client, url: &str, bearer: &str) -> Result<(Recv, u64)> {
    match transport {
        Transport::LongPolling => {
            let (status, head, body) = poll(http, url, bearer).await.context("first poll")?;
            if status != StatusCode::OK {
                bail!("first poll: {status} {}", String::from_utf8_lossy(&body));
            }
            Ok((Recv::Poll(None), head + body.len() as u64))
        }
        Transport::Sse => {
            let res = http
                .get(url)
                .bearer_auth(bearer)
                .header(ACCEPT, "text/event-stream")
                .send()
                .await
                .context("event stream")?;
            let status = res.status();
            if status != StatusCode::OK {
                bail!("event stream: {status} {}", res.text().await.unwrap_or_default());
            }
            let head = head_size(&res);
            Ok((Recv::Sse { body: res.bytes_stream().boxed(), line: Vec::new(), data: Vec::new() }, head))
        }
        Transport::WebSockets => bail!("not an HTTP transport"),
    }
}

impl Recv {
    /// Reads until whole records arrive; returns them (each ending in the
    /// record separator), adding what was read to `bytes`.
    async fn next(&mut self, http: &reqwest::Client, url: &str, bearer: &str, bytes: &mut u64) -> Result<Bytes> {
        match self {
            Recv::Poll(pending) => loop {
                let result = pending.get_or_insert_with(|| poll(http, url, bearer)).await;
                *pending = None;
                let (status, head, body) = result.context("poll")?;
                *bytes += head + body.len() as u64;
                match status {
                    StatusCode::OK if body.is_empty() => {} // the poll timed out: poll again
                    StatusCode::OK => return Ok(body),
                    StatusCode::NO_CONTENT => bail!("connection closed (poll answered 204)"),
                    _ => bail!("poll: {status} {}", String::from_utf8_lossy(&body)),
                }
            },
            Recv::Sse { body, line, data } => loop {
                let chunk = body.next().await.ok_or_else(|| anyhow!("event stream ended"))?.context("event stream")?;
                *bytes += chunk.len() as u64;
                let mut records = Vec::new();
                let mut rest = &chunk[..];
                while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
                    let whole: &[u8] = if line.is_empty() {
                        &rest[..pos]
                    } else {
                        line.extend_from_slice(&rest[..pos]);
                        line
                    };
                    let whole = whole.strip_suffix(b"\r").unwrap_or(whole);
                    if whole.is_empty() {
                        // The end of an event: its data is one record (kept with its separator).
                        if !data.is_empty() {
                            if data.last() != Some(&RS) {
                                data.push(RS);
                            }
                            records.append(data);
                        }
                    } else if let Some(value) = whole.strip_prefix(b"data:") {
                        if !data.is_empty() {
                            data.push(b'\n');
                        }
                        data.extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
                    } // comments (':…') and other fields: nothing to do
                    line.clear();
                    rest = &rest[pos + 1..];
                }
                line.extend_from_slice(rest);
                if !records.is_empty() {
                    return Ok(Bytes::from(records));
                }
            },
        }
    }
}

impl Conn {
    /// Connects and joins `group` (on our hub and socket.io; the floor has no
    /// groups), over `transport` (our hub only; the peers: WebSockets).
    /// `recv_buffer` sets the socket's receive buffer (`SO_RCVBUF`;
    /// WebSockets only). Long Polling and SSE send every request with `http`
    /// (see [`Transport::http_client`]).
    pub async fn open(
        peer: Peer,
        transport: Transport,
        http: &reqwest::Client,
        endpoint: &Endpoint,
        source: Option<IpAddr>,
        recv_buffer: Option<u32>,
        group: &Group,
    ) -> Result<Self> {
        if transport != Transport::WebSockets {
            if peer != Peer::Signalr {
                bail!("--transport {} is for our hub only", transport.name());
            }
            if recv_buffer.is_some() {
                bail!("a small receive buffer needs WebSockets");
            }
        }
        let ws_base = endpoint.base.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
        let mut conn = match peer {
            Peer::Signalr => {
                let token = negotiate(http, endpoint).await?;
                if transport == Transport::WebSockets {
                    let ws = open_ws(endpoint, source, recv_buffer, &format!("{ws_base}/hubs/jobs?id={token}"), true)
                        .await?;
                    Self::new(peer, Link::Ws(ws))
                } else {
                    let url =
                        reqwest::Url::parse_with_params(&format!("{}/hubs/jobs", endpoint.base), [("id", &token)])?
                            .to_string();
                    let (recv, bytes) = open_http(transport, http, &url, &endpoint.token).await?;
                    let mut conn =
                        Self::new(peer, Link::Http { http: http.clone(), url, bearer: endpoint.token.clone(), recv });
                    conn.bytes = bytes;
                    conn
                }
            }
            Peer::Socketio => {
                let ws = open_ws(
                    endpoint,
                    source,
                    recv_buffer,
                    &format!("{ws_base}/socket.io/?EIO=4&transport=websocket"),
                    false,
                )
                .await?;
                Self::new(peer, Link::Ws(ws))
            }
            Peer::Floor => {
                return Ok(Self::new(peer, Link::Ws(open_ws(endpoint, source, recv_buffer, &ws_base, false).await?)))
            }
        };
        conn.join(group).await?;
        Ok(conn)
    }

    fn new(peer: Peer, link: Link) -> Self {
        Self { peer, link, tail: Vec::new(), records: VecDeque::new(), bytes: 0 }
    }

    /// Bytes read from the server so far: WebSocket frames (payload and
    /// header); Long Polling responses (status line, headers, body); the SSE
    /// stream's status line and headers and its body as sent (`data: …`
    /// lines; not the HTTP chunk framing).
    pub fn bytes_received(&self) -> u64 {
        self.bytes
    }

    async fn send_text(&mut self, text: String) -> Result<()> {
        match &mut self.link {
            Link::Ws(ws) => ws.send(Message::text(text)).await?,
            Link::Http { http, url, bearer, .. } => {
                let res = http
                    .post(url.as_str())
                    .bearer_auth(bearer.as_str())
                    .header(CONTENT_TYPE, "text/plain;charset=UTF-8")
                    .body(text)
                    .send()
                    .await
                    .context("send")?;
                let status = res.status();
                let body = res.bytes().await.unwrap_or_default();
                if status != StatusCode::OK {
                    bail!("send: {status} {}", String::from_utf8_lossy(&body));
                }
            }
        }
        Ok(())
    }

    async fn send_record(&mut self, record: &Value) -> Result<()> {
        let mut text = record.to_string();
        text.push(RS as char);
        self.send_text(text).await
    }

    /// The next text frame (SignalR: the next record), answering socket.io pings.
    async fn next_text(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(record) = self.records.pop_front() {
                return Ok(record);
            }
            let data: Bytes = match &mut self.link {
                Link::Ws(ws) => {
                    let message = ws.next().await.ok_or_else(|| anyhow!("connection closed"))??;
                    match message {
                        Message::Text(text) => {
                            self.bytes += ws_frame_size(text.len());
                            text.into()
                        }
                        Message::Binary(_) => bail!("unexpected binary frame"),
                        Message::Close(frame) => bail!("connection closed: {frame:?}"),
                        _ => continue, // WebSocket ping/pong: tungstenite answers pings itself.
                    }
                }
                Link::Http { http, url, bearer, recv } => recv.next(http, url, bearer, &mut self.bytes).await?,
            };
            match self.peer {
                Peer::Signalr => {
                    let mut rest = &data[..];
                    while let Some(pos) = rest.iter().position(|&b| b == RS) {
                        let mut record = std::mem::take(&mut self.tail);
                        record.extend_from_slice(&rest[..pos]);
                        self.records.push_back(record);
                        rest = &rest[pos + 1..];
                    }
                    self.tail.extend_from_slice(rest);
                }
                Peer::Socketio if &data[..] == b"2" => self.send_text("3".to_owned()).await?,
                Peer::Socketio if data.starts_with(b"1") || data.starts_with(b"41") => {
                    bail!("closed by the server: {}", String::from_utf8_lossy(&data))
                }
                _ => return Ok(data.to_vec()),
            }
        }
    }

    async fn join(&mut self, group: &Group) -> Result<()> {
        match self.peer {
            Peer::Signalr => {
                self.send_record(&json!({"protocol": "json", "version": 1})).await?;
                let first = self.next_text().await?;
                if first != b"{}" {
                    bail!("handshake refused: {}", String::from_utf8_lossy(&first));
                }
                self.join_group(group, 1).await
            }
            Peer::Socketio => {
                let open = self.next_text().await?;
                if !open.starts_with(b"0{") {
                    bail!("expected the Engine.IO open packet, got {}", String::from_utf8_lossy(&open));
                }
                self.send_text("40".to_owned()).await?;
                let connected = self.next_text().await?;
                if !connected.starts_with(b"40") {
                    bail!("socket.io connect refused: {}", String::from_utf8_lossy(&connected));
                }
                self.send_text(format!("421{}", json!(["join", group.name()]))).await?;
                loop {
                    if self.next_text().await?.starts_with(b"431") {
                        return Ok(());
                    }
                }
            }
            Peer::Floor => Ok(()),
        }
    }

    /// Joins `group` on our hub after the handshake, waiting for the
    /// completion of invocation number `invocation` (the first join is 1).
    pub async fn join_group(&mut self, group: &Group, invocation: u64) -> Result<()> {
        if self.peer != Peer::Signalr {
            bail!("joining several groups is only done on our hub");
        }
        let (method, argument) = group.hub_method();
        let id = invocation.to_string();
        self.send_record(&json!({"type": 1, "invocationId": id, "target": method, "arguments": [argument]})).await?;
        loop {
            let record: Value = serde_json::from_slice(&self.next_text().await?).context("record")?;
            match record["type"].as_u64() {
                Some(3) if record["invocationId"] == id.as_str() => match record.get("error") {
                    Some(error) => bail!("{method} failed: {error}"),
                    None => return Ok(()),
                },
                Some(7) => bail!("closed by the server: {record}"),
                _ => {}
            }
        }
    }

    /// Reads until something arrives.
    pub async fn next_event(&mut self) -> Result<Event> {
        let text = self.next_text().await?;
        let is_event = match self.peer {
            Peer::Signalr => {
                if text.starts_with(b"{\"type\":7") || text.windows(9).any(|w| w == b"\"type\":7,") {
                    bail!("closed by the server: {}", String::from_utf8_lossy(&text));
                }
                text.windows(13).any(|w| w == b"\"JobAssigned\"")
            }
            Peer::Socketio => text.starts_with(b"42[\"JobAssigned\""),
            Peer::Floor => true,
        };
        Ok(match is_event.then(|| job_id(&text)).flatten() {
            Some(id) => Event::Job(id),
            None => Event::Other,
        })
    }

    /// Keeps the connection alive: a SignalR Ping (the others need nothing from the client).
    pub async fn keepalive(&mut self) -> Result<()> {
        if self.peer == Peer::Signalr {
            self.send_record(&json!({"type": 6})).await?;
        }
        Ok(())
    }

    /// Closes the connection (best effort): a WebSocket close; Long Polling:
    /// `DELETE /hubs/jobs?id=…`; SSE: the stream is dropped, which ends it.
    pub async fn close(self) {
        match self.link {
            Link::Ws(mut ws) => {
                let _ = ws.close(None).await;
            }
            Link::Http { http, url, bearer, recv: Recv::Poll(_) } => {
                let _ = http.delete(url).bearer_auth(bearer).timeout(Duration::from_secs(5)).send().await;
            }
            Link::Http { recv: Recv::Sse { .. }, .. } => {}
        }
    }
}
