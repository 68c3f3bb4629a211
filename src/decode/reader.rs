//! A bounds-checked little cursor over event bytes.
//!
//! Invariant: no method indexes past the slice; every short read is a [`Short`] error that the
//! caller turns into a [`super::DecodeError`] naming the event's position. The decoder never panics
//! on malformed input because nothing in it indexes a slice directly.

/// The input ended before a field did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Short {
    pub wanted: usize,
    pub at: usize,
}

pub type R<T> = Result<T, Short>;

#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let r = &self.buf[self.pos..];
        self.pos = self.buf.len();
        r
    }
    pub fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if self.remaining() < n {
            return Err(Short {
                wanted: n,
                at: self.pos,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn skip(&mut self, n: usize) -> R<()> {
        self.take(n).map(|_| ())
    }
    pub fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    /// Little-endian unsigned integer of `n` bytes (n <= 8).
    pub fn uint_le(&mut self, n: usize) -> R<u64> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    }
    /// Big-endian unsigned integer of `n` bytes (n <= 8).
    pub fn uint_be(&mut self, n: usize) -> R<u64> {
        let b = self.take(n)?;
        Ok(b.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    }
    pub fn u16(&mut self) -> R<u16> {
        Ok(self.uint_le(2)? as u16)
    }
    pub fn u32(&mut self) -> R<u32> {
        Ok(self.uint_le(4)? as u32)
    }
    pub fn u64(&mut self) -> R<u64> {
        self.uint_le(8)
    }
    /// MySQL length-encoded integer ("packed integer").
    pub fn lenenc(&mut self) -> R<u64> {
        match self.u8()? {
            x @ 0..=250 => Ok(x as u64),
            252 => self.uint_le(2),
            253 => self.uint_le(3),
            254 => self.uint_le(8),
            // 251 is NULL in result sets; in binlog metadata it never appears. Treat as 0-length.
            _ => Ok(0),
        }
    }
    pub fn lenenc_bytes(&mut self) -> R<&'a [u8]> {
        let n = self.lenenc()?;
        let n = usize::try_from(n).map_err(|_| Short {
            wanted: usize::MAX,
            at: self.pos,
        })?;
        self.take(n)
    }
}

/// Reads bit `i` of a little-endian-within-byte bitmap (the binlog's column bitmaps).
#[inline]
pub fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Reads bit `i` of a most-significant-bit-first bitmap (optional metadata SIGNEDNESS, VISIBILITY).
#[inline]
pub fn bit_msb(bitmap: &[u8], i: usize) -> bool {
    bitmap
        .get(i / 8)
        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}
