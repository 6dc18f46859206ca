//! Values and ops, and the encoding of an ops batch (the plaintext inside a payload).

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::ids::{RecordId, ReplicaId};

pub const BATCH_VERSION: u8 = 3;

/// A content-addressed blob referenced from a record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobRef {
    pub sha256: [u8; 32],
    pub size: u64,
    pub mime: String,
}

/// A field value. Floats compare by their IEEE total order, so every value has a place in
/// index order and equality is reflexive.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// Unix milliseconds.
    Time(i64),
    Ref(RecordId),
    Blob(Box<BlobRef>),
}

impl Value {
    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::Str(_) => 4,
            Value::Time(_) => 5,
            Value::Ref(_) => 6,
            Value::Blob(_) => 7,
        }
    }

    pub fn type_name(&self) -> &'static str {
        ["null", "bool", "int", "float", "string", "time", "ref", "blob"][self.rank() as usize]
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u8(self.rank());
        self.write_content(w);
    }

    fn write_content(&self, w: &mut Writer) {
        match self {
            Value::Null => {}
            Value::Bool(b) => w.bool(*b),
            Value::Int(i) | Value::Time(i) => w.ivarint(*i),
            Value::Float(f) => w.u64(f.to_bits()),
            Value::Str(s) => w.str(s),
            Value::Ref(r) => w.fixed(r.as_bytes()),
            Value::Blob(b) => {
                w.fixed(&b.sha256);
                w.varint(b.size);
                w.str(&b.mime);
            }
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Value> {
        let ty = r.u8()?;
        Value::read_typed(ty, r)
    }

    fn read_typed(ty: u8, r: &mut Reader<'_>) -> Result<Value> {
        Ok(match ty {
            0 => Value::Null,
            1 => Value::Bool(r.bool()?),
            2 => Value::Int(r.ivarint()?),
            3 => Value::Float(f64::from_bits(r.u64()?)),
            4 => Value::Str(r.str()?.to_owned()),
            5 => Value::Time(r.ivarint()?),
            6 => Value::Ref(RecordId(r.array()?)),
            7 => Value::Blob(Box::new(BlobRef {
                sha256: r.array()?,
                size: r.varint()?,
                mime: r.str()?.to_owned(),
            })),
            _ => return Err(r.err("unknown value type")),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.finish()
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Time(t) => write!(f, "time {t}"),
            Value::Ref(r) => write!(f, "ref {r}"),
            Value::Blob(b) => write!(f, "blob {} ({} bytes, {})", hex::encode(b.sha256), b.size, b.mime),
        }
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        use Value::*;
        match (self, other) {
            (Bool(a), Bool(b)) => a.cmp(b),
            (Int(a), Int(b)) | (Time(a), Time(b)) => a.cmp(b),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Str(a), Str(b)) => a.cmp(b),
            (Ref(a), Ref(b)) => a.cmp(b),
            (Blob(a), Blob(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

/// An OR-set add tag: the entry (replica, seq) and the op's index `n` in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag {
    pub replica: ReplicaId,
    pub seq: u64,
    pub n: u32,
}

/// One change to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// LWW register write; blob references are values of this op too.
    Set { collection: String, record: RecordId, field: String, value: Value },
    Delete { collection: String, record: RecordId },
    Restore { collection: String, record: RecordId },
    /// PN-counter increment (negative to decrement).
    CounterAdd { collection: String, record: RecordId, field: String, delta: i64 },
    /// OR-set add; its tag is (entry replica, entry seq, op index).
    SetAdd { collection: String, record: RecordId, field: String, elem: Value },
    /// OR-set remove of the add tags the writer had observed.
    SetRemove { collection: String, record: RecordId, field: String, elem: Value, tags: Vec<Tag> },
}

impl Op {
    pub fn collection(&self) -> &str {
        match self {
            Op::Set { collection, .. }
            | Op::Delete { collection, .. }
            | Op::Restore { collection, .. }
            | Op::CounterAdd { collection, .. }
            | Op::SetAdd { collection, .. }
            | Op::SetRemove { collection, .. } => collection,
        }
    }

    pub fn record(&self) -> RecordId {
        match self {
            Op::Set { record, .. }
            | Op::Delete { record, .. }
            | Op::Restore { record, .. }
            | Op::CounterAdd { record, .. }
            | Op::SetAdd { record, .. }
            | Op::SetRemove { record, .. } => *record,
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            Op::Set { field, .. }
            | Op::CounterAdd { field, .. }
            | Op::SetAdd { field, .. }
            | Op::SetRemove { field, .. } => Some(field),
            Op::Delete { .. } | Op::Restore { .. } => None,
        }
    }
}

/// Interns strings and record ids so a batch names each once.
#[derive(Default)]
struct Tables<'a> {
    strings: Vec<&'a str>,
    string_ix: HashMap<&'a str, u64>,
    records: Vec<RecordId>,
    record_ix: HashMap<RecordId, u64>,
}

impl<'a> Tables<'a> {
    fn string(&mut self, s: &'a str) -> u64 {
        let next = self.strings.len() as u64;
        *self.string_ix.entry(s).or_insert_with(|| {
            self.strings.push(s);
            next
        })
    }
    fn record(&mut self, r: RecordId) -> u64 {
        let next = self.records.len() as u64;
        *self.record_ix.entry(r).or_insert_with(|| {
            self.records.push(r);
            next
        })
    }
}

/// The most ops one batch may hold. Columns of equal values cost a few bytes whatever their
/// length, so a decoder cannot bound the op count by the batch's size; this bounds the
/// memory a (member-signed, decrypted) batch can make a decoder allocate.
pub const MAX_BATCH_OPS: usize = 1 << 20;

const COLUMN_RUNS: u8 = 0xff;
const MAX_WIDTH: u8 = 64;

/// Bits needed for `v`.
fn width(v: u64) -> u8 {
    (u64::BITS - v.leading_zeros()) as u8
}

/// Writes `vals` LSB-first in `w`-bit slots; the last byte's unused high bits are zero.
fn pack_bits(out: &mut Writer, vals: impl Iterator<Item = u64>, w: u8) {
    let (mut acc, mut n) = (0u128, 0u32);
    for v in vals {
        acc |= (v as u128) << n;
        n += w as u32;
        while n >= 8 {
            out.u8(acc as u8);
            acc >>= 8;
            n -= 8;
        }
    }
    if n > 0 {
        out.u8(acc as u8);
    }
}

/// Writes an integer column: the smaller of a bit-packed form (`u8 width ‖ ivarint min ‖
/// count × width bits of value − min`) and a run-length form (`0xff ‖ varint r ‖ r ×
/// (ivarint value, varint run)`). Field indexes and small numbers pack into a few bits
/// each; a column of one repeated value (most batches' kinds, collections and types) or
/// of long runs (record indexes counting up) costs a few bytes whatever its length.
/// DEFLATE, which the previous format relied on, spends ~60 bytes per block on its
/// Huffman tables, as much as 100 ops' worth of a packed column.
fn write_ints(out: &mut Writer, vals: &[i64]) {
    let Some(&min) = vals.iter().min() else { return };
    let max = *vals.iter().max().expect("not empty");
    let w = width(max.wrapping_sub(min) as u64);
    let mut runs: Vec<(i64, u64)> = Vec::new();
    for &v in vals {
        match runs.last_mut() {
            Some((last, n)) if *last == v => *n += 1,
            _ => runs.push((v, 1)),
        }
    }
    let varint_len = |v: u64| (width(v).max(1) as usize).div_ceil(7);
    let zz = |v: i64| ((v << 1) ^ (v >> 63)) as u64;
    let packed_len = 1 + varint_len(zz(min)) + (vals.len() * w as usize).div_ceil(8);
    let runs_len =
        1 + varint_len(runs.len() as u64) + runs.iter().map(|&(v, n)| varint_len(zz(v)) + varint_len(n)).sum::<usize>();
    if runs_len < packed_len {
        out.u8(COLUMN_RUNS);
        out.varint(runs.len() as u64);
        for (v, n) in runs {
            out.ivarint(v);
            out.varint(n);
        }
    } else {
        out.u8(w);
        out.ivarint(min);
        pack_bits(out, vals.iter().map(|&v| v.wrapping_sub(min) as u64), w);
    }
}

/// Reads `count` values of `w` bits written by [`pack_bits`] from the next bytes of `r`.
fn unpack_bits(r: &mut Reader<'_>, count: usize, w: u8) -> Result<Vec<u64>> {
    let bytes = r.take((count * w as usize).div_ceil(8))?;
    let mask = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
    let (mut acc, mut n, mut next) = (0u128, 0u32, 0usize);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        while n < w as u32 {
            acc |= (bytes[next] as u128) << n;
            next += 1;
            n += 8;
        }
        out.push(acc as u64 & mask);
        acc >>= w;
        n -= w as u32;
    }
    if acc != 0 {
        return Err(r.err("column padding bits are not zero"));
    }
    Ok(out)
}

/// Reads an integer column of `count` values written by [`write_ints`].
fn read_ints(r: &mut Reader<'_>, count: usize) -> Result<Vec<i64>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let mode = r.u8()?;
    if mode == COLUMN_RUNS {
        let runs = r.len(2)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..runs {
            let v = r.ivarint()?;
            let n = r.varint()?;
            if n == 0 || n > (count - out.len()) as u64 {
                return Err(r.err("column runs do not add up to its length"));
            }
            out.resize(out.len() + n as usize, v);
        }
        if out.len() != count {
            return Err(r.err("column runs do not add up to its length"));
        }
        return Ok(out);
    }
    if mode > MAX_WIDTH {
        return Err(r.err("unknown column form"));
    }
    let min = r.ivarint()?;
    Ok(unpack_bits(r, count, mode)?.into_iter().map(|v| min.wrapping_add(v as i64)).collect())
}

/// Writes the record table as 16 byte planes: `u16 varying` (bit p: plane p differs
/// between ids), `u16 nonzero` (bit p: constant plane p is not zero), the nonzero
/// constants, then each varying plane as `u8 min ‖ u8 width ‖ m × width bits`. Ids made
/// close in time, or by one counter, share most of their bytes.
fn write_record_table(out: &mut Writer, records: &[RecordId]) {
    out.varint(records.len() as u64);
    if records.is_empty() {
        return;
    }
    let (mut varying, mut nonzero) = (0u16, 0u16);
    let mut ranges = [(0u8, 0u8); 16];
    for (p, range) in ranges.iter_mut().enumerate() {
        let (lo, hi) = records.iter().fold((u8::MAX, 0u8), |(lo, hi), r| (lo.min(r.0[p]), hi.max(r.0[p])));
        *range = (lo, hi);
        if lo != hi {
            varying |= 1 << p;
        } else if lo != 0 {
            nonzero |= 1 << p;
        }
    }
    out.u16(varying);
    out.u16(nonzero);
    for (p, &(lo, _)) in ranges.iter().enumerate() {
        if nonzero & (1 << p) != 0 {
            out.u8(lo);
        }
    }
    for (p, &(lo, hi)) in ranges.iter().enumerate() {
        if varying & (1 << p) != 0 {
            let w = width((hi - lo) as u64);
            out.u8(lo);
            out.u8(w);
            pack_bits(out, records.iter().map(|r| (r.0[p] - lo) as u64), w);
        }
    }
}

fn read_record_table(r: &mut Reader<'_>) -> Result<Vec<RecordId>> {
    let m = r.varint()?;
    if m == 0 {
        return Ok(Vec::new());
    }
    if m > MAX_BATCH_OPS as u64 {
        return Err(r.err("record table is too long"));
    }
    let m = m as usize;
    let varying = r.u16()?;
    let nonzero = r.u16()?;
    if varying & nonzero != 0 {
        return Err(r.err("record plane is both varying and constant"));
    }
    let mut records = vec![RecordId([0; 16]); m];
    for p in 0..16 {
        if nonzero & (1 << p) != 0 {
            let b = r.u8()?;
            records.iter_mut().for_each(|rec| rec.0[p] = b);
        }
    }
    for p in 0..16 {
        if varying & (1 << p) != 0 {
            let lo = r.u8()?;
            let w = r.u8()?;
            if w > 8 {
                return Err(r.err("record plane is wider than a byte"));
            }
            for (rec, v) in records.iter_mut().zip(unpack_bits(r, m, w)?) {
                rec.0[p] = u8::try_from(v + lo as u64).map_err(|_| r.err("record plane overflows a byte"))?;
            }
        }
    }
    Ok(records)
}

fn kind_of(op: &Op) -> u8 {
    match op {
        Op::Set { .. } => 0,
        Op::Delete { .. } => 1,
        Op::Restore { .. } => 2,
        Op::CounterAdd { .. } => 3,
        Op::SetAdd { .. } => 4,
        Op::SetRemove { .. } => 5,
    }
}

/// Value types (int, time) whose content is a number and goes to the integer column.
fn is_int_type(ty: i64) -> bool {
    matches!(ty, 2 | 5)
}

/// Encodes a batch in columns (see LOG-FORMAT.md): the string table, the record table
/// as byte planes, then one integer column per op attribute (kind, collection, record,
/// field, value type, numbers) and one byte column for the rest (strings, floats, refs,
/// blobs, set-remove tags). Panics on more than [`MAX_BATCH_OPS`] ops; callers check
/// (`Replica::commit` answers `TooLarge`).
pub fn encode_batch(ops: &[Op]) -> Vec<u8> {
    assert!(ops.len() <= MAX_BATCH_OPS, "an ops batch holds at most {MAX_BATCH_OPS} ops");
    let mut t = Tables::default();
    let n = ops.len();
    let mut kinds = Vec::with_capacity(n);
    let mut colls = Vec::with_capacity(n);
    let mut recs = Vec::with_capacity(n);
    let mut fields = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut ints = Vec::with_capacity(n);
    let mut rest = Writer::new();
    let mut prev_rec = 0i64;
    let value = |v: &Value, types: &mut Vec<i64>, ints: &mut Vec<i64>, rest: &mut Writer| {
        types.push(v.rank() as i64);
        match v {
            Value::Int(i) | Value::Time(i) => ints.push(*i),
            other => other.write_content(rest),
        }
    };
    for op in ops {
        kinds.push(kind_of(op) as i64);
        colls.push(t.string(op.collection()) as i64);
        let rec = t.record(op.record()) as i64;
        recs.push(rec - prev_rec);
        prev_rec = rec;
        if let Some(f) = op.field() {
            fields.push(t.string(f) as i64);
        }
        match op {
            Op::Set { value: v, .. } | Op::SetAdd { elem: v, .. } => value(v, &mut types, &mut ints, &mut rest),
            Op::CounterAdd { delta, .. } => ints.push(*delta),
            Op::SetRemove { elem, tags, .. } => {
                value(elem, &mut types, &mut ints, &mut rest);
                rest.varint(tags.len() as u64);
                for tag in tags {
                    rest.fixed(tag.replica.as_bytes());
                    rest.varint(tag.seq);
                    rest.varint(tag.n as u64);
                }
            }
            Op::Delete { .. } | Op::Restore { .. } => {}
        }
    }
    let mut w = Writer::with_capacity(n * 8 + t.records.len() * 4 + rest.buf.len() + 64);
    w.u8(BATCH_VERSION);
    w.varint(t.strings.len() as u64);
    for s in &t.strings {
        w.str(s);
    }
    write_record_table(&mut w, &t.records);
    w.varint(n as u64);
    for column in [&kinds, &colls, &recs, &fields, &types, &ints] {
        write_ints(&mut w, column);
    }
    w.fixed(&rest.buf);
    w.finish()
}

pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Op>> {
    let mut r = Reader::new(bytes, "ops batch");
    let version = r.u8()?;
    if version != BATCH_VERSION {
        return Err(Error::UnsupportedVersion {
            what: "ops batch",
            found: version as u32,
            supported: BATCH_VERSION as u32,
        });
    }
    let n = r.len(1)?;
    let mut strings = Vec::with_capacity(n);
    for _ in 0..n {
        strings.push(r.str()?);
    }
    let records = read_record_table(&mut r)?;
    let n = r.varint()?;
    if n > MAX_BATCH_OPS as u64 {
        return Err(Error::TooLarge { what: "ops batch", size: n as usize, limit: MAX_BATCH_OPS });
    }
    let n = n as usize;
    let kinds = read_ints(&mut r, n)?;
    let colls = read_ints(&mut r, n)?;
    let recs = read_ints(&mut r, n)?;
    if kinds.iter().any(|k| !(0..=5).contains(k)) {
        return Err(r.err("unknown op kind"));
    }
    let with_field = kinds.iter().filter(|&&k| k != 1 && k != 2).count();
    let fields = read_ints(&mut r, with_field)?;
    let with_value = kinds.iter().filter(|&&k| matches!(k, 0 | 4 | 5)).count();
    let types = read_ints(&mut r, with_value)?;
    let int_count = types.iter().filter(|&&t| is_int_type(t)).count()
        + kinds.iter().filter(|&&k| k == 3).count();
    let ints = read_ints(&mut r, int_count)?;
    let mut rest = Reader::new(r.take(r.remaining())?, "ops batch");

    let string = |i: i64| -> Result<String> {
        usize::try_from(i)
            .ok()
            .and_then(|i| strings.get(i))
            .map(|s| s.to_string())
            .ok_or(Error::Decode { what: "ops batch", reason: "string index out of range" })
    };
    let (mut fields, mut types, mut ints) = (fields.into_iter(), types.into_iter(), ints.into_iter());
    let mut value = |rest: &mut Reader<'_>, ints: &mut std::vec::IntoIter<i64>| -> Result<Value> {
        let ty = types.next().expect("counted above");
        if is_int_type(ty) {
            let i = ints.next().expect("counted above");
            return Ok(if ty == 2 { Value::Int(i) } else { Value::Time(i) });
        }
        Value::read_typed(u8::try_from(ty).map_err(|_| rest.err("unknown value type"))?, rest)
    };
    let mut prev_rec = 0i64;
    let mut ops = Vec::with_capacity(n);
    for i in 0..n {
        let collection = string(colls[i])?;
        let ix = prev_rec.checked_add(recs[i]).ok_or(r.err("record index out of range"))?;
        prev_rec = ix;
        let rec = usize::try_from(ix)
            .ok()
            .and_then(|i| records.get(i).copied())
            .ok_or(r.err("record index out of range"))?;
        let mut field = || string(fields.next().expect("counted above"));
        let op = match kinds[i] {
            0 => Op::Set { collection, record: rec, field: field()?, value: value(&mut rest, &mut ints)? },
            1 => Op::Delete { collection, record: rec },
            2 => Op::Restore { collection, record: rec },
            3 => Op::CounterAdd { collection, record: rec, field: field()?, delta: ints.next().expect("counted above") },
            4 => Op::SetAdd { collection, record: rec, field: field()?, elem: value(&mut rest, &mut ints)? },
            _ => {
                let field = field()?;
                let elem = value(&mut rest, &mut ints)?;
                let k = rest.len(18)?;
                let mut tags = Vec::with_capacity(k);
                for _ in 0..k {
                    let replica = ReplicaId(rest.array()?);
                    let seq = rest.varint()?;
                    let n = u32::try_from(rest.varint()?).map_err(|_| rest.err("tag index overflows"))?;
                    tags.push(Tag { replica, seq, n });
                }
                Op::SetRemove { collection, record: rec, field, elem, tags }
            }
        };
        ops.push(op);
    }
    rest.finish()?;
    Ok(ops)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    pub fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            "[a-z]{0,8}".prop_map(Value::Str),
            any::<i64>().prop_map(Value::Time),
            any::<[u8; 16]>().prop_map(|b| Value::Ref(RecordId(b))),
            (any::<[u8; 32]>(), any::<u64>(), "[a-z/]{0,10}")
                .prop_map(|(sha256, size, mime)| Value::Blob(Box::new(BlobRef { sha256, size, mime }))),
        ]
    }

    pub fn op_strategy() -> impl Strategy<Value = Op> {
        let coll = prop_oneof![Just("a".to_string()), Just("todo".to_string())];
        let rec = (0u8..4).prop_map(|b| RecordId([b; 16]));
        let field = "[a-c]{1,2}";
        let tag = (0u8..3, any::<u64>(), any::<u32>())
            .prop_map(|(r, seq, n)| Tag { replica: ReplicaId([r; 16]), seq, n });
        prop_oneof![
            (coll.clone(), rec.clone(), field, value_strategy())
                .prop_map(|(collection, record, field, value)| Op::Set { collection, record, field, value }),
            (coll.clone(), rec.clone()).prop_map(|(collection, record)| Op::Delete { collection, record }),
            (coll.clone(), rec.clone()).prop_map(|(collection, record)| Op::Restore { collection, record }),
            (coll.clone(), rec.clone(), field, any::<i64>())
                .prop_map(|(collection, record, field, delta)| Op::CounterAdd { collection, record, field, delta }),
            (coll.clone(), rec.clone(), field, value_strategy())
                .prop_map(|(collection, record, field, elem)| Op::SetAdd { collection, record, field, elem }),
            (coll, rec, field, value_strategy(), proptest::collection::vec(tag, 0..3)).prop_map(
                |(collection, record, field, elem, tags)| Op::SetRemove { collection, record, field, elem, tags }
            ),
        ]
    }

    proptest! {
        #[test]
        fn batches_round_trip(ops in proptest::collection::vec(op_strategy(), 0..20)) {
            let bytes = encode_batch(&ops);
            prop_assert_eq!(decode_batch(&bytes).unwrap(), ops.clone());
            // Deterministic: the same ops always give the same bytes.
            prop_assert_eq!(encode_batch(&decode_batch(&bytes).unwrap()), bytes);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_batch(&bytes);
        }
    }

    #[test]
    fn integer_columns_take_the_shorter_form() {
        let check = |vals: &[i64], expect: &str| {
            let mut w = Writer::new();
            write_ints(&mut w, vals);
            let got = read_ints(&mut Reader::new(&w.buf, "test"), vals.len()).unwrap();
            assert_eq!(got, vals);
            assert_eq!(hex::encode(&w.buf), expect, "{vals:?}");
        };
        check(&[], "");
        check(&[0; 100], "0000");
        check(&[7, 7, 7, 7], "000e");
        check(&[1, 2, 3, 4], "0202e4");
        check(&[1, 1, 1, 1, 1, 1, 1, 1, 1, -30, 1, 1, 1, 1, 1, 1, 1, 1, 1], "ff0302093b010209");
        check(&[i64::MIN, i64::MAX], "ff02ffffffffffffffffff0101feffffffffffffffff0101");
    }

    #[test]
    fn a_batch_of_numbers_packs_into_their_bits() {
        let ops: Vec<Op> = (0..100u64)
            .map(|i| Op::Set {
                collection: "t".into(),
                record: RecordId(std::array::from_fn(|b| if b == 0 { (i * 37 % 256) as u8 } else { 0x70 * (b == 6) as u8 })),
                field: format!("f{}", i % 5),
                value: Value::Int((i * 7919 % 1_000_000) as i64),
            })
            .collect();
        let bytes = encode_batch(&ops);
        assert_eq!(decode_batch(&bytes).unwrap(), ops);
        // 100 × (8 bits of record id + 3 of field + 20 of value) ≈ 388 bytes, plus tables.
        assert!(bytes.len() < 440, "{} bytes", bytes.len());
    }

    #[test]
    fn values_order_by_type_then_content() {
        let mut v = [Value::Str("b".into()),
            Value::Int(3),
            Value::Float(f64::NAN),
            Value::Null,
            Value::Int(-1),
            Value::Float(1.5),
            Value::Str("a".into())];
        v.sort();
        let shown: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        assert_eq!(shown.join(" "), "null -1 3 1.5 NaN \"a\" \"b\"");
    }
}
