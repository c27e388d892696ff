//! The dedicated WebSocket transport (opt-in: `SMARTSCHEDULER_HUB_WEBSOCKET=dedicated`):
//! WebSocket upgrades handed over socket and all, served with tungstenite on
//! socket threads of their own.
//!
//! actix-http passes every request that asks for a WebSocket upgrade to the
//! server's *upgrade service* together with the connection itself (the
//! socket, the bytes read past the request head and the HTTP codec). This
//! service runs the request through the same actix-web application as every
//! other request, so routing, CORS, logging, authentication and every
//! problem+json refusal stay where they are. When the application answers
//! `101 Switching Protocols` with a [`Takeover`] attached, the service writes
//! that answer and gives the bare socket to the takeover, which speaks
//! WebSocket on it with tungstenite, on one of the hub's [`SocketThreads`].
//! Any other answer is written as it is and the connection ends.
//!
//! Why keep it beside actix-ws (the default, [`super::actix_ws`]): actix-ws
//! leaves the socket inside actix-http's HTTP/1 dispatcher, which keeps an
//! 8 KiB read and an 8 KiB write buffer per connection and puts a second
//! queue and task between a hub connection and its socket, on the same
//! workers as the API's requests (see `docs/benchmarks.md` for what that
//! costs, and `docs/architecture.md`, "WebSockets on the bare socket").

use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_codec::{Framed, FramedParts};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::h1::{Codec, Message};
use actix_http::{ConnectionType, Request, Response, StatusCode};
use actix_service::{fn_factory, fn_service, Service, ServiceFactory};
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::{Incoming, Lost, Transport};
use crate::hub::{Fanout, HubHandle};
use crate::protocol::Encoded;

/// A hub WebSocket: tungstenite on the socket actix-http handed over.
pub type Ws = WebSocketStream<TcpStream>;

/// The connection a takeover runs on its socket.
type TakeoverRun = LocalBoxFuture<'static, ()>;

/// An upgraded socket, and the fan-out task of the socket thread it runs on.
pub type Upgraded = (Ws, Fanout);

/// What runs on the socket after a `101`: attach it to the `101` response's
/// extensions. It gets `None` when the `101` could not be written (the
/// client went away), so it can put back what it took (a parked connection).
pub struct Takeover {
    run: Box<dyn FnOnce(Option<Upgraded>) -> TakeoverRun + Send>,
    config: WebSocketConfig,
}

impl Takeover {
    /// Runs `run` on the upgraded socket, with the fan-out task of the
    /// socket thread it runs on, reading at most `max_message_bytes` per
    /// message (larger messages and frames end the read with an error).
    pub fn new(max_message_bytes: usize, run: impl FnOnce(Option<Upgraded>) -> TakeoverRun + Send + 'static) -> Self {
        Self { run: Box::new(run), config: ws_config(max_message_bytes) }
    }
}

impl fmt::Debug for Takeover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Takeover")
    }
}

/// tungstenite's settings for a hub socket. The read buffer is small: an
/// idle connection holds it all its life (zeroed, so resident), and what a
/// client sends is a few hundred bytes (a larger frame grows it as needed).
/// Writes are buffered until flushed, so whatever is queued leaves in one
/// `send`.
fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(64 * 1024)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// The upgrade service for actix-http's `HttpServiceBuilder::upgrade`: give
/// it a factory of the same application the server serves. A client that
/// leaves before its answer is written is not an error (actix-http would log
/// one): it is logged at debug level.
pub fn service<S, B>(
    app: S,
    threads: SocketThreads,
) -> impl ServiceFactory<
    (Request, Framed<TcpStream, Codec>),
    Config = (),
    Response = (),
    Error = actix_web::Error,
    InitError = (),
>
where
    S: ServiceFactory<Request, Config = ()> + 'static,
    S::Response: Into<Response<B>>,
    S::Error: Into<Response<BoxBody>>,
    S::InitError: fmt::Debug,
    B: MessageBody + 'static,
{
    fn_factory(move || {
        let app = app.new_service(());
        let threads = threads.clone();
        async move {
            let app = Rc::new(app.await.map_err(|err| tracing::error!(?err, "the upgrade service's application"))?);
            Ok(fn_service(move |(req, framed): (Request, Framed<TcpStream, Codec>)| {
                let app = Rc::clone(&app);
                let threads = threads.clone();
                async move { upgrade(&*app, &threads, req, framed).await }
            }))
        }
    })
}

async fn upgrade<S, B>(
    app: &S,
    threads: &SocketThreads,
    req: Request,
    framed: Framed<TcpStream, Codec>,
) -> Result<(), actix_web::Error>
where
    S: Service<Request>,
    S::Response: Into<Response<B>>,
    S::Error: Into<Response<BoxBody>>,
    B: MessageBody + 'static,
{
    // The HTTP exchange is boxed: this future lives as long as the
    // connection, and only a small part should take room all that time.
    match Box::pin(answer(app, req, framed)).await {
        None => {}
        Some((takeover, None)) => (takeover.run)(None).await,
        Some((takeover, Some(socket))) => {
            // The connection runs on a socket thread; this task (which
            // actix-server counts, and waits for at a graceful stop) waits
            // for its end.
            let (done, ended) = oneshot::channel::<()>();
            let started = threads.next().send(Box::new(move |fanout: &Fanout| {
                let fanout = fanout.clone();
                actix_rt::spawn(async move {
                    socket.run(takeover, fanout).await;
                    drop(done);
                });
            }));
            if started.is_ok() {
                let _ = ended.await;
            }
        }
    }
    Ok(())
}

/// An upgraded socket on its way to a socket thread.
struct Handover {
    socket: std::net::TcpStream,
    leftover: Vec<u8>,
}

impl Handover {
    /// Registers the socket with this thread's runtime and runs the takeover on it.
    async fn run(self, takeover: Takeover, fanout: Fanout) {
        match TcpStream::from_std(self.socket) {
            Ok(io) => {
                let ws =
                    WebSocketStream::from_partially_read(io, self.leftover, Role::Server, Some(takeover.config)).await;
                (takeover.run)(Some((ws, fanout))).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "a hub socket could not join its thread");
                (takeover.run)(None).await;
            }
        }
    }
}

/// Work for a socket thread, given that thread's fan-out task.
type Job = Box<dyn FnOnce(&Fanout) + Send>;

/// The threads hub sockets run on, apart from actix's HTTP workers: with
/// thousands of connections a fan-out queues thousands of tasks, and on a
/// worker an HTTP request (an assignment) would wait behind all of them.
/// On threads of their own the OS shares the cores between deliveries and
/// requests. Each thread is an actix system (a runtime and a LocalSet) with
/// the hub's fan-out task for the connections it runs; a connection goes to
/// the next thread in turn.
///
/// They run at a lower priority than the rest of the process (nice
/// [`SOCKET_THREAD_NICE`] on Linux): when the cores are saturated, an
/// assignment's request, its commit and the relay go first, and the
/// deliveries take what is left. Deliveries then fall behind instead of the
/// assignments, and the frames queued meanwhile leave in fewer, larger
/// writes (see `docs/architecture.md`, "Socket threads and their priority"). A core that is not
/// saturated serves a socket thread at once whatever its priority.
#[derive(Clone)]
pub struct SocketThreads {
    threads: Arc<[mpsc::UnboundedSender<Job>]>,
    next: Arc<AtomicUsize>,
}

impl SocketThreads {
    /// Starts `count` threads (at least one) for `hub`'s connections. They
    /// stop when every handle is dropped, ending the connections they carry.
    ///
    /// # Errors
    /// When a thread cannot be started.
    pub fn start(count: usize, hub: &HubHandle) -> std::io::Result<Self> {
        let mut threads = Vec::new();
        for index in 0..count.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let hub = hub.clone();
            std::thread::Builder::new().name(format!("hub-sockets-{index}")).spawn(move || {
                lower_priority();
                actix_rt::System::new().block_on(async move {
                    let fanout = hub.start_fanout();
                    while let Some(job) = rx.recv().await {
                        job(&fanout);
                    }
                });
            })?;
            threads.push(tx);
        }
        Ok(Self { threads: threads.into(), next: Arc::new(AtomicUsize::new(0)) })
    }

    /// The way in to the next thread in turn: a job sent there runs on it.
    fn next(&self) -> &mpsc::UnboundedSender<Job> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len();
        &self.threads[index]
    }
}

/// How much lower than the rest of the process the socket threads run: a
/// nice value, from 0 (the same) to 19. At 10 a busy socket thread gets
/// about a tenth of a core that a request's thread also wants.
pub const SOCKET_THREAD_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`SOCKET_THREAD_NICE`] (on Linux
/// the nice value is a thread's own). Failing is harmless: logged, and the
/// thread runs at the process's priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let thread = Some(rustix::thread::gettid());
        let lowered = getpriority_process(thread)
            .and_then(|nice| setpriority_process(thread, (nice + SOCKET_THREAD_NICE).min(19)));
        if let Err(err) = lowered {
            tracing::warn!(error = %err, "a hub socket thread could not lower its priority");
        }
    }
}

/// Runs the request through the application and writes its answer. For a
/// `101` with a [`Takeover`], returns it with the socket (`None` when the
/// client left before the `101` was written).
async fn answer<S, B>(
    app: &S,
    req: Request,
    mut framed: Framed<TcpStream, Codec>,
) -> Option<(Takeover, Option<Handover>)>
where
    S: Service<Request>,
    S::Response: Into<Response<B>>,
    S::Error: Into<Response<BoxBody>>,
    B: MessageBody + 'static,
{
    let response: Response<BoxBody> = match app.call(req).await {
        Ok(response) => response.into().map_into_boxed_body(),
        Err(err) => err.into(),
    };
    let (mut head, body) = response.into_parts();
    let takeover = if head.status() == StatusCode::SWITCHING_PROTOCOLS {
        head.extensions_mut().remove::<Takeover>()
    } else {
        None
    };
    let Some(takeover) = takeover else {
        // An ordinary answer (a refusal, a 404): written whole, then the connection ends.
        let bytes = actix_http::body::to_bytes(body).await.unwrap_or_default();
        head.head_mut().set_connection_type(ConnectionType::Close);
        let size = BodySize::Sized(bytes.len() as u64);
        let written = async {
            framed.feed(Message::Item((head, size))).await?;
            framed.feed(Message::Chunk(Some(bytes))).await?;
            framed.send(Message::Chunk(None)).await
        };
        if let Err(err) = written.await {
            tracing::debug!(error = %err, "the client left before its answer was written");
        }
        return None;
    };
    if let Err(err) = framed.send(Message::Item((head, BodySize::None))).await {
        tracing::debug!(error = %err, "the client left before its 101 was written");
        return Some((takeover, None));
    }
    // Only the socket is kept: actix-http's buffers (8 KiB each) and codec
    // are dropped here, not at the end of the connection. Bytes the client
    // sent right behind its request head are the socket's first.
    let FramedParts { io, read_buf, .. } = framed.into_parts();
    // Small records must leave at once (actix-http leaves Nagle's algorithm
    // on for HTTP/1); queued frames are coalesced by the flush instead.
    if let Err(err) = io.set_nodelay(true) {
        tracing::debug!(error = %err, "TCP_NODELAY could not be set");
    }
    let leftover = read_buf.to_vec();
    drop(read_buf);
    match io.into_std() {
        Ok(socket) => Some((takeover, Some(Handover { socket, leftover }))),
        Err(err) => {
            tracing::warn!(error = %err, "a hub socket could not leave the HTTP worker");
            Some((takeover, None))
        }
    }
}

/// A hub connection's [`Transport`] on a dedicated socket.
pub struct DedicatedSocket {
    ws: Ws,
}

impl DedicatedSocket {
    /// The transport of an upgraded socket.
    pub fn new(ws: Ws) -> Self {
        Self { ws }
    }
}

/// Whether a read error means the connection was lost (the socket was reset
/// or hit EOF without a close frame: how a network drop looks) rather than
/// the client breaking the protocol.
fn is_transport_loss(err: &tungstenite::Error) -> bool {
    use tungstenite::error::ProtocolError;
    matches!(
        err,
        tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Io(_)
            | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
    )
}

impl Transport for DedicatedSocket {
    fn name(&self) -> &'static str {
        "WebSockets"
    }

    fn carries_binary(&self) -> bool {
        true
    }

    fn resumable(&self) -> bool {
        true
    }

    async fn recv(&mut self) -> Incoming {
        loop {
            return match self.ws.next().await {
                Some(Ok(WsMessage::Text(text))) => Incoming::Text(Bytes::from(text)),
                Some(Ok(WsMessage::Binary(bytes))) => Incoming::Binary(bytes),
                // tungstenite has queued the Pong: the next send flushes it.
                Some(Ok(WsMessage::Ping(_))) => Incoming::Ping,
                Some(Ok(WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
                Some(Ok(WsMessage::Close(_))) | None => Incoming::Closed,
                Some(Err(err)) if is_transport_loss(&err) => Incoming::Closed,
                Some(Err(err)) => Incoming::Broken(err.to_string()),
            };
        }
    }

    /// Feeds each record as one message, then flushes once: whatever is
    /// queued leaves in one `send`.
    async fn send(&mut self, records: impl IntoIterator<Item = Encoded>) -> Result<(), Lost> {
        for record in records {
            let message = match record {
                Encoded::Text(text) => match Utf8Bytes::try_from(text.into_bytes()) {
                    Ok(text) => WsMessage::Text(text),
                    Err(_) => continue, // a ByteString is UTF-8: never here
                },
                Encoded::Binary(bytes) => WsMessage::Binary(bytes),
            };
            self.ws.feed(message).await.map_err(|_| Lost)?;
        }
        self.ws.flush().await.map_err(|_| Lost)
    }

    /// Sends `last` and a Close frame (1000), then ends the socket's sending
    /// side and reads (and drops) what the client still sends until it
    /// closes, a second at most: closing a socket with unread input resets
    /// it, and a reset can destroy the Close record before the client has
    /// read it.
    async fn close(mut self, last: Option<Encoded>) {
        let ws = &mut self.ws;
        let goodbye = async {
            if let Some(last) = last {
                let message = match last {
                    Encoded::Text(text) => WsMessage::Text(Utf8Bytes::try_from(text.into_bytes()).unwrap_or_default()),
                    Encoded::Binary(bytes) => WsMessage::Binary(bytes),
                };
                ws.feed(message).await?;
            }
            ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: Utf8Bytes::default() })).await
        };
        if tokio::time::timeout(Duration::from_secs(1), goodbye).await.is_err() {
            return; // not reading: nothing more to say
        }
        let socket = ws.get_mut();
        let drained = async {
            let _ = tokio::io::AsyncWriteExt::shutdown(socket).await;
            let mut sink = [0u8; 4096];
            while socket.readable().await.is_ok() {
                match socket.try_read(&mut sink) {
                    Ok(0) => break,
                    Err(err) if err.kind() != std::io::ErrorKind::WouldBlock => break,
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
    }
}

/// The HTTP server with dedicated WebSockets: actix-web's `HttpServer`,
/// assembled from its parts (with its defaults) so that WebSocket upgrades
/// are handed over with their socket: `make_app`'s application answers
/// them, and the upgrade service gives the socket of a `101` to one of
/// `threads`. `shutdown_timeout` is how long a graceful stop waits.
///
/// # Errors
/// When the listener cannot be served.
pub fn server<F, I, S, B>(
    listener: std::net::TcpListener,
    make_app: F,
    threads: SocketThreads,
    shutdown_timeout: Duration,
) -> std::io::Result<actix_web::dev::Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: actix_service::IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = actix_web::dev::AppConfig, Error = actix_web::Error, InitError = ()> + 'static,
    S::Response: Into<Response<B>> + 'static,
    B: MessageBody + 'static,
{
    use actix_service::{map_config, ServiceFactoryExt};
    let address = listener.local_addr()?;
    let builder = actix_server::Server::build();
    let graceful = builder.graceful_shutdown_signal();
    Ok(builder
        .listen("smartscheduler-http", listener, move || {
            let make_app = make_app.clone();
            let app = move || {
                let app = make_app().into_factory().map_err(|err| err.error_response());
                map_config(app, |()| actix_web::dev::AppConfig::default())
            };
            let graceful = graceful.clone();
            actix_http::HttpService::build()
                .graceful_shutdown_signal(move || {
                    let graceful = graceful.clone();
                    async move { graceful.notified().await }
                })
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(address)
                .upgrade(service(app(), threads.clone()))
                .finish(app())
                .tcp()
        })?
        .shutdown_timeout(shutdown_timeout.as_secs())
        .disable_signals()
        .run())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use rustix::process::getpriority_process;

    #[tokio::test]
    async fn socket_threads_run_below_the_process_priority() {
        let ours = getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let threads = SocketThreads::start(2, &crate::hub::spawn(Duration::from_secs(1), 1024)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let tx = tx.clone();
            let job: Job = Box::new(move |_: &Fanout| {
                let name = std::thread::current().name().map(String::from);
                tx.send((name, getpriority_process(Some(rustix::thread::gettid())).unwrap())).unwrap();
            });
            assert!(threads.next().send(job).is_ok());
        }
        let mut seen: Vec<(Option<String>, i32)> = (0..2).map(|_| rx.recv().unwrap()).collect();
        seen.sort();
        let lowered = (ours + SOCKET_THREAD_NICE).min(19);
        assert_eq!(
            seen,
            vec![(Some("hub-sockets-0".into()), lowered), (Some("hub-sockets-1".into()), lowered)],
            "each socket thread runs {SOCKET_THREAD_NICE} below the test's thread (nice {ours})"
        );
        assert_eq!(getpriority_process(Some(rustix::thread::gettid())).unwrap(), ours, "the caller is unchanged");
    }
}
