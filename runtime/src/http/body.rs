//! Body framing state machines: the chunked decoder and the body reader
//! that turns wire bytes into payload slices, never holding a body.
//!
//! The decoder is strict (RFC 9112 §7.1): a size line is 1*HEXDIG, then
//! optionally SP/HTAB and `;` extensions, then CRLF; data is followed by
//! CRLF; bare CR or LF, non-hex sizes, overflow and junk are errors.
//! Chunk extensions are skipped (bounded). Trailer fields are parsed as
//! field lines as strict as the head's (`token ":" field-value`: no
//! whitespace before the colon, no obs-fold, no control bytes but HTAB),
//! bounded, and dropped: they are never forwarded (a trailer cannot
//! smuggle a header the gateway did not check).

use std::ops::Range;

/// Longest chunk-size line extension accepted, in bytes.
pub const MAX_CHUNK_EXT: usize = 4096;
/// Longest trailer section accepted, in bytes.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Invalid chunked framing. The message is aborted: the upstream request is
/// never completed and neither connection is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Before the first hex digit of a size line.
    SizeStart,
    /// In the hex digits.
    Size,
    /// SP/HTAB after the digits: only `;` or more whitespace may follow.
    SizeWs,
    /// After `;`: optional BWS, then an extension name.
    ExtStart,
    /// In an extension name (token).
    ExtName,
    /// BWS after a name: `=`, `;` or CR may follow.
    ExtNameWs,
    /// After `=`: optional BWS, then a token or a quoted string.
    ExtValStart,
    /// In a token value.
    ExtVal,
    /// In a quoted-string value.
    ExtQuoted,
    /// After a backslash in a quoted string.
    ExtQuotedEsc,
    /// BWS after a value: `;` or CR may follow.
    ExtAfterVal,
    /// Saw CR ending the size line.
    SizeLf,
    /// In chunk data.
    Data,
    /// Expect CR after the data.
    DataCr,
    /// Expect LF after the data.
    DataLf,
    /// Start of a trailer line (or the final empty line).
    TrailerStart,
    /// In a trailer field's name (token), up to its colon.
    TrailerName,
    /// In a trailer field's value, up to CR.
    TrailerValue,
    /// Saw CR in a trailer line.
    TrailerLf,
    /// Saw CR on the final empty line.
    EndLf,
    /// The message is complete.
    Done,
}

/// Incremental, allocation-free chunked decoder.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    digits: u32,
    ext_len: usize,
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// What one [`ChunkedDecoder::decode`] call found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes consumed.
    pub consumed: usize,
    /// Payload bytes within the input (may be empty).
    pub data: Range<usize>,
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::SizeStart,
            size: 0,
            digits: 0,
            ext_len: 0,
            trailer_len: 0,
        }
    }

    /// True once the last chunk and the trailer section are consumed.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes framing from `input` up to and including at most one run of
    /// payload. Returns the bytes consumed and where the payload is. Always
    /// consumes at least one byte of a non-empty input unless done.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkError> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                Done => break,
                SizeStart | Size => {
                    if let Some(d) = hex_value(b) {
                        self.digits += 1;
                        // Leading zeros are legal but bounded; the value
                        // itself must fit in 64 bits.
                        if self.digits > 32 || self.size > (u64::MAX >> 4) {
                            return Err(ChunkError("chunk size overflow"));
                        }
                        self.size = (self.size << 4) | u64::from(d);
                        self.state = Size;
                    } else if self.state == SizeStart {
                        return Err(ChunkError("chunk size is not hex"));
                    } else {
                        match b {
                            b'\r' => self.state = SizeLf,
                            b';' => self.state = ExtStart,
                            b' ' | b'\t' => self.state = SizeWs,
                            _ => return Err(ChunkError("junk in chunk size line")),
                        }
                    }
                }
                SizeWs => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = ExtStart,
                    _ => return Err(ChunkError("junk in chunk size line")),
                },
                ExtStart | ExtName | ExtNameWs | ExtValStart | ExtVal | ExtQuoted
                | ExtQuotedEsc | ExtAfterVal => {
                    self.ext_len += 1;
                    if self.ext_len > MAX_CHUNK_EXT {
                        return Err(ChunkError("chunk extension too long"));
                    }
                    self.state = chunk_ext_step(self.state, b)?;
                }
                SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare CR in chunk size line"));
                    }
                    self.digits = 0;
                    self.ext_len = 0;
                    self.state = if self.size == 0 { TrailerStart } else { Data };
                }
                Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.size) as usize;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    return Ok(Decoded {
                        consumed: i + take,
                        data: i..i + take,
                    });
                }
                DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("missing CRLF after chunk data"));
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("missing CRLF after chunk data"));
                    }
                    self.state = SizeStart;
                }
                TrailerStart | TrailerName | TrailerValue => {
                    self.trailer_len += 1;
                    if self.trailer_len > MAX_TRAILERS {
                        return Err(ChunkError("trailer section too long"));
                    }
                    let is_token = super::parse::is_token_byte(b);
                    self.state = match (self.state, b) {
                        (TrailerStart, b'\r') => EndLf,
                        (TrailerStart, b' ' | b'\t') => {
                            return Err(ChunkError("obs-fold in trailer"));
                        }
                        (TrailerStart | TrailerName, _) if is_token => TrailerName,
                        (TrailerName, b':') => TrailerValue,
                        (TrailerStart | TrailerName, _) => {
                            return Err(ChunkError("invalid trailer field name"));
                        }
                        (_, b'\r') => TrailerLf,
                        (_, b'\n') => return Err(ChunkError("bare LF in trailer")),
                        (_, b'\t') => TrailerValue,
                        (_, 0..0x20 | 0x7f) => {
                            return Err(ChunkError("control byte in trailer value"));
                        }
                        _ => TrailerValue,
                    }
                }
                TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare CR in trailer"));
                    }
                    self.state = TrailerStart;
                }
                EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare CR after last chunk"));
                    }
                    self.state = Done;
                    return Ok(Decoded {
                        consumed: i + 1,
                        data: 0..0,
                    });
                }
            }
            i += 1;
        }
        Ok(Decoded {
            consumed: i,
            data: 0..0,
        })
    }
}

/// One byte of `chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )`
/// with name a token and value a token or a quoted string (RFC 9112 §7.1.1).
fn chunk_ext_step(state: ChunkState, b: u8) -> Result<ChunkState, ChunkError> {
    use ChunkState::*;
    let token = super::parse::is_token_byte(b);
    let ws = b == b' ' || b == b'\t';
    let bad = ChunkError("invalid chunk extension");
    Ok(match state {
        ExtStart if ws => ExtStart,
        ExtStart if token => ExtName,
        ExtName if token => ExtName,
        ExtName | ExtNameWs if ws => ExtNameWs,
        ExtName | ExtNameWs if b == b'=' => ExtValStart,
        ExtValStart if ws => ExtValStart,
        ExtValStart if b == b'"' => ExtQuoted,
        ExtValStart if token => ExtVal,
        ExtVal if token => ExtVal,
        ExtVal | ExtAfterVal if ws => ExtAfterVal,
        ExtQuoted if b == b'"' => ExtAfterVal,
        ExtQuoted if b == b'\\' => ExtQuotedEsc,
        ExtQuoted if b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80 => {
            ExtQuoted
        }
        ExtQuotedEsc if b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80 => {
            ExtQuoted
        }
        ExtName | ExtNameWs | ExtVal | ExtAfterVal if b == b';' => ExtStart,
        ExtName | ExtNameWs | ExtVal | ExtAfterVal if b == b'\r' => SizeLf,
        _ if b == b'\n' => return Err(ChunkError("bare LF in chunk size line")),
        _ => return Err(bad),
    })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Writes a chunk-size line (`{hex}\r\n`) for `len` payload bytes.
pub fn put_chunk_head(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Decodes one body from wire bytes, whatever its framing.
#[derive(Debug, Clone)]
pub enum BodyReader {
    /// `remaining` bytes left.
    Length { remaining: u64 },
    /// Chunked.
    Chunked(ChunkedDecoder),
    /// Until the peer closes.
    UntilClose,
}

impl BodyReader {
    /// A reader for the given framing.
    pub fn new(framing: super::BodyFraming) -> Self {
        match framing {
            super::BodyFraming::None => BodyReader::Length { remaining: 0 },
            super::BodyFraming::Length(n) => BodyReader::Length { remaining: n },
            super::BodyFraming::Chunked => BodyReader::Chunked(ChunkedDecoder::new()),
            super::BodyFraming::UntilClose => BodyReader::UntilClose,
        }
    }

    /// True when the body is complete (never for `UntilClose`: EOF decides).
    pub fn is_done(&self) -> bool {
        match self {
            BodyReader::Length { remaining } => *remaining == 0,
            BodyReader::Chunked(d) => d.is_done(),
            BodyReader::UntilClose => false,
        }
    }

    /// Like [`ChunkedDecoder::decode`] for any framing.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkError> {
        match self {
            BodyReader::Length { remaining } => {
                let take = (input.len() as u64).min(*remaining) as usize;
                *remaining -= take as u64;
                Ok(Decoded {
                    consumed: take,
                    data: 0..take,
                })
            }
            BodyReader::Chunked(d) => d.decode(input),
            BodyReader::UntilClose => Ok(Decoded {
                consumed: input.len(),
                data: 0..input.len(),
            }),
        }
    }
}
