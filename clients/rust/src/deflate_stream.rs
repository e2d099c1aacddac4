//! permessage-deflate (RFC 7692) for what the gateway sends, as a byte-stream layer
//! beneath tungstenite (which has no extension support and refuses frames with RSV1
//! set). [`DeflateStream`] owns the connection's bytes: it lets the HTTP upgrade
//! through untouched while reading the 101 response head for the server's
//! `Sec-WebSocket-Extensions` answer; once permessage-deflate is agreed,
//! [`InboundFrames`] rewrites each compressed server message (RSV1 on its first
//! frame, continuation frames collected) into one inflated frame with RSV1 clear,
//! bounded by the client's maximum message size. Control frames, uncompressed frames
//! and every byte the client writes pass through as they are: the client offers
//! `client_no_context_takeover` and never compresses, which RFC 7692 allows.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite;

/// The `Sec-WebSocket-Extensions` offer: the client never compresses, so it asks for
/// no context on its side and needs no compressor.
pub(crate) const OFFER: &str = "permessage-deflate; client_no_context_takeover";

/// The close code for a message past the size limit (RFC 6455 7.4.1).
pub(crate) const MESSAGE_TOO_BIG: u16 = 1009;

/// A response head longer than this is not read for extensions (tungstenite refuses
/// it anyway); it bounds what this layer keeps of the head.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What one read from the connection may bring at most.
const READ_CHUNK: usize = 16 * 1024;

/// The first allocation for an inflated message; it doubles from there up to the limit.
const INFLATE_CHUNK: usize = 16 * 1024;

/// Compressed messages this process has inflated; the integration tests read it to
/// tell that the gateway really sent compressed frames.
static INFLATED_MESSAGES: AtomicU64 = AtomicU64::new(0);

/// How many compressed messages every client of this process has inflated so far.
/// For tests: it tells that a message really travelled compressed.
#[doc(hidden)]
pub fn inflated_messages() -> u64 {
    INFLATED_MESSAGES.load(Ordering::Relaxed)
}

/// The permessage-deflate parameters the server's 101 agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Agreement {
    /// Each server message is compressed on its own: the decompressor is reset after each.
    pub server_no_context_takeover: bool,
    /// The server's LZ77 window; a 15-bit inflater reads every smaller window too.
    pub server_max_window_bits: u8,
}

/// The bounds tungstenite is configured with, applied to inflated messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The largest inflated message; one byte more is [`DeflateError::TooBig`].
    pub max_message: usize,
    /// The largest frame handed up; a larger inflated message is handed up fragmented.
    pub max_frame: usize,
}

impl Limits {
    /// The limits of tungstenite's configuration (`None` there means unbounded).
    pub(crate) fn of(config: &tungstenite::protocol::WebSocketConfig) -> Self {
        Limits {
            max_message: config.max_message_size.unwrap_or(usize::MAX),
            max_frame: config.max_frame_size.unwrap_or(usize::MAX).max(1),
        }
    }
}

/// Why this layer failed the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeflateError {
    /// A compressed message inflates past the client's maximum message size.
    #[error("a compressed message inflates past {limit} bytes")]
    TooBig { limit: usize },
    /// The compressed bytes are not a valid DEFLATE stream.
    #[error("a compressed message does not inflate: {0}")]
    Corrupt(String),
    /// The frames break RFC 7692's rules for compressed messages.
    #[error("permessage-deflate protocol error: {0}")]
    Protocol(&'static str),
    /// The server's extension answer is not one this client can accept (RFC 7692 5).
    #[error("the server's Sec-WebSocket-Extensions answer is unacceptable: {0}")]
    Negotiation(String),
}

impl From<DeflateError> for io::Error {
    fn from(error: DeflateError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

/// The close code a connection error calls for: 1009 for a compressed message past
/// the size limit, `None` for anything else.
pub(crate) fn close_code(error: &tungstenite::Error) -> Option<u16> {
    match error {
        tungstenite::Error::Io(e) => match e.get_ref()?.downcast_ref::<DeflateError>()? {
            DeflateError::TooBig { .. } => Some(MESSAGE_TOO_BIG),
            _ => None,
        },
        _ => None,
    }
}

/// Where the stream is in the connection's life.
enum Phase {
    /// Before the end of the server's response head.
    Head { head: Vec<u8> },
    /// No extension agreed (or not a 101): every byte goes through.
    Passthrough,
    /// permessage-deflate agreed: server frames are rewritten.
    Frames(Box<InboundFrames>),
    /// This layer failed the connection: the bytes processed before the failure are
    /// handed up first, then the error (once), then every later read fails.
    Failed(Option<DeflateError>),
}

/// A connection's stream with permessage-deflate for what the server sends.
pub(crate) struct DeflateStream<S> {
    inner: S,
    offered: bool,
    limits: Limits,
    phase: Phase,
    agreement: Option<Agreement>,
    /// Bytes read from `inner`, not yet processed.
    input: Vec<u8>,
    /// Processed bytes for tungstenite, from `output_at` on.
    output: Vec<u8>,
    output_at: usize,
}

impl<S> DeflateStream<S> {
    /// Wraps `inner`; `offered` tells whether the request offers [`OFFER`].
    pub(crate) fn new(inner: S, offered: bool, limits: Limits) -> Self {
        DeflateStream {
            inner,
            offered,
            limits,
            phase: Phase::Head { head: Vec::new() },
            agreement: None,
            input: Vec::new(),
            output: Vec::new(),
            output_at: 0,
        }
    }

    /// The agreed parameters, once the response head has been read; `None` when the
    /// server did not accept permessage-deflate.
    pub(crate) fn agreement(&self) -> Option<Agreement> {
        self.agreement
    }

    /// Moves processed bytes into `input`'s place: head bytes until the head ends,
    /// then whatever the phase makes of them.
    fn process(&mut self) -> Result<(), DeflateError> {
        match &mut self.phase {
            Phase::Head { head } => {
                let old = head.len();
                head.extend_from_slice(&self.input);
                let from = old.saturating_sub(3);
                let Some(at) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") else {
                    self.output.extend_from_slice(&self.input);
                    self.input.clear();
                    if head.len() > MAX_HEAD_BYTES {
                        self.phase = Phase::Passthrough;
                    }
                    return Ok(());
                };
                let end = from + at + 4;
                head.truncate(end);
                self.output.extend_from_slice(&head[old..]);
                self.input.drain(..end - old);
                self.agreement = parse_response_head(head, self.offered)?;
                self.phase = match self.agreement {
                    Some(agreement) => Phase::Frames(Box::new(InboundFrames::new(agreement, self.limits))),
                    None => Phase::Passthrough,
                };
                self.process()
            }
            Phase::Passthrough => {
                if self.output_at == self.output.len() {
                    std::mem::swap(&mut self.output, &mut self.input);
                    self.output_at = 0;
                } else {
                    self.output.append(&mut self.input);
                }
                self.input.clear();
                Ok(())
            }
            Phase::Frames(frames) => {
                let consumed = frames.process(&self.input, &mut self.output)?;
                self.input.drain(..consumed);
                Ok(())
            }
            Phase::Failed(_) => Err(DeflateError::Protocol("the connection already failed")),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DeflateStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.output_at < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.output_at);
                buf.put_slice(&this.output[this.output_at..this.output_at + n]);
                this.output_at += n;
                if this.output_at == this.output.len() {
                    this.output.clear();
                    this.output_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if matches!(this.phase, Phase::Passthrough) && this.input.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if let Phase::Failed(error) = &mut this.phase {
                let error = error
                    .take()
                    .unwrap_or(DeflateError::Protocol("the connection already failed"));
                return Poll::Ready(Err(error.into()));
            }
            if !this.input.is_empty() {
                let before = (this.input.len(), this.output.len());
                if let Err(e) = this.process() {
                    this.phase = Phase::Failed(Some(e));
                    continue;
                }
                if this.output.len() > before.1 || this.input.len() < before.0 {
                    continue;
                }
            }
            // Nothing to hand up yet: more bytes are needed.
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: tungstenite sees it where it stands.
                return Poll::Ready(Ok(()));
            }
            this.input.extend_from_slice(read.filled());
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DeflateStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Reads a response head: `Some` when it is a 101 that accepted permessage-deflate.
fn parse_response_head(head: &[u8], offered: bool) -> Result<Option<Agreement>, DeflateError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let switching = lines
        .next()
        .and_then(|status| status.split_ascii_whitespace().nth(1))
        .is_some_and(|code| code == "101");
    if !switching {
        return Ok(None);
    }
    let mut agreement = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("sec-websocket-extensions") {
            continue;
        }
        for extension in value.split(',').filter(|e| !e.trim().is_empty()) {
            let mut params = extension.split(';').map(str::trim);
            let name = params.next().unwrap_or_default();
            if !name.eq_ignore_ascii_case("permessage-deflate") {
                return Err(DeflateError::Negotiation(format!("`{name}` was not offered")));
            }
            if !offered || agreement.is_some() {
                return Err(DeflateError::Negotiation(
                    "permessage-deflate was not offered (once)".into(),
                ));
            }
            agreement = Some(parse_deflate_params(params)?);
        }
    }
    Ok(agreement)
}

/// The parameters of an accepted permessage-deflate (RFC 7692 7.1).
fn parse_deflate_params<'a>(params: impl Iterator<Item = &'a str>) -> Result<Agreement, DeflateError> {
    let mut agreement = Agreement {
        server_no_context_takeover: false,
        server_max_window_bits: 15,
    };
    for param in params.filter(|p| !p.is_empty()) {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) => agreement.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(bits)) => {
                agreement.server_max_window_bits = bits
                    .parse()
                    .ok()
                    .filter(|b| (8..=15).contains(b))
                    .ok_or_else(|| DeflateError::Negotiation(format!("server_max_window_bits={bits}")))?;
            }
            // The client never compresses, so whatever window it is allowed is fine.
            ("client_max_window_bits", _) => {}
            _ => return Err(DeflateError::Negotiation(format!("unknown parameter `{param}`"))),
        }
    }
    Ok(agreement)
}

/// Where the frame parser is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// At the start of a frame header.
    Header,
    /// Inside a frame that goes through as it is: this many bytes still to copy.
    Raw { remaining: u64 },
    /// Inside a frame of a compressed message: this many payload bytes still to
    /// inflate; `fin` when the frame ends the message.
    Compressed { remaining: u64, fin: bool },
}

/// A compressed message being inflated.
struct Inflating {
    opcode: u8,
    data: Vec<u8>,
}

/// Server-to-client frames after permessage-deflate was agreed.
pub(crate) struct InboundFrames {
    agreement: Agreement,
    limits: Limits,
    inflater: Decompress,
    reading: Reading,
    message: Option<Inflating>,
    /// An uncompressed fragmented message is going through.
    raw_message: bool,
}

impl InboundFrames {
    pub(crate) fn new(agreement: Agreement, limits: Limits) -> Self {
        InboundFrames {
            agreement,
            limits,
            // Raw DEFLATE with a 15-bit window reads every smaller window as well.
            inflater: Decompress::new(false),
            reading: Reading::Header,
            message: None,
            raw_message: false,
        }
    }

    /// Processes what it can of `input`, writing frames for tungstenite to `output`;
    /// returns how many bytes of `input` it consumed (the rest waits for more bytes).
    pub(crate) fn process(&mut self, input: &[u8], output: &mut Vec<u8>) -> Result<usize, DeflateError> {
        let mut at = 0;
        loop {
            match self.reading {
                Reading::Raw { remaining: 0 } => self.reading = Reading::Header,
                Reading::Raw { remaining } => {
                    let n = available(remaining, input.len() - at);
                    if n == 0 {
                        return Ok(at);
                    }
                    output.extend_from_slice(&input[at..at + n]);
                    at += n;
                    self.reading = Reading::Raw {
                        remaining: remaining - n as u64,
                    };
                }
                Reading::Compressed { remaining: 0, fin } => {
                    if fin {
                        self.finish(output)?;
                    }
                    self.reading = Reading::Header;
                }
                Reading::Compressed { remaining, fin } => {
                    let n = available(remaining, input.len() - at);
                    if n == 0 {
                        return Ok(at);
                    }
                    self.inflate(&input[at..at + n])?;
                    at += n;
                    self.reading = Reading::Compressed {
                        remaining: remaining - n as u64,
                        fin,
                    };
                }
                Reading::Header => {
                    let Some(header) = FrameHeader::parse(&input[at..]) else {
                        return Ok(at);
                    };
                    self.on_header(&header, &input[at..at + header.length], output)?;
                    at += header.length;
                }
            }
        }
    }

    /// Decides what a frame is: part of a compressed message, or bytes to pass on.
    fn on_header(&mut self, header: &FrameHeader, raw: &[u8], output: &mut Vec<u8>) -> Result<(), DeflateError> {
        let compressible = !header.masked && !header.rsv2_or_rsv3;
        let control = header.opcode & 0x8 != 0;
        let data = header.opcode == 0x1 || header.opcode == 0x2;
        if compressible && !control {
            if header.opcode == 0x0 && self.message.is_some() {
                if header.rsv1 {
                    return Err(DeflateError::Protocol("RSV1 set on a continuation frame"));
                }
                self.reading = Reading::Compressed {
                    remaining: header.payload,
                    fin: header.fin,
                };
                return Ok(());
            }
            if data && (self.message.is_some() || self.raw_message) {
                return Err(DeflateError::Protocol("a new message began inside a fragmented one"));
            }
            if data && header.rsv1 {
                self.message = Some(Inflating {
                    opcode: header.opcode,
                    data: Vec::new(),
                });
                self.reading = Reading::Compressed {
                    remaining: header.payload,
                    fin: header.fin,
                };
                return Ok(());
            }
            if data || header.opcode == 0x0 {
                self.raw_message = !header.fin;
            }
        }
        // Control frames, uncompressed frames, and frames tungstenite will refuse on its own.
        output.extend_from_slice(raw);
        self.reading = Reading::Raw {
            remaining: header.payload,
        };
        Ok(())
    }

    /// Inflates a piece of the current message's compressed bytes, refusing to grow
    /// its buffer past the size limit.
    fn inflate(&mut self, mut input: &[u8]) -> Result<(), DeflateError> {
        let limit = self.limits.max_message;
        let Some(message) = self.message.as_mut() else {
            return Err(DeflateError::Protocol("compressed bytes outside a message"));
        };
        let data = &mut message.data;
        loop {
            if data.len() == data.capacity() {
                // At most one byte past the limit: that byte is what tells a bomb.
                let room = (limit - data.len().min(limit)).saturating_add(1);
                data.reserve_exact(room.min(INFLATE_CHUNK.max(data.len())));
            }
            let (read_before, written_before) = (self.inflater.total_in(), self.inflater.total_out());
            let status = self
                .inflater
                .decompress_vec(input, data, FlushDecompress::Sync)
                .map_err(|e| DeflateError::Corrupt(e.to_string()))?;
            if data.len() > limit {
                return Err(DeflateError::TooBig { limit });
            }
            let read = (self.inflater.total_in() - read_before) as usize;
            let written = self.inflater.total_out() - written_before;
            input = &input[read..];
            if status == Status::StreamEnd {
                // A final block ends the DEFLATE stream; what follows starts a new one.
                self.inflater.reset(false);
            }
            let output_room_left = data.len() < data.capacity();
            if input.is_empty() && output_room_left {
                return Ok(());
            }
            if read == 0 && written == 0 && output_room_left && status != Status::StreamEnd {
                return Err(DeflateError::Corrupt("the inflater made no progress".into()));
            }
        }
    }

    /// Ends the current compressed message and hands it up uncompressed.
    fn finish(&mut self, output: &mut Vec<u8>) -> Result<(), DeflateError> {
        // RFC 7692 7.2.2: the sender removed this empty stored block's trailer.
        self.inflate(&[0x00, 0x00, 0xff, 0xff])?;
        let Some(message) = self.message.take() else {
            return Err(DeflateError::Protocol("a message ended that did not begin"));
        };
        if self.agreement.server_no_context_takeover {
            self.inflater.reset(false);
        }
        INFLATED_MESSAGES.fetch_add(1, Ordering::Relaxed);
        let mut chunks = message.data.chunks(self.limits.max_frame).peekable();
        if chunks.peek().is_none() {
            write_frame(output, true, message.opcode, &[]);
        }
        let mut opcode = message.opcode;
        while let Some(chunk) = chunks.next() {
            write_frame(output, chunks.peek().is_none(), opcode, chunk);
            opcode = 0x0;
        }
        Ok(())
    }
}

/// How many of `have` bytes belong to a frame with `remaining` bytes left.
fn available(remaining: u64, have: usize) -> usize {
    usize::try_from(remaining).map_or(have, |r| r.min(have))
}

/// An unmasked frame with RSV bits clear, as a server sends it.
fn write_frame(output: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    output.push(if fin { 0x80 } else { 0x00 } | opcode);
    match payload.len() {
        n if n < 126 => output.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            output.push(126);
            output.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            output.push(127);
            output.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    output.extend_from_slice(payload);
}

/// The first bytes of a frame (RFC 6455 5.2).
#[derive(Debug)]
struct FrameHeader {
    fin: bool,
    rsv1: bool,
    rsv2_or_rsv3: bool,
    opcode: u8,
    masked: bool,
    /// Payload length.
    payload: u64,
    /// Header length, masking key included.
    length: usize,
}

impl FrameHeader {
    /// `None` until `bytes` holds the whole header.
    fn parse(bytes: &[u8]) -> Option<FrameHeader> {
        let (&first, rest) = bytes.split_first()?;
        let (&second, rest) = rest.split_first()?;
        let masked = second & 0x80 != 0;
        let (payload, extended) = match second & 0x7f {
            126 => (u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)), 2),
            127 => (u64::from_be_bytes(rest.get(..8)?.try_into().ok()?), 8),
            n => (u64::from(n), 0),
        };
        let length = 2 + extended + if masked { 4 } else { 0 };
        if bytes.len() < length {
            return None;
        }
        Some(FrameHeader {
            fin: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            rsv2_or_rsv3: first & 0x30 != 0,
            opcode: first & 0x0f,
            masked,
            payload,
            length,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    const LIMITS: Limits = Limits {
        max_message: 64 * 1024,
        max_frame: 16 * 1024 * 1024,
    };

    fn agreement(server_no_context_takeover: bool) -> Agreement {
        Agreement {
            server_no_context_takeover,
            server_max_window_bits: 15,
        }
    }

    /// Compresses one message the way a permessage-deflate sender does: a sync flush,
    /// then the trailing 00 00 ff ff removed.
    fn deflate(compressor: &mut Compress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let start = compressor.total_in();
        loop {
            let done = (compressor.total_in() - start) as usize;
            if out.len() == out.capacity() {
                out.reserve(data.len() / 2 + 64);
            }
            compressor
                .compress_vec(&data[done..], &mut out, FlushCompress::Sync)
                .unwrap();
            if (compressor.total_in() - start) as usize == data.len() && out.len() < out.capacity() {
                break;
            }
        }
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    fn frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, fin, opcode, payload);
        if rsv1 {
            out[0] |= 0x40;
        }
        out
    }

    /// Feeds `input` one byte at a time when `trickle`, else at once; returns the output.
    fn run(frames: &mut InboundFrames, input: &[u8], trickle: bool) -> Result<Vec<u8>, DeflateError> {
        let mut output = Vec::new();
        let mut pending = Vec::new();
        let step = if trickle { 1 } else { input.len().max(1) };
        for piece in input.chunks(step) {
            pending.extend_from_slice(piece);
            let consumed = frames.process(&pending, &mut output)?;
            pending.drain(..consumed);
        }
        assert!(pending.is_empty(), "unconsumed bytes: {pending:?}");
        Ok(output)
    }

    #[test]
    fn a_fragmented_compressed_message_with_a_ping_inside_comes_out_whole() {
        let text = br#"{"type":"message","data":"hello hello hello hello"}"#;
        let compressed = deflate(&mut Compress::new(Compression::default(), false), text);
        let (a, b) = compressed.split_at(compressed.len() / 2);
        let mut input = frame(false, true, 0x1, a);
        input.extend(frame(true, false, 0x9, b"ping"));
        input.extend(frame(true, false, 0x0, b));
        for trickle in [false, true] {
            let mut frames = InboundFrames::new(agreement(true), LIMITS);
            let output = run(&mut frames, &input, trickle).unwrap();
            let mut expected = frame(true, false, 0x9, b"ping");
            expected.extend(frame(true, false, 0x1, text));
            assert_eq!(output, expected, "trickle: {trickle}");
        }
    }

    #[test]
    fn uncompressed_and_control_frames_pass_through_untouched() {
        let mut input = frame(false, false, 0x2, b"part one, ");
        input.extend(frame(true, false, 0xA, b""));
        input.extend(frame(true, false, 0x0, b"part two"));
        input.extend(frame(true, false, 0x8, &[0x03, 0xe8]));
        let mut frames = InboundFrames::new(agreement(true), LIMITS);
        assert_eq!(run(&mut frames, &input, true).unwrap(), input);
    }

    #[test]
    fn context_takeover_keeps_the_window_across_messages() {
        let text = b"the same words, again and again: the same words";
        let mut compressor = Compress::new(Compression::default(), false);
        let first = deflate(&mut compressor, text);
        // Refers back into the first message's window.
        let second = deflate(&mut compressor, text);
        assert!(second.len() < first.len());
        let mut input = frame(true, true, 0x1, &first);
        input.extend(frame(true, true, 0x1, &second));
        let mut frames = InboundFrames::new(agreement(false), LIMITS);
        let mut expected = frame(true, false, 0x1, text);
        expected.extend(frame(true, false, 0x1, text));
        assert_eq!(run(&mut frames, &input, false).unwrap(), expected);
    }

    #[test]
    fn no_context_takeover_resets_the_inflater_between_messages() {
        let text = b"every message stands alone, every message stands alone";
        let compressed = deflate(&mut Compress::new(Compression::default(), false), text);
        let mut input = frame(true, true, 0x1, &compressed);
        input.extend(frame(true, true, 0x1, &compressed));
        let mut frames = InboundFrames::new(agreement(true), LIMITS);
        let mut expected = frame(true, false, 0x1, text);
        expected.extend(frame(true, false, 0x1, text));
        assert_eq!(run(&mut frames, &input, false).unwrap(), expected);
        // The same bytes with context takeover: the second message's back references
        // would now point into the first one's window, which is not what was sent.
        let mut compressor = Compress::new(Compression::default(), false);
        let first = deflate(&mut compressor, text);
        let second = deflate(&mut compressor, text);
        let mut input = frame(true, true, 0x1, &first);
        input.extend(frame(true, true, 0x1, &second));
        let mut frames = InboundFrames::new(agreement(true), LIMITS);
        assert!(!matches!(run(&mut frames, &input, false), Ok(out) if out == expected));
    }

    #[test]
    fn a_bomb_fails_at_the_limit_without_allocating_past_it() {
        let zeros = vec![0u8; 10 * 1024 * 1024];
        let compressed = deflate(&mut Compress::new(Compression::best(), false), &zeros);
        assert!(compressed.len() < 64 * 1024);
        let limits = Limits {
            max_message: 100_000,
            max_frame: LIMITS.max_frame,
        };
        let mut frames = InboundFrames::new(agreement(true), limits);
        let error = run(&mut frames, &frame(true, true, 0x2, &compressed), false).unwrap_err();
        assert!(matches!(error, DeflateError::TooBig { limit: 100_000 }), "{error}");
        let held = frames.message.as_ref().map_or(0, |m| m.data.capacity());
        assert!(held <= 100_001, "allocated {held} bytes");
        let io: io::Error = error.into();
        assert_eq!(
            close_code(&tungstenite::Error::Io(io)),
            Some(MESSAGE_TOO_BIG),
            "a bomb closes with 1009"
        );
    }

    #[test]
    fn a_message_at_the_limit_is_fine_and_long_ones_are_fragmented_for_tungstenite() {
        let data = vec![b'x'; 1000];
        let compressed = deflate(&mut Compress::new(Compression::default(), false), &data);
        let limits = Limits {
            max_message: 1000,
            max_frame: 400,
        };
        let mut frames = InboundFrames::new(agreement(true), limits);
        let output = run(&mut frames, &frame(true, true, 0x2, &compressed), false).unwrap();
        let mut expected = frame(false, false, 0x2, &data[..400]);
        expected.extend(frame(false, false, 0x0, &data[400..800]));
        expected.extend(frame(true, false, 0x0, &data[800..]));
        assert_eq!(output, expected);
    }

    #[test]
    fn rsv1_on_a_continuation_frame_is_an_error() {
        let compressed = deflate(&mut Compress::new(Compression::default(), false), b"abc");
        let mut input = frame(false, true, 0x1, &compressed);
        input.extend(frame(true, true, 0x0, b""));
        let mut frames = InboundFrames::new(agreement(true), LIMITS);
        assert!(matches!(
            run(&mut frames, &input, false),
            Err(DeflateError::Protocol(_))
        ));
    }

    #[test]
    fn the_response_head_tells_what_was_agreed() {
        let head = |extensions: &str| {
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extensions}\r\n")
        };
        assert_eq!(parse_response_head(head("").as_bytes(), true).unwrap(), None);
        let agreed = parse_response_head(
            head("sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10\r\n").as_bytes(),
            true,
        )
        .unwrap();
        assert_eq!(
            agreed,
            Some(Agreement {
                server_no_context_takeover: true,
                server_max_window_bits: 10
            })
        );
        assert!(parse_response_head(
            head("Sec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes(),
            false
        )
        .is_err());
        assert!(parse_response_head(
            head("Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n").as_bytes(),
            true
        )
        .is_err());
        assert!(parse_response_head(
            head("Sec-WebSocket-Extensions: permessage-deflate; mystery\r\n").as_bytes(),
            true
        )
        .is_err());
        // Not a 101: the answer is tungstenite's to report.
        assert_eq!(
            parse_response_head(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", true).unwrap(),
            None
        );
    }

    /// The whole stream: the head goes through as it is, and the compressed welcome
    /// that arrives in the same read as the head comes out inflated.
    #[tokio::test]
    async fn the_stream_passes_the_head_and_inflates_what_follows() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let head = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n";
        let text = br#"{"type":"welcome"}"#;
        let mut wire = head.to_vec();
        wire.extend(frame(
            true,
            true,
            0x1,
            &deflate(&mut Compress::new(Compression::default(), false), text),
        ));
        let (mut server, client) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            server.write_all(&wire).await.unwrap();
            server
        });
        let mut stream = DeflateStream::new(client, true, LIMITS);
        let mut got = Vec::new();
        let mut expected = head.to_vec();
        expected.extend(frame(true, false, 0x1, text));
        while got.len() < expected.len() {
            let mut buf = [0u8; 7];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, expected);
        assert!(stream.agreement().is_some_and(|a| a.server_no_context_takeover));
        drop(writer.await.unwrap());
    }

    /// A bomb behind a good frame: the good frame is handed up, then the error.
    #[tokio::test]
    async fn frames_before_a_failure_are_handed_up_first() {
        use tokio::io::AsyncReadExt;
        let head = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
        let mut wire = head.to_vec();
        wire.extend(frame(true, false, 0x1, b"welcome"));
        let zeros = vec![0u8; 1024 * 1024];
        wire.extend(frame(
            true,
            true,
            0x2,
            &deflate(&mut Compress::new(Compression::best(), false), &zeros),
        ));
        let limits = Limits {
            max_message: 1000,
            max_frame: LIMITS.max_frame,
        };
        let mut stream = DeflateStream::new(&wire[..], true, limits);
        let mut got = Vec::new();
        let error = loop {
            let mut buf = [0u8; 64];
            match stream.read(&mut buf).await {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        let mut expected = head.to_vec();
        expected.extend(frame(true, false, 0x1, b"welcome"));
        assert_eq!(got, expected);
        assert_eq!(close_code(&tungstenite::Error::Io(error)), Some(MESSAGE_TOO_BIG));
        assert!(stream.read(&mut [0u8; 8]).await.is_err(), "it stays failed");
    }
}
