//! The materialized state: records of collections, merged from ops as CRDTs.
//!
//! Every field slot holds three independent CRDTs — an LWW register, a PN-counter and an
//! OR-set — and each op touches one of them, so the state is a product of CRDTs and its
//! merge is commutative, associative and idempotent at the entry level (the log applies
//! each entry once). LWW order is the [`Stamp`] (hlc, replica, seq, op index): a total
//! order, since a replica's clock strictly increases along its chain. Deletes are an LWW
//! flag on the record, so a later restore brings the fields back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::codec::{Reader, Writer};
use crate::error::Result;
use crate::hlc::Hlc;
use crate::ids::{RecordId, ReplicaId};
use crate::ops::{Op, Tag, Value};

/// The position of one op in the global LWW order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub hlc: Hlc,
    pub replica: ReplicaId,
    pub seq: u64,
    pub n: u32,
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}/{}#{}", self.hlc, self.replica, self.seq, self.n)
    }
}

/// A record's version for compare-and-swap: the stamp of the last op applied to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version(pub Option<Stamp>);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("none"),
            Some(s) => s.fmt(f),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrSet {
    /// Live elements with their add tags.
    pub adds: BTreeMap<Value, BTreeSet<Tag>>,
    /// Tags removed, kept so an add that arrives after its remove stays removed.
    pub removed: BTreeSet<Tag>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSlot {
    pub reg: Option<(Stamp, Value)>,
    /// Per replica: (sum of increments, sum of decrements), wrapping.
    pub counter: BTreeMap<ReplicaId, (u64, u64)>,
    pub set: Option<Box<OrSet>>,
}

/// What a field shows to readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    Value(Value),
    Counter(i64),
    Set(Vec<Value>),
}

impl FieldSlot {
    pub fn register(&self) -> Option<&Value> {
        self.reg.as_ref().map(|(_, v)| v)
    }

    pub fn counter_value(&self) -> i64 {
        self.counter
            .values()
            .fold(0u64, |acc, (p, n)| acc.wrapping_add(*p).wrapping_sub(*n)) as i64
    }

    pub fn set_members(&self) -> Vec<Value> {
        self.set.as_ref().map(|s| s.adds.keys().cloned().collect()).unwrap_or_default()
    }

    /// The live tags of `elem`: what a remove must name.
    pub fn set_tags(&self, elem: &Value) -> Vec<Tag> {
        self.set
            .as_ref()
            .and_then(|s| s.adds.get(elem))
            .map(|t| t.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The field seen without a schema: a register wins, then a set, then a counter.
    pub fn view(&self) -> FieldValue {
        if let Some(v) = self.register() {
            FieldValue::Value(v.clone())
        } else if self.set.is_some() {
            FieldValue::Set(self.set_members())
        } else {
            FieldValue::Counter(self.counter_value())
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordState {
    pub fields: BTreeMap<String, FieldSlot>,
    pub deleted: Option<(Stamp, bool)>,
    pub version: Version,
}

impl RecordState {
    pub fn is_deleted(&self) -> bool {
        self.deleted.is_some_and(|(_, d)| d)
    }

    pub fn field(&self, name: &str) -> Option<&FieldSlot> {
        self.fields.get(name)
    }
}

/// All records of a space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub collections: BTreeMap<String, BTreeMap<RecordId, RecordState>>,
}

fn lww<T>(slot: &mut Option<(Stamp, T)>, stamp: Stamp, value: T) {
    if slot.as_ref().is_none_or(|(s, _)| *s < stamp) {
        *slot = Some((stamp, value));
    }
}

impl State {
    /// Applies one op at `stamp`; ops of an entry carry stamps (hlc, replica, seq, index).
    pub fn apply(&mut self, stamp: Stamp, op: &Op) {
        let coll = match self.collections.get_mut(op.collection()) {
            Some(c) => c,
            None => self.collections.entry(op.collection().to_owned()).or_default(),
        };
        let rec = coll.entry(op.record()).or_default();
        rec.version = rec.version.max(Version(Some(stamp)));
        match op {
            Op::Set { field, value, .. } => {
                let s = field_slot(rec, field);
                lww(&mut s.reg, stamp, value.clone());
            }
            Op::Delete { .. } => lww(&mut rec.deleted, stamp, true),
            Op::Restore { .. } => lww(&mut rec.deleted, stamp, false),
            Op::CounterAdd { field, delta, .. } => {
                let s = field_slot(rec, field);
                let e = s.counter.entry(stamp.replica).or_default();
                if *delta >= 0 {
                    e.0 = e.0.wrapping_add(delta.unsigned_abs());
                } else {
                    e.1 = e.1.wrapping_add(delta.unsigned_abs());
                }
            }
            Op::SetAdd { field, elem, .. } => {
                let set = field_slot(rec, field).set.get_or_insert_default();
                let tag = Tag { replica: stamp.replica, seq: stamp.seq, n: stamp.n };
                if !set.removed.contains(&tag) {
                    set.adds.entry(elem.clone()).or_default().insert(tag);
                }
            }
            Op::SetRemove { field, tags, .. } => {
                let set = field_slot(rec, field).set.get_or_insert_default();
                for tag in tags {
                    if set.removed.insert(*tag) {
                        // A tag belongs to one add; scanning every element keeps a remove
                        // that names the wrong element from making the result order-dependent.
                        set.adds.retain(|_, t| {
                            t.remove(tag);
                            !t.is_empty()
                        });
                    }
                }
            }
        }
    }

    pub fn record(&self, collection: &str, record: RecordId) -> Option<&RecordState> {
        self.collections.get(collection)?.get(&record)
    }

    /// A record as readers see it: absent when never written or deleted.
    pub fn visible(&self, collection: &str, record: RecordId) -> Option<&RecordState> {
        self.record(collection, record).filter(|r| !r.is_deleted())
    }

    pub fn version(&self, collection: &str, record: RecordId) -> Version {
        self.record(collection, record).map(|r| r.version).unwrap_or_default()
    }

    pub fn encode_into(&self, w: &mut Writer) {
        w.varint(self.collections.len() as u64);
        for (name, records) in &self.collections {
            w.str(name);
            write_records(w, records);
        }
    }

    pub fn read(r: &mut Reader<'_>) -> Result<State> {
        let mut state = State::default();
        let n = r.len(2)?;
        for _ in 0..n {
            let name = r.str()?.to_owned();
            let records = read_records(r)?;
            if state.collections.last_key_value().is_some_and(|(l, _)| *l >= name) {
                return Err(r.err("collections out of order"));
            }
            state.collections.insert(name, records);
        }
        Ok(state)
    }
}

/// One collection's records in id order (also a snapshot chunk's content).
pub(crate) fn write_records(w: &mut Writer, records: &BTreeMap<RecordId, RecordState>) {
    w.varint(records.len() as u64);
    for (id, rec) in records {
        w.fixed(id.as_bytes());
        write_opt_stamp(w, rec.version.0);
        match &rec.deleted {
            None => w.u8(0),
            Some((s, d)) => {
                w.u8(1 + *d as u8);
                write_stamp(w, s);
            }
        }
        w.varint(rec.fields.len() as u64);
        for (fname, slot) in &rec.fields {
            w.str(fname);
            match &slot.reg {
                None => w.u8(0),
                Some((s, v)) => {
                    w.u8(1);
                    write_stamp(w, s);
                    v.write(w);
                }
            }
            w.varint(slot.counter.len() as u64);
            for (r, (p, n)) in &slot.counter {
                w.fixed(r.as_bytes());
                w.varint(*p);
                w.varint(*n);
            }
            match &slot.set {
                None => w.u8(0),
                Some(set) => {
                    w.u8(1);
                    w.varint(set.adds.len() as u64);
                    for (v, tags) in &set.adds {
                        v.write(w);
                        write_tags(w, tags);
                    }
                    write_tags(w, &set.removed);
                }
            }
        }
    }
}

pub(crate) fn read_records(r: &mut Reader<'_>) -> Result<BTreeMap<RecordId, RecordState>> {
    let mut records = BTreeMap::new();
    let k = r.len(19)?;
    for _ in 0..k {
        let id = RecordId(r.array()?);
        let version = Version(read_opt_stamp(r)?);
        let deleted = match r.u8()? {
            0 => None,
            t @ (1 | 2) => Some((read_stamp(r)?, t == 2)),
            _ => return Err(r.err("bad deleted tag")),
        };
        let mut fields = BTreeMap::new();
        let f = r.len(4)?;
        for _ in 0..f {
            let fname = r.str()?.to_owned();
            let reg = match r.u8()? {
                0 => None,
                1 => Some((read_stamp(r)?, Value::read(r)?)),
                _ => return Err(r.err("bad register tag")),
            };
            let mut counter = BTreeMap::new();
            let c = r.len(18)?;
            for _ in 0..c {
                let rid = ReplicaId(r.array()?);
                if counter.last_key_value().is_some_and(|(l, _)| *l >= rid) {
                    return Err(r.err("counter replicas out of order"));
                }
                counter.insert(rid, (r.varint()?, r.varint()?));
            }
            let set = match r.u8()? {
                0 => None,
                1 => {
                    let mut set = OrSet::default();
                    let e = r.len(2)?;
                    for _ in 0..e {
                        let v = Value::read(r)?;
                        let tags = read_tags(r)?;
                        if tags.is_empty() || set.adds.last_key_value().is_some_and(|(l, _)| *l >= v) {
                            return Err(r.err("set elements out of order"));
                        }
                        set.adds.insert(v, tags);
                    }
                    set.removed = read_tags(r)?;
                    Some(Box::new(set))
                }
                _ => return Err(r.err("bad set tag")),
            };
            if fields.last_key_value().is_some_and(|(l, _): (&String, _)| *l >= fname) {
                return Err(r.err("fields out of order"));
            }
            fields.insert(fname, FieldSlot { reg, counter, set });
        }
        if records.last_key_value().is_some_and(|(l, _): (&RecordId, _)| *l >= id) {
            return Err(r.err("records out of order"));
        }
        records.insert(id, RecordState { fields, deleted, version });
    }
    Ok(records)
}

fn field_slot<'a>(rec: &'a mut RecordState, field: &str) -> &'a mut FieldSlot {
    if !rec.fields.contains_key(field) {
        rec.fields.insert(field.to_owned(), FieldSlot::default());
    }
    rec.fields.get_mut(field).expect("inserted above")
}

pub(crate) fn write_stamp(w: &mut Writer, s: &Stamp) {
    w.u64(s.hlc.to_u64());
    w.fixed(s.replica.as_bytes());
    w.varint(s.seq);
    w.varint(s.n as u64);
}

pub(crate) fn read_stamp(r: &mut Reader<'_>) -> Result<Stamp> {
    Ok(Stamp {
        hlc: Hlc::from_u64(r.u64()?),
        replica: ReplicaId(r.array()?),
        seq: r.varint()?,
        n: u32::try_from(r.varint()?).map_err(|_| r.err("op index overflows"))?,
    })
}

fn write_opt_stamp(w: &mut Writer, s: Option<Stamp>) {
    match s {
        None => w.u8(0),
        Some(s) => {
            w.u8(1);
            write_stamp(w, &s);
        }
    }
}

fn read_opt_stamp(r: &mut Reader<'_>) -> Result<Option<Stamp>> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(read_stamp(r)?)),
        _ => Err(r.err("bad option tag")),
    }
}

fn write_tags(w: &mut Writer, tags: &BTreeSet<Tag>) {
    w.varint(tags.len() as u64);
    for t in tags {
        w.fixed(t.replica.as_bytes());
        w.varint(t.seq);
        w.varint(t.n as u64);
    }
}

fn read_tags(r: &mut Reader<'_>) -> Result<BTreeSet<Tag>> {
    let n = r.len(18)?;
    let mut out = BTreeSet::new();
    for _ in 0..n {
        let tag = Tag {
            replica: ReplicaId(r.array()?),
            seq: r.varint()?,
            n: u32::try_from(r.varint()?).map_err(|_| r.err("tag index overflows"))?,
        };
        if out.last().is_some_and(|l| *l >= tag) {
            return Err(r.err("tags out of order"));
        }
        out.insert(tag);
    }
    Ok(out)
}
