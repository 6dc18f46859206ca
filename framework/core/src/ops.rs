//! Values and ops, and the encoding of an ops batch (the plaintext inside a payload).

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::ids::{RecordId, ReplicaId};

pub const BATCH_VERSION: u8 = 2;

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

    /// Writes the type byte to `types` and the content to `content` (batch columns).
    pub(crate) fn write_split(&self, types: &mut Writer, content: &mut Writer) {
        types.u8(self.rank());
        self.write_content(content);
    }

    pub(crate) fn read_split(types: &mut Reader<'_>, content: &mut Reader<'_>) -> Result<Value> {
        let ty = types.u8()?;
        Value::read_typed(ty, content)
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

/// Encodes a batch in columns (see LOG-FORMAT.md): the string table, the record table as
/// 16 byte planes, then one column per op attribute. Ids made close in time share their
/// high bytes and a batch's ops mostly share kind, collection and value type, so the
/// columns are long runs and narrow alphabets that the payload compressor squeezes well;
/// interleaved rows would break every run.
pub fn encode_batch(ops: &[Op]) -> Vec<u8> {
    let mut t = Tables::default();
    let n = ops.len();
    let mut kinds = Writer::with_capacity(n);
    let mut colls = Writer::with_capacity(n);
    let mut recs = Writer::with_capacity(n);
    let mut fields = Writer::with_capacity(n);
    let mut types = Writer::with_capacity(n);
    let mut values = Writer::with_capacity(n * 4);
    let mut prev_rec = 0i64;
    for op in ops {
        let kind = match op {
            Op::Set { .. } => 0,
            Op::Delete { .. } => 1,
            Op::Restore { .. } => 2,
            Op::CounterAdd { .. } => 3,
            Op::SetAdd { .. } => 4,
            Op::SetRemove { .. } => 5,
        };
        kinds.u8(kind);
        colls.varint(t.string(op.collection()));
        let rec = t.record(op.record()) as i64;
        recs.ivarint(rec - prev_rec);
        prev_rec = rec;
        if let Some(f) = op.field() {
            fields.varint(t.string(f));
        }
        match op {
            Op::Set { value, .. } | Op::SetAdd { elem: value, .. } => value.write_split(&mut types, &mut values),
            Op::CounterAdd { delta, .. } => values.ivarint(*delta),
            Op::SetRemove { elem, tags, .. } => {
                elem.write_split(&mut types, &mut values);
                values.varint(tags.len() as u64);
                for tag in tags {
                    values.fixed(tag.replica.as_bytes());
                    values.varint(tag.seq);
                    values.varint(tag.n as u64);
                }
            }
            Op::Delete { .. } | Op::Restore { .. } => {}
        }
    }
    let columns = [kinds, colls, recs, fields, types, values];
    let size: usize = columns.iter().map(|c| c.buf.len() + 5).sum();
    let mut w = Writer::with_capacity(size + t.records.len() * 16 + 64);
    w.u8(BATCH_VERSION);
    w.varint(t.strings.len() as u64);
    for s in &t.strings {
        w.str(s);
    }
    w.varint(t.records.len() as u64);
    for plane in 0..16 {
        for r in &t.records {
            w.u8(r.0[plane]);
        }
    }
    w.varint(n as u64);
    for c in &columns {
        w.bytes(&c.buf);
    }
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
    let n = r.len(16)?;
    let planes = r.take(n * 16)?;
    let records: Vec<RecordId> =
        (0..n).map(|i| RecordId(std::array::from_fn(|p| planes[p * n + i]))).collect();
    let n = r.len(1)?;
    let mut kinds = Reader::new(r.bytes()?, "ops batch");
    let mut colls = Reader::new(r.bytes()?, "ops batch");
    let mut recs = Reader::new(r.bytes()?, "ops batch");
    let mut fields = Reader::new(r.bytes()?, "ops batch");
    let mut types = Reader::new(r.bytes()?, "ops batch");
    let mut values = Reader::new(r.bytes()?, "ops batch");
    r.finish()?;
    let string = |r: &mut Reader<'_>| -> Result<String> {
        let i = r.varint()?;
        strings.get(i as usize).map(|s| s.to_string()).ok_or(r.err("string index out of range"))
    };
    let mut prev_rec = 0i64;
    let mut ops = Vec::with_capacity(n.min(kinds.remaining()));
    for _ in 0..n {
        let kind = kinds.u8()?;
        let collection = string(&mut colls)?;
        let ix = prev_rec.checked_add(recs.ivarint()?).ok_or(recs.err("record index out of range"))?;
        prev_rec = ix;
        let rec = usize::try_from(ix)
            .ok()
            .and_then(|i| records.get(i).copied())
            .ok_or(recs.err("record index out of range"))?;
        let value = |types: &mut Reader<'_>, values: &mut Reader<'_>| Value::read_split(types, values);
        let op = match kind {
            0 => Op::Set { collection, record: rec, field: string(&mut fields)?, value: value(&mut types, &mut values)? },
            1 => Op::Delete { collection, record: rec },
            2 => Op::Restore { collection, record: rec },
            3 => Op::CounterAdd { collection, record: rec, field: string(&mut fields)?, delta: values.ivarint()? },
            4 => Op::SetAdd { collection, record: rec, field: string(&mut fields)?, elem: value(&mut types, &mut values)? },
            5 => {
                let field = string(&mut fields)?;
                let elem = value(&mut types, &mut values)?;
                let k = values.len(18)?;
                let mut tags = Vec::with_capacity(k);
                for _ in 0..k {
                    let replica = ReplicaId(values.array()?);
                    let seq = values.varint()?;
                    let n = u32::try_from(values.varint()?).map_err(|_| values.err("tag index overflows"))?;
                    tags.push(Tag { replica, seq, n });
                }
                Op::SetRemove { collection, record: rec, field, elem, tags }
            }
            _ => return Err(kinds.err("unknown op kind")),
        };
        ops.push(op);
    }
    for c in [&kinds, &colls, &recs, &fields, &types, &values] {
        c.finish()?;
    }
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
    fn values_order_by_type_then_content() {
        let mut v = vec![
            Value::Str("b".into()),
            Value::Int(3),
            Value::Float(f64::NAN),
            Value::Null,
            Value::Int(-1),
            Value::Float(1.5),
            Value::Str("a".into()),
        ];
        v.sort();
        let shown: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        assert_eq!(shown.join(" "), "null -1 3 1.5 NaN \"a\" \"b\"");
    }
}
