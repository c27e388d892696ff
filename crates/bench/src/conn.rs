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
//! Every payload carries `"jobId":"…"`; a connection reports the job ids of the
//! events it reads (found by a plain search, the same cost for every peer).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use futures_util::{SinkExt, StreamExt};
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
    ws: Ws,
    /// SignalR: the unfinished record; records split but not yet returned.
    tail: Vec<u8>,
    records: VecDeque<Vec<u8>>,
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

impl Conn {
    /// Connects and joins `group` (on our hub and socket.io; the floor has no
    /// groups). `recv_buffer` sets the socket's receive buffer (`SO_RCVBUF`).
    pub async fn open(
        peer: Peer,
        http: &reqwest::Client,
        endpoint: &Endpoint,
        source: Option<IpAddr>,
        recv_buffer: Option<u32>,
        group: &Group,
    ) -> Result<Self> {
        let ws_base = endpoint.base.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
        let mut conn = match peer {
            Peer::Signalr => {
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
                let token = body["connectionToken"]
                    .as_str()
                    .ok_or_else(|| anyhow!("negotiate: no connectionToken in {body}"))?;
                let ws =
                    open_ws(endpoint, source, recv_buffer, &format!("{ws_base}/hubs/jobs?id={token}"), true).await?;
                Self::new(peer, ws)
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
                Self::new(peer, ws)
            }
            Peer::Floor => return Ok(Self::new(peer, open_ws(endpoint, source, recv_buffer, &ws_base, false).await?)),
        };
        conn.join(group).await?;
        Ok(conn)
    }

    fn new(peer: Peer, ws: Ws) -> Self {
        Self { peer, ws, tail: Vec::new(), records: VecDeque::new() }
    }

    async fn send_text(&mut self, text: String) -> Result<()> {
        self.ws.send(Message::text(text)).await?;
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
            let message = self.ws.next().await.ok_or_else(|| anyhow!("connection closed"))??;
            let data = match message {
                Message::Text(text) => text,
                Message::Binary(_) => bail!("unexpected binary frame"),
                Message::Close(frame) => bail!("connection closed: {frame:?}"),
                _ => continue, // WebSocket ping/pong: tungstenite answers pings itself.
            };
            match self.peer {
                Peer::Signalr => {
                    let mut rest = data.as_bytes();
                    while let Some(pos) = rest.iter().position(|&b| b == RS) {
                        let mut record = std::mem::take(&mut self.tail);
                        record.extend_from_slice(&rest[..pos]);
                        self.records.push_back(record);
                        rest = &rest[pos + 1..];
                    }
                    self.tail.extend_from_slice(rest);
                }
                Peer::Socketio if data.as_str() == "2" => self.send_text("3".to_owned()).await?,
                Peer::Socketio if data.as_str().starts_with('1') || data.as_str().starts_with("41") => {
                    bail!("closed by the server: {}", data.as_str())
                }
                _ => return Ok(data.as_bytes().to_vec()),
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

    /// Closes the WebSocket (best effort).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
