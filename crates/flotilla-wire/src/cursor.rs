use crate::DecodeError;

/// A bounds-checked reader over untrusted bytes. Every read either returns the value or a
/// [`DecodeError::Truncated`] naming what was being read.
pub struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8], what: &'static str) -> Cursor<'a> {
        Cursor {
            bytes,
            pos: 0,
            what,
        }
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                what: self.what,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A string of at most `max_len` bytes, prefixed by its u16 length.
    pub fn str16(&mut self, max_len: usize) -> Result<&'a str, DecodeError> {
        let len = self.u16()? as usize;
        if len > max_len {
            return Err(DecodeError::invalid(
                self.what,
                format!("string of {len} bytes exceeds the limit of {max_len}"),
            ));
        }
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| DecodeError::invalid(self.what, "string is not UTF-8"))
    }

    /// A byte string prefixed by its u32 length, bounded by the bytes actually present.
    pub fn bytes32(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// An unsigned LEB128 varint of at most 10 bytes.
    pub fn uvar(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err(DecodeError::invalid(self.what, "varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::invalid(
            self.what,
            "varint longer than 10 bytes",
        ))
    }

    /// A signed (zigzag) varint.
    pub fn ivar(&mut self) -> Result<i64, DecodeError> {
        let v = self.uvar()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A count of items that each take at least `min_item_bytes`: refused when the bytes left
    /// cannot hold that many, so no allocation is sized by an unchecked count.
    pub fn count(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.uvar()?;
        if n.saturating_mul(min_item_bytes.max(1) as u64) > self.remaining() as u64 {
            return Err(DecodeError::invalid(
                self.what,
                format!("{n} items cannot fit the {} bytes left", self.remaining()),
            ));
        }
        Ok(n as usize)
    }

    /// A UTF-8 string prefixed by its varint length.
    pub fn str_var(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.uvar()?;
        let len = usize::try_from(len)
            .map_err(|_| DecodeError::invalid(self.what, "string length overflows"))?;
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| DecodeError::invalid(self.what, "string is not UTF-8"))
    }

    /// A byte string prefixed by its varint length.
    pub fn bytes_var(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.uvar()?;
        let len = usize::try_from(len)
            .map_err(|_| DecodeError::invalid(self.what, "length overflows"))?;
        self.take(len)
    }

    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::Trailing {
                what: self.what,
                extra,
            }),
        }
    }
}

/// Little-endian writer, the counterpart of [`Cursor`].
#[derive(Default)]
pub struct Out(pub Vec<u8>);

impl Out {
    pub fn with_capacity(n: usize) -> Out {
        Out(Vec::with_capacity(n))
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// Callers guarantee `v.len() <= u16::MAX` (ids and messages are validated before).
    pub fn str16(&mut self, v: &str) -> &mut Self {
        let v = &v.as_bytes()[..v.len().min(u16::MAX as usize)];
        self.u16(v.len() as u16).raw(v)
    }
    pub fn bytes32(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32).raw(v)
    }
    pub fn uvar(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    pub fn ivar(&mut self, v: i64) -> &mut Self {
        self.uvar(((v << 1) ^ (v >> 63)) as u64)
    }
    pub fn str_var(&mut self, v: &str) -> &mut Self {
        self.bytes_var(v.as_bytes())
    }
    pub fn bytes_var(&mut self, v: &[u8]) -> &mut Self {
        self.uvar(v.len() as u64).raw(v)
    }
    /// Appends the CRC32 of everything written so far.
    pub fn seal(mut self) -> Vec<u8> {
        let crc = crc32fast::hash(&self.0);
        self.u32(crc);
        self.0
    }
}

/// Splits `bytes` into its body and checks the trailing CRC32 written by [`Out::seal`].
pub(crate) fn unseal<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a [u8], DecodeError> {
    if bytes.len() < 4 {
        return Err(DecodeError::Truncated {
            what,
            needed: 4,
            available: bytes.len(),
        });
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let computed = crc32fast::hash(body);
    #[cfg(feature = "sim-bugs")]
    if crate::injected_bugs::SKIP_CHECKSUM.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(body);
    }
    if stored != computed {
        return Err(DecodeError::Checksum {
            what,
            stored,
            computed,
        });
    }
    Ok(body)
}
