//! A pipelining RESP connection for the load generator.

use std::net::SocketAddr;

use anyhow::{bail, Result};
use redraft_common::resp::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One connection: writes a batch of requests, reads as many replies.
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    chunk: Vec<u8>,
}

impl Connection {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            chunk: vec![0; 64 * 1024],
        })
    }

    /// Writes already-encoded requests.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads one reply.
    pub async fn read(&mut self) -> Result<Frame> {
        loop {
            if let Some((frame, used)) = Frame::parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(frame);
            }
            let n = self.stream.read(&mut self.chunk).await?;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
    }
}
