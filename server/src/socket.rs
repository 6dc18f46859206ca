//! A `/sync` connection's socket, which lets tungstenite go while the connection is idle.
//!
//! tungstenite keeps a read buffer, a write buffer and two waker proxies for as long as it
//! lives: about 4.4 KB on the heap (0.45 KB with a 128 B read buffer) and 0.33 KB in the
//! task beside the connection's own state, most of what an idle connection would cost.
//! Most connections are idle most of the time, so a [`Socket`] drops its tungstenite once
//! it holds nothing — no unread bytes, no part of a message, nothing unsent — and keeps
//! only the upgraded socket ([`Framed`]) and a few bytes of framing state. The socket
//! turning readable wakes it, and a new tungstenite reads what came (over a transport
//! other than plain TCP, the first bytes are read to wake it, kept, and handed to
//! tungstenite before anything else).
//!
//! Knowing that tungstenite holds no unread bytes takes [`Boundaries`]: the socket follows
//! the WebSocket framing of every byte it hands tungstenite. When all of them end on a
//! frame boundary, outside a fragmented message, and tungstenite's last read found the
//! socket empty, its buffer is empty: it reads again only when no whole frame is left.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use futures::{FutureExt, SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use axum::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::service::Service;

/// Bytes an `Io::Upgraded` reads while asleep at most; tungstenite reads the rest of the
/// frame itself.
const WAKE_BYTES: usize = 16;

/// Where the frames of a WebSocket byte stream end (RFC 6455, section 5.2), fed the bytes
/// as they pass.
#[derive(Debug, Default)]
pub(crate) struct Boundaries {
    /// The current frame's first two bytes and extended length, as far as they came.
    head: [u8; 10],
    head_len: u8,
    /// Bytes of the current frame's mask and payload still to come.
    body_left: u64,
    /// The last data frame had no FIN: a fragmented message is under way.
    fragmented: bool,
}

impl Boundaries {
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while let Some((&first, rest)) = bytes.split_first() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len() as u64);
                self.body_left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.head[usize::from(self.head_len)] = first;
            self.head_len += 1;
            bytes = rest;
            if self.head_len < 2 {
                continue;
            }
            let extended = match self.head[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            if usize::from(self.head_len) < 2 + extended {
                continue;
            }
            let len = match extended {
                0 => u64::from(self.head[1] & 0x7f),
                n => self.head[2..2 + n].iter().fold(0, |len, &b| len << 8 | u64::from(b)),
            };
            let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
            // Control frames (opcodes 8 and up) may come between a message's fragments.
            if self.head[0] & 0x0f < 8 {
                self.fragmented = self.head[0] & 0x80 == 0;
            }
            self.head_len = 0;
            self.body_left = len.saturating_add(mask);
        }
    }

    /// Every byte fed belongs to a whole frame, and no message is left half sent.
    pub(crate) fn at_rest(&self) -> bool {
        self.head_len == 0 && self.body_left == 0 && !self.fragmented
    }
}

/// The head of a final, unmasked binary frame of `len` bytes (RFC 6455, section 5.2), and
/// how many of its bytes are used.
fn binary_head(len: usize) -> ([u8; 10], usize) {
    let mut head = [0x82, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    match len {
        0..=125 => {
            head[1] = len as u8;
            (head, 2)
        }
        126..=0xffff => {
            head[1] = 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            (head, 4)
        }
        _ => {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            (head, 10)
        }
    }
}

/// The connection under the WebSocket.
enum Io {
    /// The TCP stream itself, taken back from hyper (as `listen` and `axum::serve` serve
    /// connections): asleep, it waits for readiness and reads nothing.
    Tcp(TcpStream),
    /// Any other transport hyper served: asleep, it waits by reading a few bytes.
    Upgraded(TokioIo<Upgraded>),
}

/// The upgraded socket, as tungstenite reads and writes it.
pub(crate) struct Framed {
    io: Io,
    /// Bytes read before tungstenite's own reads, handed to it first: what hyper read
    /// past the handshake, or what an `Io::Upgraded` read to wake.
    early: Bytes,
    frames: Boundaries,
    /// The last read of `io` found nothing to read.
    drained: bool,
}

impl Framed {
    fn new(upgraded: Upgraded) -> Framed {
        let (io, early) = match upgraded.downcast::<TokioIo<TcpStream>>() {
            // Copied, not kept: `read_buf` holds on to the whole of hyper's read buffer
            // (kilobytes) for as long as it lives, empty or not.
            Ok(parts) => (Io::Tcp(parts.io.into_inner()), Bytes::copy_from_slice(&parts.read_buf)),
            Err(upgraded) => (Io::Upgraded(TokioIo::new(upgraded)), Bytes::new()),
        };
        Framed { io, early, frames: Boundaries::default(), drained: false }
    }

    /// Waits for the peer to send something; an `Io::Upgraded` keeps what arrives for
    /// tungstenite. The end of the stream or an error wakes it too, and tungstenite's own
    /// read meets it again.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.early.is_empty() {
            return Poll::Ready(());
        }
        let woke = match &mut self.io {
            // Readiness alone, so the bytes are read once, by tungstenite: waking costs no
            // read of its own.
            Io::Tcp(tcp) => tcp.poll_read_ready(cx).map(|_| ()),
            Io::Upgraded(io) => {
                let mut bytes = [0; WAKE_BYTES];
                let mut buf = ReadBuf::new(&mut bytes);
                let read = Pin::new(io).poll_read(cx, &mut buf);
                if read.is_ready() {
                    self.early = Bytes::copy_from_slice(buf.filled());
                }
                read.map(|_| ())
            }
        };
        if woke.is_ready() {
            self.drained = false;
        }
        woke
    }

    /// Writes `payload` as one unfragmented binary message, the way tungstenite would have
    /// (a server's frames are not masked: RFC 6455, section 5.1), header and payload in one
    /// vectored write when the kernel takes it all.
    async fn send_binary(&mut self, payload: &[u8]) -> io::Result<()> {
        let (head, head_len) = binary_head(payload.len());
        let (mut head, mut payload) = (&head[..head_len], payload);
        while !head.is_empty() || !payload.is_empty() {
            let n = self.write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(payload)]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            payload = &payload[n - from_head..];
        }
        Ok(())
    }

    /// tungstenite holds nothing unread.
    fn at_rest(&self) -> bool {
        self.drained && self.early.is_empty() && self.frames.at_rest()
    }
}

impl AsyncRead for Framed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            let early = this.early.split_to(n);
            buf.put_slice(&early);
            this.frames.feed(&early);
            if this.early.is_empty() {
                // Lets the allocation go.
                this.early = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
        };
        this.drained = read.is_pending();
        if let Poll::Ready(Ok(())) = read {
            this.frames.feed(&buf.filled()[before..]);
        }
        read
    }
}

impl AsyncWrite for Framed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tcp(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Upgraded(io) => Pin::new(io).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tcp(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Upgraded(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(tcp) => tcp.is_write_vectored(),
            Io::Upgraded(io) => io.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Upgraded(io) => Pin::new(io).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

type WebSocket = WebSocketStream<Framed>;

/// A server-side WebSocket that is awake (a tungstenite) or asleep (only the socket),
/// counted in `stead_connections_asleep` while asleep.
pub(crate) struct Socket {
    state: State,
    /// For the largest message accepted, and the count of sleeping sockets.
    service: Arc<Service>,
}

enum State {
    Awake(Box<WebSocket>),
    Asleep(Framed),
    /// Only while changing from one to the other.
    Gone,
}

impl Socket {
    pub(crate) fn new(upgraded: Upgraded, service: Arc<Service>) -> Socket {
        let ws = Self::tungstenite(Framed::new(upgraded), &service);
        Socket { state: State::Awake(Box::new(ws)), service }
    }

    fn tungstenite(framed: Framed, service: &Service) -> WebSocket {
        // Twice the frame limit, so a frame somewhat above it still arrives and is answered
        // with a clear error frame instead of a dropped socket.
        let max = service.limits.max_frame_bytes.saturating_mul(2).saturating_add(1024);
        // A 4 KiB read buffer, held only while the connection is busy. Its size is also
        // the most tungstenite reads in one call, even into a frame's payload reserved
        // whole: at 128 B a writer's stream of one-entry frames cost a read per 128 B, and
        // ingest ran 7% slower (one entry per frame) and 3% (256 per frame). 16 KiB gains
        // nothing more. Nothing is held back for writing: frames go out as they are sent.
        let config = WebSocketConfig::default().read_buffer_size(4 << 10).write_buffer_size(0).max_message_size(Some(max)).max_frame_size(Some(max));
        // Without a handshake, making one waits for nothing.
        WebSocketStream::from_raw_socket(framed, Role::Server, Some(config))
            .now_or_never()
            .expect("a WebSocket without handshake is made at once")
    }

    /// tungstenite, made anew if the socket was asleep.
    fn awake(&mut self) -> &mut WebSocket {
        if let State::Asleep(_) = self.state
            && let State::Asleep(framed) = std::mem::replace(&mut self.state, State::Gone)
        {
            self.service.metrics.connections_asleep.fetch_sub(1, Ordering::Relaxed);
            self.state = State::Awake(Box::new(Self::tungstenite(framed, &self.service)));
        }
        match &mut self.state {
            State::Awake(ws) => ws,
            _ => unreachable!("the socket was just woken"),
        }
    }

    /// The next message; `None` once the socket is closed. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        if let State::Asleep(framed) = &mut self.state {
            std::future::poll_fn(|cx| framed.poll_wake(cx)).await;
        }
        self.awake().next().await
    }

    /// The next message if one has already arrived.
    pub(crate) fn try_next(&mut self) -> Option<Option<Result<Message, tungstenite::Error>>> {
        if let State::Asleep(framed) = &mut self.state
            && framed.poll_wake(&mut Context::from_waker(Waker::noop())).is_pending()
        {
            return None;
        }
        self.awake().next().now_or_never()
    }

    /// Sends `msg`. A binary message to a socket asleep, the usual case of a relayed
    /// entry, is written without waking tungstenite: its buffers would be made and dropped
    /// again for one write. Not cancel-safe: a send stopped half way leaves part of a frame
    /// on the wire, and the connection must end.
    pub(crate) async fn send(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        if let (State::Asleep(framed), Message::Binary(payload)) = (&mut self.state, &msg) {
            return Ok(framed.send_binary(payload).await?);
        }
        self.awake().send(msg).await
    }

    pub(crate) async fn close(&mut self) -> Result<(), tungstenite::Error> {
        SinkExt::close(self.awake()).await
    }

    /// Lets tungstenite go if it holds nothing; else the message that has arrived, if any.
    pub(crate) fn sleep(&mut self) -> Option<Option<Result<Message, tungstenite::Error>>> {
        let State::Awake(ws) = &mut self.state else { return None };
        if let Some(m) = ws.next().now_or_never() {
            return Some(m);
        }
        // A queued pong, or a message the kernel had no room for yet, keeps it awake.
        if !matches!(SinkExt::flush(&mut **ws).now_or_never(), Some(Ok(()))) || !ws.get_ref().at_rest() {
            return None;
        }
        if let State::Awake(ws) = std::mem::replace(&mut self.state, State::Gone) {
            self.state = State::Asleep(ws.into_inner());
            self.service.metrics.connections_asleep.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

}

impl Drop for Socket {
    fn drop(&mut self) {
        if let State::Asleep(_) = self.state {
            self.service.metrics.connections_asleep.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Boundaries;

    /// A frame as a client sends it: masked, with the given FIN bit and opcode.
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![u8::from(fin) << 7 | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(7, len));
        f
    }

    /// Feeds `bytes` in pieces of `step`, returning `at_rest` after each byte count fed.
    fn rest_points(bytes: &[u8], step: usize) -> Vec<(usize, bool)> {
        let mut b = Boundaries::default();
        let mut fed = 0;
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            b.feed(piece);
            fed += piece.len();
            out.push((fed, b.at_rest()));
        }
        out
    }

    /// What `Framed::send_binary` writes, at each length encoding's edges, reads back as
    /// the same message in a WebSocket client, and ends where the framing says it does.
    #[test]
    fn a_binary_frame_written_directly_is_read_whole() {
        use tokio_tungstenite::tungstenite::{Message, WebSocket, protocol::Role};
        for len in [0, 1, 125, 126, 127, 0xffff, 0x10000, 0x10001] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let (head, head_len) = super::binary_head(len);
            let mut bytes = head[..head_len].to_vec();
            bytes.extend_from_slice(&payload);
            for (fed, rest) in rest_points(&bytes, 7) {
                assert_eq!(rest, fed == bytes.len(), "len {len}, fed {fed}");
            }
            let mut client = WebSocket::from_raw_socket(std::io::Cursor::new(bytes), Role::Client, None);
            match client.read() {
                Ok(Message::Binary(got)) => assert!(got[..] == payload[..], "len {len}: the payload changed"),
                other => panic!("len {len}: read {other:?}"),
            }
        }
    }

    #[test]
    fn frame_ends_are_found_however_the_bytes_are_split() {
        let lens = [0, 1, 125, 126, 300, 0xffff, 0x10000];
        for len in lens {
            let bytes = frame(true, 2, len);
            for step in [1, 2, 3, 5, 13, 64, bytes.len()] {
                for (fed, rest) in rest_points(&bytes, step) {
                    assert_eq!(rest, fed == bytes.len(), "len {len}, step {step}, fed {fed}");
                }
            }
        }
        // Two frames back to back: at rest after each, not in between.
        let (a, b) = (frame(true, 2, 200), frame(true, 1, 3));
        let both = [a.clone(), b.clone()].concat();
        for (fed, rest) in rest_points(&both, 1) {
            assert_eq!(rest, fed == a.len() || fed == both.len(), "fed {fed}");
        }
    }

    #[test]
    fn a_fragmented_message_is_not_at_rest_until_its_last_fragment() {
        let mut b = Boundaries::default();
        b.feed(&frame(false, 2, 10));
        assert!(!b.at_rest(), "after a first fragment");
        // A ping between fragments is allowed and changes nothing.
        b.feed(&frame(true, 9, 4));
        assert!(!b.at_rest(), "after a ping inside the message");
        b.feed(&frame(false, 0, 10));
        assert!(!b.at_rest(), "after a middle fragment");
        b.feed(&frame(true, 0, 10));
        assert!(b.at_rest(), "after the last fragment");
        // An unmasked frame (as a server sends) has no mask bytes.
        let mut unmasked = Boundaries::default();
        unmasked.feed(&[0x82, 3, 1, 2]);
        assert!(!unmasked.at_rest());
        unmasked.feed(&[3]);
        assert!(unmasked.at_rest());
    }
}
