//! One client connection: read requests, run them in order, write replies.
//!
//! PIPELINING. Every complete request in the read buffer is executed, in order,
//! and the replies are written back in one write once the buffer holds no more
//! complete requests. Requests are executed one after another so that a pipeline
//! keeps Redis's per-connection ordering (SET then GET of the same key).
//!
//! BAD INPUT. A protocol error is answered with Redis's text and the connection
//! closed, as Redis does. Nothing a client sends can panic the proxy: parsing is
//! bounded and every failure is a reply.

use std::sync::Arc;

use redraft_common::resp::{self, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cmd::{self, Command};
use crate::Shared;

/// Serves one client until it disconnects or sends QUIT.
pub async fn serve(shared: Arc<Shared>, mut socket: TcpStream) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut consumed = 0;
        let mut close = false;
        loop {
            match resp::parse_request(&buf[consumed..]) {
                Ok(None) => break,
                Ok(Some((args, used))) => {
                    consumed += used;
                    if args.is_empty() {
                        continue;
                    }
                    let command = cmd::parse(&args);
                    shared.stats.commands.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let reply = match command {
                        Command::Quit => {
                            close = true;
                            Frame::ok()
                        }
                        Command::Info => Frame::Bulk(crate::info::render(&shared).into_bytes()),
                        other => cmd::execute(&shared.router, other).await,
                    };
                    reply.encode(&mut out);
                    if close {
                        break;
                    }
                }
                Err(e) => {
                    e.to_frame().encode(&mut out);
                    close = true;
                    break;
                }
            }
        }
        buf.drain(..consumed);
        if !out.is_empty() {
            socket.write_all(&out).await?;
            out.clear();
        }
        if close {
            return Ok(());
        }
    }
}
