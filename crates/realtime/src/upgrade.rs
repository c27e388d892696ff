//! WebSocket upgrades, handed over socket and all.
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
//! Why not actix-ws: it leaves the socket inside actix-http's HTTP/1
//! dispatcher, which keeps an 8 KiB read and an 8 KiB write buffer per
//! connection and puts a second queue and task between a hub connection and
//! its socket (see `docs/architecture.md`, "WebSockets on the bare socket").

use std::fmt;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_codec::{Framed, FramedParts};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::h1::{Codec, Message};
use actix_http::{ConnectionType, Request, Response, StatusCode};
use actix_service::{fn_factory, fn_service, Service, ServiceFactory};
use futures_util::future::LocalBoxFuture;
use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// A hub WebSocket: tungstenite on the socket actix-http handed over.
pub type Ws = WebSocketStream<TcpStream>;

/// What runs on the socket after a `101`: attach it to the `101` response's
/// extensions. It gets `None` when the `101` could not be written (the
/// client went away), so it can put back what it took (a parked connection).
pub struct Takeover {
    run: Box<dyn FnOnce(Option<Ws>) -> LocalBoxFuture<'static, ()> + Send>,
    config: WebSocketConfig,
}

impl Takeover {
    /// Runs `run` on the upgraded socket, reading at most `max_message_bytes`
    /// per message (larger messages and frames end the read with an error).
    pub fn new(
        max_message_bytes: usize,
        run: impl FnOnce(Option<Ws>) -> LocalBoxFuture<'static, ()> + Send + 'static,
    ) -> Self {
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
            let started = threads.next().send(Box::new(move || {
                actix_rt::spawn(async move {
                    socket.run(takeover).await;
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
    async fn run(self, takeover: Takeover) {
        match TcpStream::from_std(self.socket) {
            Ok(io) => {
                let ws =
                    WebSocketStream::from_partially_read(io, self.leftover, Role::Server, Some(takeover.config)).await;
                (takeover.run)(Some(ws)).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "a hub socket could not join its thread");
                (takeover.run)(None).await;
            }
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The threads hub sockets run on, apart from actix's HTTP workers: with
/// thousands of connections a fan-out queues thousands of tasks, and on a
/// worker an HTTP request (an assignment) would wait behind all of them.
/// On threads of their own the OS shares the cores between deliveries and
/// requests. Each thread is an actix system (a runtime and a LocalSet, so
/// the hub's per-thread fan-out works as on a worker); a connection goes to
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
    /// Starts `count` threads (at least one). They stop when every handle
    /// is dropped, ending the connections they carry.
    ///
    /// # Errors
    /// When a thread cannot be started.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut threads = Vec::new();
        for index in 0..count.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            std::thread::Builder::new().name(format!("hub-sockets-{index}")).spawn(move || {
                lower_priority();
                actix_rt::System::new().block_on(async move {
                    while let Some(job) = rx.recv().await {
                        job();
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use rustix::process::getpriority_process;

    #[test]
    fn socket_threads_run_below_the_process_priority() {
        let ours = getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let threads = SocketThreads::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let tx = tx.clone();
            let job: Job = Box::new(move || {
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
