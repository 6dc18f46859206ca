//! Primitive binary encoding shared by entries, ops, snapshots and frames (see LOG-FORMAT.md).
//!
//! Fixed-width integers are little-endian. Varints are unsigned LEB128 and must be minimal,
//! so every value has exactly one encoding; signed varints are zigzag-mapped first.

use crate::error::{Error, Result};

#[derive(Debug, Default, Clone)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Writer { buf: Vec::new() }
    }
    pub fn with_capacity(n: usize) -> Self {
        Writer { buf: Vec::with_capacity(n) }
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn fixed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    pub fn ivarint(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    pub fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// A cursor over bytes; every read failure names what was being decoded.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }
    pub fn err(&self, reason: &'static str) -> Error {
        Error::Decode { what: self.what, reason }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn position(&self) -> usize {
        self.pos
    }
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(self.err("unexpected end of input"));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.err("boolean is neither 0 nor 1")),
        }
    }
    pub fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err(self.err("varint overflows 64 bits"));
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(self.err("varint is not minimal"));
                }
                return Ok(v);
            }
        }
        Err(self.err("varint is too long"))
    }
    pub fn ivarint(&mut self) -> Result<i64> {
        let z = self.varint()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }
    /// A length read as a varint, bounded by what is left so a forged length cannot make
    /// the caller allocate more than the input could hold.
    pub fn len(&mut self, min_item_size: usize) -> Result<usize> {
        let n = self.varint()?;
        if n > (self.remaining() / min_item_size.max(1)) as u64 {
            return Err(self.err("length exceeds the input"));
        }
        Ok(n as usize)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.len(1)?;
        self.take(n)
    }
    pub fn str(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| self.err("string is not utf-8"))
    }
    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(self.err("trailing bytes"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn non_minimal_varints_are_rejected() {
        let check = |bytes: &[u8], expect: &str| {
            let got = match Reader::new(bytes, "test").varint() {
                Ok(v) => v.to_string(),
                Err(e) => e.to_string(),
            };
            assert_eq!(got, expect);
        };
        check(&[0x00], "0");
        check(&[0x7f], "127");
        check(&[0x80, 0x01], "128");
        check(&[0x80, 0x00], "malformed test: varint is not minimal");
        check(&[0x80], "malformed test: unexpected end of input");
        check(&[0xff; 10], "malformed test: varint overflows 64 bits");
    }

    proptest! {
        #[test]
        fn varints_round_trip(v: u64, i: i64) {
            let mut w = Writer::new();
            w.varint(v);
            w.ivarint(i);
            let buf = w.finish();
            let mut r = Reader::new(&buf, "test");
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert_eq!(r.ivarint().unwrap(), i);
            prop_assert!(r.finish().is_ok());
        }
    }
}
