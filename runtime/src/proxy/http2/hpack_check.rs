//! A validate-only mirror of the client's HPACK state (RFC 7541), fed the
//! header block fragments the [`super::watch::FrameWatch`] sees, so that a
//! block the client cannot have encoded is answered with the code RFC 9113
//! §4.3 names: GOAWAY(COMPRESSION_ERROR). The `h2` crate decodes HPACK
//! itself but reports every decoding failure as PROTOCOL_ERROR, like any
//! other; its public error cannot tell them apart.
//!
//! It decodes nothing into memory but the first bytes of a literal name:
//! integers, string lengths and Huffman codes are walked byte by byte,
//! across frames and reads, and the dynamic table keeps only each entry's
//! name length, size and what its name is (a pseudo-header, a
//! connection-specific field, ...; at most 4096 / 32 = 128 entries). Decoding errors, as
//! RFC 7541 lists them: an index of 0 or past the tables (§2.3.3, §6.1),
//! an integer longer than the `h2` crate reads (five octets, §5.1), Huffman
//! padding over 7 bits or not EOS's prefix and a coded EOS (§5.2), a table
//! size update over our SETTINGS_HEADER_TABLE_SIZE or after a field
//! (§4.2, §6.3), and a block that ends inside a representation.
//!
//! Rules above HPACK, because only a decoder sees them:
//! - a pseudo-header in trailers makes the request malformed (RFC 9113
//!   §8.1); the `h2` crate does not check it. Answered PROTOCOL_ERROR.
//! - the fields that make a request malformed in the `h2` crate's own
//!   decoder (a connection-specific field, `te` other than `trailers`, a
//!   pseudo-header repeated or after a regular field: RFC 9113 §8.2.2,
//!   §8.3) are tracked as well, because the crate can lose that verdict:
//!   it decodes each fragment of a block as it comes, and its verdict for
//!   a fragment that ends inside a field is dropped with the partial decode
//!   (h2 0.4.20, `HeaderBlock::load`; hyperium/h2#37), so the request was
//!   forwarded without the offending field. When such a field completes in
//!   a fragment that is not the block's last, the connection ends with
//!   PROTOCOL_ERROR ([`HpackCheck::fragment_end`]; RFC 9113 §5.4 lets a
//!   stream error be treated as a connection error, and in the other split
//!   cases the crate itself ends the connection on the next CONTINUATION).
//!   A block in one fragment, or one whose offending field is in its last
//!   fragment, is left to the crate: that stream alone is reset.
//!
//! - a `:path` with a fragment (`#`, which RFC 9113 §8.3.1 and RFC 3986
//!   leave out of a request target) makes the request malformed, but the
//!   `http` crate's URI parser drops the `#` and all after it, so the `h2`
//!   crate would hand over the cut path as if it had been sent. The block's
//!   stream is noted ([`HpackCheck::take_path_fragment`]) and answered 400,
//!   as the same target is over HTTP/1.1. Only a `:path` value is scanned
//!   for it (and a table entry made from one remembers the verdict).
//!
//! Other semantic errors (upper-case names, unknown pseudo-headers, bad
//! values) are left to the `h2` crate, which decodes the same block after
//! us. Names are classified from at most their first 17 bytes (the longest
//! name that matters), and only a `te` field's value is looked at.
//! Cost: a few branches per block byte; string bytes are skipped in bulk
//! unless Huffman-coded, and steady-state requests are mostly indexed.

use std::collections::VecDeque;

use h2::Reason;

/// Name lengths of the static table (RFC 7541 Appendix A), index 1 first.
const STATIC_NAME_LEN: [u8; 61] = [
    10, 7, 7, 5, 5, 7, 7, 7, 7, 7, 7, 7, 7, 7, 14, 15, 15, 13, 6, 27, 3, 5, 13, 13, 19, 16, 16, 14,
    16, 13, 12, 6, 4, 4, 6, 7, 4, 4, 8, 17, 13, 8, 19, 13, 4, 8, 12, 18, 19, 5, 7, 7, 11, 6, 10,
    25, 17, 10, 4, 3, 16,
];

/// Static entries 1 to 14 are `:authority`, `:method`, `:path`, `:scheme`
/// and `:status`; 57 is `transfer-encoding`.
const STATIC_PSEUDO_LAST: usize = 14;
const STATIC_TRANSFER_ENCODING: usize = 57;

/// The Huffman code (RFC 7541 Appendix B) is canonical: the codes of one
/// length are consecutive, so a code of `len` bits is a whole symbol when
/// `code - FIRST_CODE[len] < CODES_OF_LEN[len]`. Index: length in bits.
const CODES_OF_LEN: [u32; 31] = [
    0, 0, 0, 0, 0, 10, 26, 32, 6, 0, 5, 3, 2, 6, 2, 3, 0, 0, 0, 3, 8, 13, 26, 29, 12, 4, 15, 19,
    29, 0, 4,
];
const FIRST_CODE: [u32; 31] = [
    0, 0, 0, 0, 0, 0, 20, 92, 248, 508, 1016, 2042, 4090, 8184, 16380, 32764, 65534, 131068,
    262136, 524272, 1048550, 2097116, 4194258, 8388568, 16777194, 33554412, 67108832, 134217694,
    268435426, 536870910, 1073741820,
];
/// The symbols in the code's canonical order (by length, then code), and
/// where each length's codes start in it: the symbol of a `len`-bit code is
/// `SYMBOLS[FIRST_SYMBOL[len] + (code - FIRST_CODE[len])]`. EOS (256) is
/// last and never decoded.
const SYMBOLS: [u8; 256] = [
    48, 49, 50, 97, 99, 101, 105, 111, 115, 116, 32, 37, 45, 46, 47, 51, 52, 53, 54, 55, 56, 57,
    61, 65, 95, 98, 100, 102, 103, 104, 108, 109, 110, 112, 114, 117, 58, 66, 67, 68, 69, 70, 71,
    72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 89, 106, 107, 113, 118, 119,
    120, 121, 122, 38, 42, 44, 59, 88, 90, 33, 34, 40, 41, 63, 39, 43, 124, 35, 62, 0, 36, 64, 91,
    93, 126, 94, 125, 60, 96, 123, 92, 195, 208, 128, 130, 131, 162, 184, 194, 224, 226, 153, 161,
    167, 172, 176, 177, 179, 209, 216, 217, 227, 229, 230, 129, 132, 133, 134, 136, 146, 154, 156,
    160, 163, 164, 169, 170, 173, 178, 181, 185, 186, 187, 189, 190, 196, 198, 228, 232, 233, 1,
    135, 137, 138, 139, 140, 141, 143, 147, 149, 150, 151, 152, 155, 157, 158, 165, 166, 168, 174,
    175, 180, 182, 183, 188, 191, 197, 231, 239, 9, 142, 144, 145, 148, 159, 171, 206, 215, 225,
    236, 237, 199, 207, 234, 235, 192, 193, 200, 201, 202, 205, 210, 213, 218, 219, 238, 240, 242,
    243, 255, 203, 204, 211, 212, 214, 221, 222, 223, 241, 244, 245, 246, 247, 248, 250, 251, 252,
    253, 254, 2, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24, 25, 26, 27, 28,
    29, 30, 31, 127, 220, 249, 10, 13, 22,
];
const FIRST_SYMBOL: [u16; 31] = [
    0, 0, 0, 0, 0, 0, 10, 36, 68, 0, 74, 79, 82, 84, 90, 92, 0, 0, 0, 95, 98, 106, 119, 145, 174,
    186, 190, 205, 224, 0, 253,
];
/// EOS: thirty 1 bits, the last code of length 30.
const EOS: (u32, u32) = (0x3fff_ffff, 30);

/// Bytes the `h2` crate reads of one integer (prefix octet included)
/// before it calls the integer an overflow.
const MAX_INT_BYTES: u8 = 5;

/// Per-entry overhead in the table's size (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// Requests with a fragment in `:path` noted and not yet accepted: a client
/// with more pending (a correct one sends none) breaks the protocol.
const MAX_FRAGMENT_STREAMS: usize = 128;

/// Bytes of a string kept to classify it: `proxy-connection` and
/// `transfer-encoding` are the longest names that matter.
const KEPT: usize = 17;

/// `:path`'s bit in [`HpackCheck::pseudo_seen`].
const PATH: u8 = 8;

/// What a field's name is, as far as the rules above HPACK go.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Name {
    Regular,
    /// A pseudo-header: its bit in [`HpackCheck::pseudo_seen`], 0 for one
    /// the `h2` crate does not know (its decoder refuses those itself).
    Pseudo(u8),
    /// `connection`, `keep-alive`, `proxy-connection`,
    /// `transfer-encoding`, `upgrade` (RFC 9113 §8.2.2).
    ConnectionSpecific,
    /// `te`: only `trailers` is allowed (§8.2.2).
    Te,
}

impl Name {
    /// The name whose first bytes (at most [`KEPT`]) are `kept`, of
    /// `len` bytes in all.
    fn of(kept: &[u8], len: usize) -> Name {
        let whole = if len == kept.len() { kept } else { &[] };
        match whole {
            b":method" => Name::Pseudo(1),
            b":scheme" => Name::Pseudo(2),
            b":authority" => Name::Pseudo(4),
            b":path" => Name::Pseudo(PATH),
            b":protocol" => Name::Pseudo(16),
            b":status" => Name::Pseudo(32),
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" => Name::ConnectionSpecific,
            b"te" => Name::Te,
            _ if kept.first() == Some(&b':') => Name::Pseudo(0),
            _ => Name::Regular,
        }
    }

    /// The name of static entry `index` (1 to 61).
    fn of_static(index: usize) -> Name {
        match index {
            1 => Name::Pseudo(4),
            2 | 3 => Name::Pseudo(1),
            4 | 5 => Name::Pseudo(PATH),
            6 | 7 => Name::Pseudo(2),
            8..=STATIC_PSEUDO_LAST => Name::Pseudo(32),
            STATIC_TRANSFER_ENCODING => Name::ConnectionSpecific,
            _ => Name::Regular,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    name_len: usize,
    size: usize,
    name: Name,
    /// For a `te` entry: whether its value is `trailers`.
    trailers: bool,
    /// For a `:path` entry: whether its value has a fragment.
    fragment: bool,
}

/// What an integer being read is for.
#[derive(Debug, Clone, Copy)]
enum IntFor {
    /// An indexed field (§6.1).
    Index,
    /// A literal field's name index, 0 for a literal name (§6.2).
    NameIndex,
    /// A dynamic table size update (§6.3).
    SizeUpdate,
    /// A string's length (§5.2).
    StrLen { huffman: bool },
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// The next byte starts a representation.
    Field,
    /// Continuation octets of an integer: its value so far, the next
    /// shift and the octets read.
    Int {
        value: usize,
        shift: u32,
        octets: u8,
        what: IntFor,
    },
    /// The next byte starts a string (its H bit and length).
    StrStart,
    /// String bytes still to come.
    Str { left: usize, huffman: bool },
}

/// The string being read: the name (of a literal name) or the value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    Name,
    Value,
}

#[derive(Debug)]
pub(crate) struct HpackCheck {
    /// Dynamic table, newest first.
    table: VecDeque<Entry>,
    table_size: usize,
    table_max: usize,
    /// SETTINGS_HEADER_TABLE_SIZE we sent: the most a size update may ask.
    limit: usize,
    step: Step,
    /// A field was decoded in the current block: no size update after it.
    field_seen: bool,
    /// The current block is trailers.
    trailers: bool,
    /// The current block's pseudo-headers so far (bits of [`Name::Pseudo`]),
    /// whether a regular field came, and whether a field made it malformed
    /// in the `h2` crate's eyes.
    pseudo_seen: u8,
    regular_seen: bool,
    malformed: bool,
    /// The current block's stream, and whether its `:path` has a fragment.
    stream: u32,
    path_fragment: bool,
    /// Streams whose request `:path` had a fragment, oldest first, until
    /// the connection accepts them (stream ids only grow).
    fragment_streams: VecDeque<u32>,
    /// The current literal: which string is being read, whether it enters
    /// the table, its name's length and what that name is.
    part: Part,
    indexing: bool,
    name_len: usize,
    name: Name,
    /// The string being read: bytes (symbols, if Huffman-coded) so far, the
    /// first [`KEPT`] of them when they matter, and the bits of the Huffman
    /// symbol under way; whether a `#` was among them.
    decoded: usize,
    kept: [u8; KEPT],
    hash_seen: bool,
    code: u32,
    code_len: u32,
}

impl HpackCheck {
    /// A decoder state for a connection whose SETTINGS_HEADER_TABLE_SIZE
    /// (ours) is `limit`.
    pub(crate) fn new(limit: usize) -> Self {
        HpackCheck {
            table: VecDeque::new(),
            table_size: 0,
            table_max: limit,
            limit,
            step: Step::Field,
            field_seen: false,
            trailers: false,
            pseudo_seen: 0,
            regular_seen: false,
            malformed: false,
            stream: 0,
            path_fragment: false,
            fragment_streams: VecDeque::new(),
            part: Part::Name,
            indexing: false,
            name_len: 0,
            name: Name::Regular,
            decoded: 0,
            kept: [0; KEPT],
            hash_seen: false,
            code: 0,
            code_len: 0,
        }
    }

    /// The dynamic table: entries, their size and its maximum size (for
    /// the differential fuzz target, `fuzzing::HpackMirror`).
    pub(crate) fn table_state(&self) -> (usize, usize, usize) {
        (self.table.len(), self.table_size, self.table_max)
    }

    /// A header block starts (a HEADERS frame on `stream`): `trailers` if
    /// it is sent on a stream the client already opened.
    pub(crate) fn begin_block(&mut self, stream: u32, trailers: bool) {
        self.step = Step::Field;
        self.stream = stream;
        self.path_fragment = false;
        self.field_seen = false;
        self.trailers = trailers;
        self.pseudo_seen = 0;
        self.regular_seen = false;
        self.malformed = false;
    }

    /// A fragment of the block ended and more follow (a HEADERS or
    /// CONTINUATION frame without END_HEADERS): a field that made the
    /// request malformed by now is one whose verdict the `h2` crate may
    /// lose (see the module's docs), and ends the connection.
    pub(crate) fn fragment_end(&self) -> Result<(), Reason> {
        if self.malformed {
            Err(Reason::PROTOCOL_ERROR)
        } else {
            Ok(())
        }
    }

    /// The block ended (END_HEADERS): it must end between representations.
    /// A request whose `:path` has a fragment is noted for
    /// [`Self::take_path_fragment`].
    pub(crate) fn end_block(&mut self) -> Result<(), Reason> {
        if !matches!(self.step, Step::Field) {
            return Err(Reason::COMPRESSION_ERROR);
        }
        if self.path_fragment && !self.trailers {
            if self.fragment_streams.len() == MAX_FRAGMENT_STREAMS {
                return Err(Reason::PROTOCOL_ERROR);
            }
            self.fragment_streams.push_back(self.stream);
        }
        Ok(())
    }

    /// Whether the request on `stream`, which the connection now accepts,
    /// had a fragment in its `:path` (cut by the `http` crate). Streams are
    /// accepted in the order they were opened: older notes are of streams
    /// the `h2` crate refused, and go.
    pub(crate) fn take_path_fragment(&mut self, stream: u32) -> bool {
        while let Some(&oldest) = self.fragment_streams.front() {
            if oldest > stream {
                break;
            }
            self.fragment_streams.pop_front();
            if oldest == stream {
                return true;
            }
        }
        false
    }

    /// Bytes of the block's fragments, in order, across frames and reads.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Reason> {
        while let Some((&b, rest)) = bytes.split_first() {
            match self.step {
                Step::Str {
                    left,
                    huffman: false,
                } => {
                    // Raw string bytes: skipped in bulk, the first ones
                    // kept when they matter.
                    let n = left.min(bytes.len());
                    if self.scanning_path() && bytes[..n].contains(&b'#') {
                        self.hash_seen = true;
                    }
                    if self.keeping() && self.decoded < KEPT {
                        let k = n.min(KEPT - self.decoded);
                        self.kept[self.decoded..self.decoded + k].copy_from_slice(&bytes[..k]);
                    }
                    self.decoded += n;
                    bytes = &bytes[n..];
                    if n == left {
                        self.string_done()?;
                    } else {
                        self.step = Step::Str {
                            left: left - n,
                            huffman: false,
                        };
                    }
                    continue;
                }
                Step::Str {
                    left,
                    huffman: true,
                } => {
                    self.huffman_byte(b)?;
                    if left == 1 {
                        self.huffman_end()?;
                        self.string_done()?;
                    } else {
                        self.step = Step::Str {
                            left: left - 1,
                            huffman: true,
                        };
                    }
                }
                Step::Field => self.field_start(b)?,
                Step::StrStart => self.int_start(
                    b,
                    7,
                    IntFor::StrLen {
                        huffman: b & 0x80 != 0,
                    },
                )?,
                Step::Int {
                    value,
                    shift,
                    octets,
                    what,
                } => {
                    let value = value + (usize::from(b & 0x7f) << shift);
                    if b & 0x80 == 0 {
                        self.int_done(value, what)?;
                    } else if octets + 1 == MAX_INT_BYTES {
                        return Err(Reason::COMPRESSION_ERROR);
                    } else {
                        self.step = Step::Int {
                            value,
                            shift: shift + 7,
                            octets: octets + 1,
                            what,
                        };
                    }
                }
            }
            bytes = rest;
        }
        Ok(())
    }

    /// The first byte of a representation (§6).
    fn field_start(&mut self, b: u8) -> Result<(), Reason> {
        if b & 0x80 != 0 {
            self.int_start(b, 7, IntFor::Index)
        } else if b & 0xc0 == 0x40 {
            self.indexing = true;
            self.int_start(b, 6, IntFor::NameIndex)
        } else if b & 0xe0 == 0x20 {
            self.int_start(b, 5, IntFor::SizeUpdate)
        } else {
            // 0000xxxx without indexing, 0001xxxx never indexed.
            self.indexing = false;
            self.int_start(b, 4, IntFor::NameIndex)
        }
    }

    /// An integer's prefix octet (§5.1).
    fn int_start(&mut self, b: u8, prefix_bits: u32, what: IntFor) -> Result<(), Reason> {
        let mask = (1u8 << prefix_bits) - 1;
        let value = usize::from(b & mask);
        if value < usize::from(mask) {
            self.int_done(value, what)
        } else {
            self.step = Step::Int {
                value,
                shift: 0,
                octets: 1,
                what,
            };
            Ok(())
        }
    }

    fn int_done(&mut self, value: usize, what: IntFor) -> Result<(), Reason> {
        self.step = Step::Field;
        match what {
            IntFor::Index => {
                let entry = self.entry(value)?;
                self.field_seen = true;
                self.field_done(entry.name, entry.trailers, entry.fragment)
            }
            IntFor::SizeUpdate => {
                if self.field_seen || value > self.limit {
                    return Err(Reason::COMPRESSION_ERROR);
                }
                self.table_max = value;
                self.evict(0);
                Ok(())
            }
            IntFor::NameIndex => {
                self.field_seen = true;
                if value == 0 {
                    self.part = Part::Name;
                } else {
                    let entry = self.entry(value)?;
                    self.name_len = entry.name_len;
                    self.name = entry.name;
                    self.part = Part::Value;
                }
                self.step = Step::StrStart;
                Ok(())
            }
            IntFor::StrLen { huffman } => {
                self.decoded = 0;
                self.hash_seen = false;
                self.code = 0;
                self.code_len = 0;
                if value == 0 {
                    self.string_done()
                } else {
                    self.step = Step::Str {
                        left: value,
                        huffman,
                    };
                    Ok(())
                }
            }
        }
    }

    /// The entry at `index` (§2.3.3): 0 and indexes past both tables are
    /// decoding errors.
    fn entry(&self, index: usize) -> Result<Entry, Reason> {
        if let Some(&name_len) = index.checked_sub(1).and_then(|i| STATIC_NAME_LEN.get(i)) {
            return Ok(Entry {
                name_len: usize::from(name_len),
                size: 0,
                name: Name::of_static(index),
                trailers: false,
                fragment: false,
            });
        }
        index
            .checked_sub(STATIC_NAME_LEN.len() + 1)
            .and_then(|i| self.table.get(i).copied())
            .ok_or(Reason::COMPRESSION_ERROR)
    }

    /// One byte of a Huffman-coded string (§5.2), bit by bit.
    fn huffman_byte(&mut self, b: u8) -> Result<(), Reason> {
        for bit in (0..8).rev() {
            self.code = (self.code << 1) | u32::from(b >> bit & 1);
            self.code_len += 1;
            let len = self.code_len as usize;
            if self.code.wrapping_sub(FIRST_CODE[len]) < CODES_OF_LEN[len] {
                if (self.code, self.code_len) == EOS {
                    return Err(Reason::COMPRESSION_ERROR);
                }
                let keep = self.keeping() && self.decoded < KEPT;
                if keep || self.scanning_path() {
                    // The symbol itself only when it is kept or looked at.
                    let at =
                        usize::from(FIRST_SYMBOL[len]) + (self.code - FIRST_CODE[len]) as usize;
                    let symbol = SYMBOLS[at];
                    if keep {
                        self.kept[self.decoded] = symbol;
                    }
                    self.hash_seen |= symbol == b'#' && self.scanning_path();
                }
                self.decoded += 1;
                self.code = 0;
                self.code_len = 0;
            } else if len == CODES_OF_LEN.len() - 1 {
                // 30 bits and no symbol: cannot happen in a complete code,
                // kept so that a bug can never index past the tables.
                return Err(Reason::COMPRESSION_ERROR);
            }
        }
        Ok(())
    }

    /// The end of a Huffman string: at most 7 bits of padding, all 1s
    /// (the most significant bits of EOS).
    fn huffman_end(&self) -> Result<(), Reason> {
        let padding_ok = self.code_len <= 7 && self.code == (1 << self.code_len) - 1;
        if padding_ok {
            Ok(())
        } else {
            Err(Reason::COMPRESSION_ERROR)
        }
    }

    /// Whether the string being read is kept: a literal name, or a `te`
    /// field's value.
    fn keeping(&self) -> bool {
        self.part == Part::Name || self.name == Name::Te
    }

    /// Whether the string being read is a `:path` value (scanned for `#`).
    fn scanning_path(&self) -> bool {
        self.part == Part::Value && self.name == Name::Pseudo(PATH)
    }

    /// The kept bytes of the string just read.
    fn kept(&self) -> &[u8] {
        &self.kept[..self.decoded.min(KEPT)]
    }

    /// A string ended: after a name comes the value; after the value the
    /// field is complete.
    fn string_done(&mut self) -> Result<(), Reason> {
        match self.part {
            Part::Name => {
                self.name = Name::of(self.kept(), self.decoded);
                self.name_len = self.decoded;
                self.part = Part::Value;
                self.step = Step::StrStart;
                Ok(())
            }
            Part::Value => {
                self.step = Step::Field;
                let trailers = self.name == Name::Te && self.kept() == b"trailers";
                let fragment = self.scanning_path() && self.hash_seen;
                if self.indexing {
                    self.insert(
                        self.name_len + self.decoded + ENTRY_OVERHEAD,
                        trailers,
                        fragment,
                    );
                }
                self.field_done(self.name, trailers, fragment)
            }
        }
    }

    /// A whole field was decoded: its name, for `te` whether the value is
    /// `trailers`, for `:path` whether it has a fragment. The `h2` crate's
    /// rules (`HeaderBlock::load`), so that `malformed` is its verdict; and
    /// the fragment, which it does not see.
    fn field_done(&mut self, name: Name, trailers: bool, fragment: bool) -> Result<(), Reason> {
        if name == Name::Pseudo(PATH) && fragment {
            self.path_fragment = true;
        }
        match name {
            Name::Pseudo(_) if self.trailers => {
                // RFC 9113 §8.1: trailers must not include pseudo-headers.
                return Err(Reason::PROTOCOL_ERROR);
            }
            Name::Pseudo(bit) => {
                if self.regular_seen || self.pseudo_seen & bit != 0 {
                    self.malformed = true;
                }
                self.pseudo_seen |= bit;
            }
            Name::ConnectionSpecific => self.malformed = true,
            Name::Te if !trailers => self.malformed = true,
            Name::Te | Name::Regular => self.regular_seen = true,
        }
        Ok(())
    }

    /// A literal with incremental indexing enters the table (§4.4): older
    /// entries are evicted to make room; one larger than the table empties
    /// it and is not added.
    fn insert(&mut self, size: usize, trailers: bool, fragment: bool) {
        self.evict(size);
        if self.table_size + size <= self.table_max {
            self.table_size += size;
            self.table.push_front(Entry {
                name_len: self.name_len,
                size,
                name: self.name,
                trailers,
                fragment,
            });
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.table_size + room > self.table_max {
            match self.table.pop_back() {
                Some(e) => self.table_size -= e.size,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one whole block to `h`.
    fn block(h: &mut HpackCheck, trailers: bool, bytes: &[u8]) -> Result<(), Reason> {
        h.begin_block(1, trailers);
        h.feed(bytes)?;
        h.end_block()
    }

    fn check(bytes: &[u8]) -> Result<(), Reason> {
        block(&mut HpackCheck::new(4096), false, bytes)
    }

    // RFC 7541 Appendix C.3 (raw strings) and C.4 (Huffman): three
    // requests each, on one connection.
    const C_3_1: &[u8] = b"\x82\x86\x84\x41\x0fwww.example.com";
    const C_3_2: &[u8] = b"\x82\x86\x84\xbe\x58\x08no-cache";
    const C_3_3: &[u8] = b"\x82\x87\x85\xbf\x40\x0acustom-key\x0ccustom-value";
    const C_4_1: &[u8] = b"\x82\x86\x84\x41\x8c\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff";
    const C_4_2: &[u8] = b"\x82\x86\x84\xbe\x58\x86\xa8\xeb\x10\x64\x9c\xbf";
    const C_4_3: &[u8] = b"\x82\x87\x85\xbf\x40\x88\x25\xa8\x49\xe9\x5b\xa9\x7d\x7f\x89\x25\xa8\x49\xe9\x5b\xb8\xe8\xb4\xbf";

    #[test]
    fn accepts_the_rfc_examples_in_sequence() {
        // Appendix C.3 (raw) and C.4 (Huffman): each three requests on one
        // connection, the later ones indexing what the earlier ones added.
        for requests in [[C_3_1, C_3_2, C_3_3], [C_4_1, C_4_2, C_4_3]] {
            let mut h = HpackCheck::new(4096);
            for r in requests {
                assert_eq!(block(&mut h, false, r), Ok(()));
            }
            assert_eq!(h.table.len(), 3);
            assert_eq!(h.table_size, 164, "Appendix C.3.3/C.4.3: table size 164");
        }
    }

    #[test]
    fn accepts_blocks_split_at_every_byte() {
        let mut h = HpackCheck::new(4096);
        for r in [C_4_1, C_4_2, C_4_3] {
            h.begin_block(1, false);
            for b in r.chunks(1) {
                assert_eq!(h.feed(b), Ok(()));
            }
            assert_eq!(h.end_block(), Ok(()));
        }
        assert_eq!(h.table_size, 164);
    }

    #[test]
    fn the_index_must_be_in_a_table() {
        assert_eq!(check(b"\x80"), Err(Reason::COMPRESSION_ERROR), "index 0");
        assert_eq!(
            check(b"\xbe"),
            Err(Reason::COMPRESSION_ERROR),
            "62, empty table"
        );
        assert_eq!(
            check(b"\xff\x00"),
            Err(Reason::COMPRESSION_ERROR),
            "62 + 127"
        );
        assert_eq!(
            check(b"\x7f\x00\x01a"),
            Err(Reason::COMPRESSION_ERROR),
            "literal, name 63"
        );
        assert_eq!(check(b"\xbd"), Ok(()), "61, the last static entry");
        let mut h = HpackCheck::new(4096);
        assert_eq!(block(&mut h, false, C_3_1), Ok(()));
        assert_eq!(
            block(&mut h, false, b"\xbe"),
            Ok(()),
            "62 once an entry exists"
        );
        assert_eq!(
            block(&mut h, false, b"\xbf"),
            Err(Reason::COMPRESSION_ERROR)
        );
    }

    #[test]
    fn integers_longer_than_five_octets() {
        // Five octets: a well-formed integer (127), just no such index.
        assert_eq!(
            check(b"\xff\x80\x80\x80\x00"),
            Err(Reason::COMPRESSION_ERROR)
        );
        assert_eq!(
            check(b"\x3f\x80\x80\x80\x00\x82"),
            Ok(()),
            "size update 31, five octets"
        );
        assert_eq!(
            check(b"\x3f\x80\x80\x80\x80\x00"),
            Err(Reason::COMPRESSION_ERROR),
            "six"
        );
        assert_eq!(check(b"\x3f\xe1\x1f"), Ok(()), "size update 4096");
    }

    #[test]
    fn huffman_padding_and_eos() {
        // "a" is 00011: padded with 111 is right.
        assert_eq!(check(b"\x40\x81\x1f\x00"), Ok(()));
        assert_eq!(
            check(b"\x40\x81\x18\x00"),
            Err(Reason::COMPRESSION_ERROR),
            "padded with 0s"
        );
        assert_eq!(
            check(b"\x40\x82\x1f\xff\x00"),
            Err(Reason::COMPRESSION_ERROR),
            "11 bits"
        );
        assert_eq!(
            check(b"\x40\x84\xff\xff\xff\xff\x00"),
            Err(Reason::COMPRESSION_ERROR),
            "EOS"
        );
        assert_eq!(
            check(b"\x00\x81\xfe\x00"),
            Err(Reason::COMPRESSION_ERROR),
            "7 1s, 1 0"
        );
    }

    #[test]
    fn size_updates() {
        assert_eq!(
            check(b"\x3f\xe2\x1f\x82"),
            Err(Reason::COMPRESSION_ERROR),
            "4097 > 4096"
        );
        assert_eq!(
            check(b"\x82\x20"),
            Err(Reason::COMPRESSION_ERROR),
            "after a field"
        );
        assert_eq!(check(b"\x20\x3f\xe1\x1f\x82"), Ok(()), "two at the start");
        let mut h = HpackCheck::new(4096);
        assert_eq!(block(&mut h, false, C_3_1), Ok(()));
        assert_eq!(block(&mut h, false, b"\x20\x82"), Ok(()), "to 0 evicts all");
        assert_eq!(
            block(&mut h, false, b"\xbe"),
            Err(Reason::COMPRESSION_ERROR)
        );
    }

    #[test]
    fn a_block_must_end_between_representations() {
        assert_eq!(check(b"\x82\x41"), Err(Reason::COMPRESSION_ERROR));
        assert_eq!(check(b"\x82\x41\x05ab"), Err(Reason::COMPRESSION_ERROR));
        assert_eq!(check(b"\xff"), Err(Reason::COMPRESSION_ERROR));
        assert_eq!(check(b""), Ok(()));
    }

    #[test]
    fn eviction_keeps_the_indexes_in_step() {
        // A 4064-byte value fills the table (32 + 10 + 4054 = 4096 with
        // ":authority"); the next insert evicts it.
        let mut h = HpackCheck::new(4096);
        let mut big = b"\x41\x7f\xd7\x1e".to_vec(); // length 127 + 3927 = 4054
        big.extend(std::iter::repeat_n(b'x', 4054));
        assert_eq!(block(&mut h, false, &big), Ok(()));
        assert_eq!((h.table.len(), h.table_size), (1, 4096));
        assert_eq!(block(&mut h, false, b"\x41\x01a"), Ok(()));
        assert_eq!((h.table.len(), h.table_size), (1, 43));
        assert_eq!(
            block(&mut h, false, b"\xbf"),
            Err(Reason::COMPRESSION_ERROR)
        );
        // Larger than the table: empties it and is not added.
        let mut huge = b"\x41\x7f\xd8\x1e".to_vec();
        huge.extend(std::iter::repeat_n(b'x', 4055));
        assert_eq!(block(&mut h, false, &huge), Ok(()));
        assert_eq!((h.table.len(), h.table_size), (0, 0));
    }

    #[test]
    fn pseudo_headers_in_trailers() {
        let mut h = HpackCheck::new(4096);
        assert_eq!(
            block(&mut h, true, b"\x82"),
            Err(Reason::PROTOCOL_ERROR),
            ":method GET"
        );
        let mut h = HpackCheck::new(4096);
        assert_eq!(
            block(&mut h, true, b"\x00\x05:path\x01/"),
            Err(Reason::PROTOCOL_ERROR)
        );
        let mut h = HpackCheck::new(4096);
        // ":" Huffman-coded is 1011100; ":a" = 1011100 00011 + 1111 padding.
        assert_eq!(
            block(&mut h, true, b"\x00\x82\xb8\x3f\x00"),
            Err(Reason::PROTOCOL_ERROR)
        );
        let mut h = HpackCheck::new(4096);
        assert_eq!(
            block(&mut h, true, b"\x40\x02x-\x01a\xbe"),
            Ok(()),
            "indexed regular field"
        );
        assert_eq!(
            block(&mut h, false, b"\x82\x41\x01a"),
            Ok(()),
            "a request, not trailers"
        );
        assert_eq!(
            block(&mut h, true, b"\xbe"),
            Err(Reason::PROTOCOL_ERROR),
            ":authority, dynamic"
        );
    }

    /// Whether `bytes`, a fragment followed by more, leaves the block
    /// malformed in the `h2` crate's eyes (the block's end is left to it).
    fn malformed(bytes: &[u8]) -> bool {
        let mut h = HpackCheck::new(4096);
        h.begin_block(1, false);
        assert_eq!(h.feed(bytes), Ok(()), "{bytes:02x?}");
        assert_eq!(
            h.end_block(),
            Ok(()),
            "a whole block is the crate's to refuse"
        );
        h.fragment_end().is_err()
    }

    #[test]
    fn fields_that_make_a_request_malformed() {
        // :method GET, :scheme http, :path / (static, indexed).
        const START: &[u8] = b"\x82\x86\x84";
        let with = |field: &[u8]| [START, field].concat();
        assert!(!malformed(C_3_1), "a plain request");
        assert!(!malformed(&with(b"\x00\x02te\x08trailers")), "te: trailers");
        assert!(
            !malformed(&with(b"\x00\x82\x49\x7f\x86\x4d\x83\x35\x05\xb1\x1f")),
            "te: trailers, Huffman"
        );
        assert!(
            malformed(&with(b"\x00\x02te\x09trailersx")),
            "te: trailersx"
        );
        assert!(malformed(&with(b"\x00\x02te\x04gzip")), "te: gzip");
        assert!(
            malformed(&with(b"\x00\x02te\x08Trailers")),
            "the crate compares te's value to the letter"
        );
        assert!(
            malformed(&with(b"\x00\x0aconnection\x05close")),
            "connection"
        );
        assert!(
            malformed(&with(b"\x00\x87\x21\xea\xa8\xa4\x49\x8f\x57\x01x")),
            "connection, Huffman"
        );
        assert!(
            malformed(&with(
                b"\x00\x8c\xae\xc3\xf9\xf4\xb1\x0f\x55\x45\x22\x4c\x7a\xbf\x01x"
            )),
            "proxy-connection, Huffman"
        );
        assert!(malformed(&with(b"\x00\x0akeep-alive\x01x")), "keep-alive");
        assert!(malformed(&with(b"\x00\x07upgrade\x02h2")), "upgrade");
        assert!(
            malformed(&with(b"\x0f\x2a\x07chunked")),
            "transfer-encoding, static name 57"
        );
        assert!(
            !malformed(&with(b"\x00\x87\xf2\xb2\x6c\x19\xa8\x2d\x88\x01x")),
            "x-trailers is regular"
        );
        assert!(
            !malformed(&with(b"\x00\x0bconnections\x01x")),
            "a longer name is regular"
        );
        assert!(malformed(b"\x82\x86\x84\x84"), ":path twice");
        assert!(
            malformed(b"\x82\x86\x84\x00\x05:path\x01/"),
            ":path twice, literal name"
        );
        assert!(
            malformed(b"\x82\x86\x40\x01a\x01b\x84"),
            "a pseudo-header after a regular field"
        );
        assert!(!malformed(b"\x82\x86\x84\x41\x01a"), ":authority once");
        // A dynamic entry remembers what its name is, and te its value.
        let mut h = HpackCheck::new(4096);
        assert_eq!(
            block(
                &mut h,
                false,
                b"\x82\x86\x84\x40\x02te\x08trailers\x40\x02te\x04gzip"
            ),
            Ok(())
        );
        h.begin_block(1, false);
        assert_eq!(h.feed(b"\x82\x86\x84\xbf"), Ok(()));
        assert_eq!(h.fragment_end(), Ok(()), "te: trailers, indexed");
        h.begin_block(1, false);
        assert_eq!(h.feed(b"\x82\x86\x84\xbe"), Ok(()));
        assert_eq!(
            h.fragment_end(),
            Err(Reason::PROTOCOL_ERROR),
            "te: gzip, indexed"
        );
        h.begin_block(1, false);
        assert_eq!(h.feed(b"\x82\x86\x84\x7e\x04gzip"), Ok(()));
        assert_eq!(
            h.fragment_end(),
            Err(Reason::PROTOCOL_ERROR),
            "te's name indexed, value gzip"
        );
        // Each block starts clean.
        h.begin_block(1, false);
        assert_eq!(h.feed(C_3_1), Ok(()));
        assert_eq!(h.fragment_end(), Ok(()));
    }

    #[test]
    fn notes_a_fragment_in_path_however_it_is_encoded() {
        // Each block: :method GET, :scheme http, then its :path.
        let request = |h: &mut HpackCheck, stream: u32, path: &[u8]| {
            h.begin_block(stream, false);
            let mut b = vec![0x82, 0x86];
            b.extend_from_slice(path);
            h.feed(&b).and_then(|()| h.end_block())
        };
        let mut h = HpackCheck::new(4096);
        // A raw literal, not indexed (name index 4, `:path`).
        assert_eq!(request(&mut h, 1, b"\x04\x04/a#b"), Ok(()));
        // Huffman-coded "/a#b", entered into the table (index 62).
        assert_eq!(request(&mut h, 3, b"\x44\x84\x60\x7f\xf5\x1f"), Ok(()));
        // The table's entry, indexed.
        assert_eq!(request(&mut h, 5, b"\xbe"), Ok(()));
        // No fragment: `%23`, or a `#` in another field's value.
        assert_eq!(request(&mut h, 7, b"\x04\x06/a%23b"), Ok(()));
        assert_eq!(request(&mut h, 9, b"\x84\x0f\x2b\x04/a#b"), Ok(()));
        // Trailers carry no :path to note (and one there is an error).
        h.begin_block(5, true);
        assert_eq!(
            h.feed(b"\x0f\x2b\x04/a#b").and_then(|()| h.end_block()),
            Ok(())
        );
        // Streams are accepted in order; stream 3 was refused by the crate
        // (never accepted): its note goes when stream 5 is taken.
        assert!(h.take_path_fragment(1));
        assert!(!h.take_path_fragment(1), "taken once");
        assert!(h.take_path_fragment(5));
        assert!(!h.take_path_fragment(7) && !h.take_path_fragment(9));
        assert!(h.fragment_streams.is_empty());
        // A client that keeps sending them, none accepted, is cut off.
        for i in 0..MAX_FRAGMENT_STREAMS as u32 {
            assert_eq!(request(&mut h, 11 + 2 * i, b"\xbe"), Ok(()));
        }
        assert_eq!(request(&mut h, 1001, b"\xbe"), Err(Reason::PROTOCOL_ERROR));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_split_reads_agree() {
        // xorshift: arbitrary blocks, fed whole and byte by byte, must get
        // the same verdict, with the table's size always within its bound.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut whole, mut split) = (HpackCheck::new(4096), HpackCheck::new(4096));
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let trailers = next() % 4 == 0;
            let a = block(&mut whole, trailers, &bytes);
            split.begin_block(1, trailers);
            let b = bytes
                .iter()
                .try_for_each(|b| split.feed(std::slice::from_ref(b)))
                .and_then(|()| split.end_block());
            assert_eq!(a, b, "{bytes:02x?}");
            assert!(whole.table_size <= whole.table_max && whole.table_max <= 4096);
            if a.is_err() {
                // A connection ends at its first error: start a new one.
                (whole, split) = (HpackCheck::new(4096), HpackCheck::new(4096));
            }
        }
    }
}
