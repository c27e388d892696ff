//! `ss-floor`: the raw WebSocket floor of the benchmarks (docs/benchmarks.md).
//!
//! No protocol, no groups, no persistence: every accepted WebSocket receives
//! every published message. One port serves both:
//!
//! - `GET` with a WebSocket upgrade: a subscriber;
//! - `POST /publish` (HTTP/1.1, keep-alive, `Content-Length` body): the body
//!   is broadcast once, as one text frame built once and shared by every
//!   connection (`Utf8Bytes` clones share the buffer); the answer is 204.
//!
//! Prints `floor listening on http://ADDR` once bound.

use std::net::SocketAddr;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Debug, Parser)]
#[command(name = "ss-floor", about = "Raw WebSocket broadcaster: the floor of the ss-bench comparisons")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Messages a connection may fall behind before it skips ahead.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let socket = if cli.bind.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(cli.bind)?;
    let listener: TcpListener = socket.listen(4096)?;
    println!("floor listening on http://{}", listener.local_addr()?);
    let (tx, _) = broadcast::channel::<Message>(cli.queue.max(1));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the others.
                eprintln!("ss-floor: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut head = [0u8; 4];
            // A publisher starts with "POST"; anything else is taken for an upgrade.
            let is_post = matches!(stream.peek(&mut head).await, Ok(4..)) && &head == b"POST";
            if is_post {
                if let Err(e) = publisher(stream, &tx).await {
                    eprintln!("ss-floor: publisher: {e}");
                }
            } else {
                subscriber(stream, tx.subscribe()).await;
            }
        });
    }
}

/// Sends every broadcast message to one WebSocket until either side closes.
async fn subscriber(stream: TcpStream, mut rx: broadcast::Receiver<Message>) {
    // tungstenite reads in 128 KiB chunks by default; subscribers send next to nothing.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else { return };
    let (mut sink, mut source) = ws.split();
    loop {
        tokio::select! {
            message = rx.recv() => {
                let message = match message {
                    Ok(message) => message,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                // Batch what is already queued into one flush.
                if sink.feed(message).await.is_err() {
                    break;
                }
                while let Ok(more) = rx.try_recv() {
                    if sink.feed(more).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            incoming = source.next() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {} // pings are answered by tungstenite; the rest is ignored
            },
        }
    }
}

/// A minimal HTTP/1.1 server for `POST /publish`, keep-alive.
async fn publisher(mut stream: TcpStream, tx: &broadcast::Sender<Message>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Read the head.
        let end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > 64 * 1024 {
                return Err(std::io::Error::other("request head too large"));
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let request_line = head.lines().next().unwrap_or_default().to_owned();
        let length = head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf[end..end + length].to_vec();
        buf.drain(..end + length);

        let answer: &[u8] = if !request_line.starts_with("POST /publish ") {
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
        } else {
            match String::from_utf8(body) {
                Ok(text) => {
                    // Built once; every subscriber's clone shares these bytes.
                    let _ = tx.send(Message::Text(Utf8Bytes::from(text)));
                    b"HTTP/1.1 204 No Content\r\n\r\n"
                }
                Err(_) => b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            }
        };
        stream.write_all(answer).await?;
    }
}
