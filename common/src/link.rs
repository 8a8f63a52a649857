//! Framed links: one long-lived QUIC stream per peer carrying many requests and
//! their responses, matched by request id.
//!
//! A one-call stream costs, per message, a stream's setup and FIN, stream-credit
//! updates, an accept and a task on the server, and a wait for the peer's
//! acknowledgement of the closed stream. The hot traffic between members (client
//! commands from proxies, every group's Raft messages between nodes) goes over a
//! link instead; [`crate::transport::Endpoint`] opens one per peer on first use.
//!
//! FORMAT. The stream starts with [`MAGIC`], then carries frames
//! `[payload length: u32 LE][request id: u64 LE][payload]` both ways. Responses
//! come back with their request's id, in any order.
//!
//! WRITES. A caller (or, on the server, the task that ran a request) writes its
//! frame into the stream itself, with no task in between: QUIC accepts bytes
//! at once unless flow control is exhausted. When it is, or while earlier bytes
//! still wait, frames join a backlog that one flusher task writes out in order,
//! so a frame is never split by another and a caller that gives up (timeout)
//! can never leave half a frame behind.
//!
//! OUTCOMES. A request whose bytes never reached the stream (the link had failed,
//! or it still sat in the backlog when the link failed) is `NotSent`; once any of
//! its bytes went to the stream, a failure leaves it `Unknown`. A failed link is
//! replaced by the next call.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::sync::oneshot;

use crate::transport::{CallError, MAX_MESSAGE};

/// First bytes of a link's stream. A wire envelope never starts with 0xFF
/// (bincode's varint has no such marker), so a server tells a link from a
/// one-call stream by the first byte.
pub const MAGIC: [u8; 4] = [0xFF, b'L', b'N', b'1'];

/// Bytes before a frame's payload: its length (u32) and request id (u64).
const FRAME_HEADER: usize = 12;

/// Appends one frame to `buf`.
fn push_frame(buf: &mut Vec<u8>, id: u64, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Reads one frame; `None` when the stream ended cleanly between frames.
async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<(u64, Vec<u8>)>, String> {
    let mut header = [0u8; FRAME_HEADER];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let id = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
    if len > MAX_MESSAGE {
        return Err(format!("frame of {len} bytes is over the limit"));
    }
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await.map_err(|e| e.to_string())?;
    Ok(Some((id, payload)))
}

/// The sending half of a link, shared by every writer on one side.
struct FrameWriter {
    state: Mutex<WriterState>,
}

struct WriterState {
    /// The stream; `None` while the flusher task holds it.
    stream: Option<quinn::SendStream>,
    /// Frames waiting for the flusher, and their ids.
    backlog: Vec<u8>,
    backlog_ids: Vec<u64>,
    /// Why writing stopped.
    failed: Option<String>,
}

/// What became of a frame handed to [`FrameWriter::send`].
enum Sent {
    /// In the stream (or part of it): the peer may act on it.
    Written,
    /// In the backlog: not on the wire yet.
    Queued,
}

impl FrameWriter {
    fn new(stream: quinn::SendStream) -> Arc<FrameWriter> {
        Arc::new(FrameWriter {
            state: Mutex::new(WriterState {
                stream: Some(stream),
                backlog: Vec::new(),
                backlog_ids: Vec::new(),
                failed: None,
            }),
        })
    }

    /// Writes frame `(id, payload)` now if the stream takes it, else queues it
    /// for the flusher. `on_flush` learns the ids the flusher writes (or fails).
    fn send(
        self: &Arc<Self>,
        id: u64,
        payload: &[u8],
        on_flush: impl Fn(&[u64]) + Send + Sync + 'static,
    ) -> Result<Sent, String> {
        let mut state = self.state.lock().expect("link writer lock");
        if let Some(reason) = &state.failed {
            return Err(reason.clone());
        }
        let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
        push_frame(&mut frame, id, payload);
        let Some(stream) = state.stream.as_mut() else {
            state.backlog.extend_from_slice(&frame);
            state.backlog_ids.push(id);
            return Ok(Sent::Queued);
        };
        let mut written = 0;
        while written < frame.len() {
            // One poll: QUIC takes what its flow-control window allows, or
            // nothing (pending), never blocks here.
            match stream.write(&frame[written..]).now_or_never() {
                Some(Ok(n)) => written += n,
                Some(Err(e)) => {
                    let reason = e.to_string();
                    state.failed = Some(reason.clone());
                    return if written == 0 { Err(reason) } else { Ok(Sent::Written) };
                }
                None => break,
            }
        }
        if written == frame.len() {
            return Ok(Sent::Written);
        }
        // The window is full: the flusher writes the rest, and everything after it.
        let stream = state.stream.take().expect("stream present");
        state.backlog.extend_from_slice(&frame[written..]);
        if written == 0 {
            state.backlog_ids.push(id);
        }
        drop(state);
        tokio::spawn(self.clone().flush(stream, on_flush));
        Ok(if written == 0 { Sent::Queued } else { Sent::Written })
    }

    /// Writes the backlog until it is empty, then gives the stream back.
    async fn flush(self: Arc<Self>, mut stream: quinn::SendStream, on_flush: impl Fn(&[u64])) {
        loop {
            let (bytes, ids) = {
                let mut state = self.state.lock().expect("link writer lock");
                if state.backlog.is_empty() {
                    state.stream = Some(stream);
                    return;
                }
                (
                    std::mem::take(&mut state.backlog),
                    std::mem::take(&mut state.backlog_ids),
                )
            };
            on_flush(&ids);
            if let Err(e) = stream.write_all(&bytes).await {
                self.state.lock().expect("link writer lock").failed = Some(e.to_string());
                return;
            }
        }
    }

    /// Ends the stream once the backlog is out (server side, when the link's
    /// last response is written).
    fn finish(&self) {
        let mut state = self.state.lock().expect("link writer lock");
        if let Some(stream) = state.stream.as_mut() {
            let _ = stream.finish();
        }
    }
}

/// The client side of a link to one peer.
pub(crate) struct Link {
    addr: SocketAddr,
    writer: Arc<FrameWriter>,
    next_id: AtomicU64,
    calls: Arc<Mutex<Calls>>,
}

#[derive(Default)]
struct Calls {
    /// Calls waiting for an answer, by request id.
    pending: HashMap<u64, Pending>,
    /// Why the link stopped; no call is accepted after that.
    failed: Option<String>,
}

struct Pending {
    answer: oneshot::Sender<Result<Vec<u8>, CallError>>,
    /// Some of its bytes went to the stream: a failure means "unknown".
    written: bool,
}

impl Calls {
    fn fail(&mut self, addr: SocketAddr, reason: String) {
        if self.failed.is_some() {
            return;
        }
        for (_, pending) in self.pending.drain() {
            let reason = reason.clone();
            let error = if pending.written {
                CallError::Unknown { addr, reason }
            } else {
                CallError::NotSent { addr, reason }
            };
            let _ = pending.answer.send(Err(error));
        }
        self.failed = Some(reason);
    }
}

impl Link {
    /// Starts a link on a fresh bidirectional stream of `conn`.
    pub(crate) async fn open(conn: &quinn::Connection, addr: SocketAddr) -> Result<Arc<Link>, String> {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&MAGIC).await.map_err(|e| e.to_string())?;
        let link = Arc::new(Link {
            addr,
            writer: FrameWriter::new(send),
            next_id: AtomicU64::new(0),
            calls: Arc::new(Mutex::new(Calls::default())),
        });
        tokio::spawn(read_answers(link.clone(), recv));
        Ok(link)
    }

    pub(crate) fn failed(&self) -> bool {
        self.calls.lock().expect("link calls lock").failed.is_some()
    }

    /// Sends `payload` as a request and waits for its answer (the caller bounds
    /// the wait; giving up forgets the call).
    pub(crate) async fn call(&self, payload: &[u8]) -> Result<Vec<u8>, CallError> {
        let addr = self.addr;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        let flushed = Arc::downgrade(&self.calls);
        let on_flush = move |ids: &[u64]| {
            if let Some(calls) = flushed.upgrade() {
                let mut calls = calls.lock().expect("link calls lock");
                for id in ids {
                    if let Some(pending) = calls.pending.get_mut(id) {
                        pending.written = true;
                    }
                }
            }
        };
        {
            // Held while writing: the answer (read under this lock) cannot come
            // before the entry exists, nor the flusher mark it before it does.
            let mut calls = self.calls.lock().expect("link calls lock");
            if let Some(reason) = &calls.failed {
                return Err(CallError::NotSent {
                    addr,
                    reason: reason.clone(),
                });
            }
            match self.writer.send(id, payload, on_flush) {
                Ok(sent) => {
                    let written = matches!(sent, Sent::Written);
                    calls.pending.insert(id, Pending { answer, written });
                }
                Err(reason) => {
                    calls.fail(addr, reason.clone());
                    return Err(CallError::NotSent { addr, reason });
                }
            }
        }
        let forget = Forget { calls: &self.calls, id };
        let answer = answered.await.unwrap_or_else(|_| {
            Err(CallError::Unknown {
                addr,
                reason: "link dropped".into(),
            })
        });
        // Answered: the reader (or a failure) already removed the entry.
        std::mem::forget(forget);
        answer
    }
}

/// Removes a call's entry when its caller stops waiting.
struct Forget<'a> {
    calls: &'a Mutex<Calls>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.calls.lock().expect("link calls lock").pending.remove(&self.id);
    }
}

/// Client side: hands each response to its caller; fails the link when the
/// stream ends.
async fn read_answers(link: Arc<Link>, mut recv: quinn::RecvStream) {
    let reason = loop {
        match read_frame(&mut recv).await {
            Ok(Some((id, payload))) => {
                let pending = link.calls.lock().expect("link calls lock").pending.remove(&id);
                if let Some(pending) = pending {
                    let _ = pending.answer.send(Ok(payload));
                }
            }
            Ok(None) => break "the peer closed the link".to_string(),
            Err(e) => break e,
        }
    };
    link.calls.lock().expect("link calls lock").fail(link.addr, reason);
}

/// Server side of a link whose first byte was already read: runs each request
/// on a task of its own, which writes the response back itself.
pub(crate) async fn serve<H, F>(send: quinn::SendStream, mut recv: quinn::RecvStream, handler: H)
where
    H: Fn(Vec<u8>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Vec<u8>> + Send + 'static,
{
    let mut magic = [0u8; MAGIC.len() - 1];
    if recv.read_exact(&mut magic).await.is_err() || magic != MAGIC[1..] {
        return;
    }
    let writer = FrameWriter::new(send);
    while let Ok(Some((id, request))) = read_frame(&mut recv).await {
        let handler = handler.clone();
        let writer = writer.clone();
        tokio::spawn(async move {
            let response = handler(request).await;
            let _ = writer.send(id, &response, |_| {});
        });
    }
    writer.finish();
}
