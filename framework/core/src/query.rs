//! Secondary indexes over the materialized state and paged queries through them.
//!
//! An index maps (value, record id) of one scalar field to the records that are visible;
//! queries walk it in that order, so a page ends with a cursor that the next page starts
//! after. Indexes are derived data: a collection's are built on its first query, then kept
//! current as ops apply.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use crate::error::{Error, Result};
use crate::ids::RecordId;
use crate::ops::Value;
use crate::schema::Schema;
use crate::state::State;

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every visible record, in id order.
    All,
    Eq { field: String, value: Value },
    Range { field: String, from: Bound<Value>, to: Bound<Value> },
}

/// Where the previous page stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub key: Option<Value>,
    pub record: RecordId,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub collection: String,
    pub filter: Filter,
    pub limit: usize,
    pub after: Option<Cursor>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub records: Vec<RecordId>,
    /// Set when more records may follow.
    pub next: Option<Cursor>,
}

type IndexKey = (String, String);

#[derive(Debug, Clone, Default)]
pub struct Indexes {
    entries: BTreeMap<IndexKey, BTreeSet<(Value, RecordId)>>,
    current: HashMap<(IndexKey, RecordId), Value>,
    /// Collections whose indexes exist; the others are built on their first query.
    built: BTreeSet<String>,
}

impl Indexes {
    /// Builds every index the schema declares.
    pub fn build(schema: &Schema, state: &State) -> Indexes {
        let mut ix = Indexes::default();
        for cname in schema.collections.keys() {
            ix.ensure(schema, state, cname);
        }
        ix
    }

    /// Builds the indexes of one collection unless they exist; `state` must hold all of
    /// its records.
    pub fn ensure(&mut self, schema: &Schema, state: &State, collection: &str) {
        if self.built.contains(collection) {
            return;
        }
        self.built.insert(collection.to_owned());
        let Some(coll) = schema.collections.get(collection) else { return };
        for def in &coll.indexes {
            self.entries.entry((collection.to_owned(), def.field.clone())).or_default();
        }
        if coll.indexes.is_empty() {
            return;
        }
        if let Some(records) = state.collections.get(collection) {
            for id in records.keys() {
                self.update(schema, state, collection, *id);
            }
        }
    }

    /// Brings one record's index entries up to date (in collections already built).
    pub fn update(&mut self, schema: &Schema, state: &State, collection: &str, record: RecordId) {
        if !self.built.contains(collection) {
            return;
        }
        let Some(coll) = schema.collections.get(collection) else { return };
        for def in &coll.indexes {
            let key = (collection.to_owned(), def.field.clone());
            let value = state.visible(collection, record).and_then(|r| {
                r.field(&def.field)
                    .and_then(|s| s.register().cloned())
                    .or_else(|| schema.default_value(collection, &def.field))
            });
            let slot = (key.clone(), record);
            let old = self.current.remove(&slot);
            let set = self.entries.entry(key).or_default();
            if let Some(old) = old {
                set.remove(&(old, record));
            }
            if let Some(v) = value {
                set.insert((v.clone(), record));
                self.current.insert(slot, v);
            }
        }
    }

    pub fn query(&self, state: &State, q: &Query) -> Result<Page> {
        let limit = q.limit.max(1);
        let (field, from, to) = match &q.filter {
            Filter::All => {
                let records = state.collections.get(&q.collection);
                let start = match &q.after {
                    Some(c) => Bound::Excluded(c.record),
                    None => Bound::Unbounded,
                };
                let mut out = Vec::new();
                let mut more = false;
                for (id, rec) in records.into_iter().flat_map(|r| r.range((start, Bound::Unbounded))) {
                    if rec.is_deleted() {
                        continue;
                    }
                    if out.len() == limit {
                        more = true;
                        break;
                    }
                    out.push(*id);
                }
                let next = more.then(|| Cursor { key: None, record: *out.last().expect("page is full") });
                return Ok(Page { records: out, next });
            }
            Filter::Eq { field, value } => {
                (field, Bound::Included(value.clone()), Bound::Included(value.clone()))
            }
            Filter::Range { field, from, to } => (field, from.clone(), to.clone()),
        };
        let set = self.entries.get(&(q.collection.clone(), field.clone())).ok_or_else(|| {
            Error::Schema(format!("no index on {}.{}", q.collection, field))
        })?;
        let min = RecordId([0; 16]);
        let max = RecordId([0xff; 16]);
        let mut lo = match from {
            Bound::Included(v) => Bound::Included((v, min)),
            Bound::Excluded(v) => Bound::Excluded((v, max)),
            Bound::Unbounded => Bound::Unbounded,
        };
        if let Some(c) = &q.after {
            let key = c.key.clone().ok_or_else(|| Error::Schema("cursor without a key".into()))?;
            lo = Bound::Excluded((key, c.record));
        }
        let hi = match to {
            Bound::Included(v) => Bound::Included((v, max)),
            Bound::Excluded(v) => Bound::Excluded((v, min)),
            Bound::Unbounded => Bound::Unbounded,
        };
        if let (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) = (&lo, &hi) {
            let both_excluded = matches!((&lo, &hi), (Bound::Excluded(_), Bound::Excluded(_)));
            if a > b || (a == b && both_excluded) {
                return Ok(Page { records: vec![], next: None });
            }
        }
        let mut iter = set.range((lo, hi));
        let page: Vec<&(Value, RecordId)> = iter.by_ref().take(limit).collect();
        let next = match (page.last(), iter.next()) {
            (Some((v, r)), Some(_)) => Some(Cursor { key: Some(v.clone()), record: *r }),
            _ => None,
        };
        Ok(Page { records: page.iter().map(|(_, r)| *r).collect(), next })
    }
}
