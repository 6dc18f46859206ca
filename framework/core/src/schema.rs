//! The metaschema: collections, typed fields, defaults, indexes and migrations, as data.
//!
//! The service worker is generic, so an app's schema is a TOML (or JSON) document rather
//! than code. Writes are validated against it; errors name the collection, the field and
//! the value. A new version that only adds (collections, optional or defaulted fields,
//! indexes) applies by itself; anything else must be covered by a declared migration.
//!
//! ```toml
//! version = 1
//! [collections.todo.fields]
//! title = { type = "string", required = true }
//! done = { type = "bool", default = false }
//! tags = { type = "set", of = "string" }
//! [[collections.todo.indexes]]
//! field = "done"
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::RecordId;
use crate::ops::{Op, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    pub version: u32,
    #[serde(default)]
    pub collections: BTreeMap<String, CollectionDef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<Migration>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CollectionDef {
    #[serde(default)]
    pub fields: BTreeMap<String, FieldDef>,
    #[serde(default)]
    pub indexes: Vec<IndexDef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDef {
    #[serde(flatten)]
    pub ty: FieldType,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FieldType {
    String,
    Int,
    Float,
    Bool,
    Time,
    Ref { collection: String },
    Set { of: ScalarType },
    Counter,
    Blob,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScalarType {
    String,
    Int,
    Float,
    Bool,
    Time,
}

/// A single-field index for equality and range queries with paging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDef {
    pub field: String,
}

/// The steps that take data from schema version `from` to the declaring version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub from: u32,
    pub steps: Vec<MigrationStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MigrationStep {
    DropCollection { collection: String },
    DropField { collection: String, field: String },
    /// Copies every value of `from` into `to` (a new field of the same type).
    RenameField { collection: String, from: String, to: String },
    /// Declares that old values of a retyped field are dropped.
    RetypeField { collection: String, field: String },
    /// Writes `value` into a new required field of every existing record.
    FillField { collection: String, field: String, value: serde_json::Value },
}

/// How a schema change applies.
#[derive(Debug, Clone, PartialEq)]
pub enum Upgrade {
    Unchanged,
    Additive,
    Migrated(Vec<MigrationStep>),
}

impl FieldType {
    fn name(&self) -> String {
        match self {
            FieldType::String => "string".into(),
            FieldType::Int => "int".into(),
            FieldType::Float => "float".into(),
            FieldType::Bool => "bool".into(),
            FieldType::Time => "time".into(),
            FieldType::Ref { collection } => format!("ref({collection})"),
            FieldType::Set { of } => format!("set({})", FieldType::from(*of).name()),
            FieldType::Counter => "counter".into(),
            FieldType::Blob => "blob".into(),
        }
    }

    /// Whether a register value fits this type.
    pub fn accepts(&self, v: &Value) -> bool {
        matches!(
            (self, v),
            (FieldType::String, Value::Str(_))
                | (FieldType::Int, Value::Int(_))
                | (FieldType::Float, Value::Float(_))
                | (FieldType::Bool, Value::Bool(_))
                | (FieldType::Time, Value::Time(_))
                | (FieldType::Ref { .. }, Value::Ref(_))
                | (FieldType::Blob, Value::Blob(_))
        )
    }

    /// Converts a JSON default to a value of this type.
    pub fn from_json(&self, j: &serde_json::Value) -> Option<Value> {
        use serde_json::Value as J;
        match (self, j) {
            (FieldType::String, J::String(s)) => Some(Value::Str(s.clone())),
            (FieldType::Int, J::Number(n)) => n.as_i64().map(Value::Int),
            (FieldType::Float, J::Number(n)) => n.as_f64().map(Value::Float),
            (FieldType::Bool, J::Bool(b)) => Some(Value::Bool(*b)),
            (FieldType::Time, J::Number(n)) => n.as_i64().map(Value::Time),
            (FieldType::Ref { .. }, J::String(s)) => s.parse::<RecordId>().ok().map(Value::Ref),
            _ => None,
        }
    }

    fn is_scalar(&self) -> bool {
        !matches!(self, FieldType::Set { .. } | FieldType::Counter)
    }
}

impl From<ScalarType> for FieldType {
    fn from(s: ScalarType) -> FieldType {
        match s {
            ScalarType::String => FieldType::String,
            ScalarType::Int => FieldType::Int,
            ScalarType::Float => FieldType::Float,
            ScalarType::Bool => FieldType::Bool,
            ScalarType::Time => FieldType::Time,
        }
    }
}

fn invalid(collection: &str, field: &str, value: impl ToString, reason: impl Into<String>) -> Error {
    Error::Validation {
        collection: collection.to_owned(),
        field: field.to_owned(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl Schema {
    pub fn from_toml(text: &str) -> Result<Schema> {
        let s: Schema = toml::from_str(text).map_err(|e| Error::Schema(e.to_string().trim().to_owned()))?;
        s.check()?;
        Ok(s)
    }

    pub fn from_json(text: &str) -> Result<Schema> {
        let s: Schema = serde_json::from_str(text).map_err(|e| Error::Schema(e.to_string()))?;
        s.check()?;
        Ok(s)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a schema always serializes")
    }

    /// Checks the schema itself: refs name collections, defaults fit, indexes are scalar.
    pub fn check(&self) -> Result<()> {
        for (cname, coll) in &self.collections {
            for (fname, f) in &coll.fields {
                if let FieldType::Ref { collection } = &f.ty
                    && !self.collections.contains_key(collection) {
                        return Err(invalid(cname, fname, collection, "ref to an unknown collection"));
                    }
                if let Some(d) = &f.default
                    && f.ty.from_json(d).is_none() {
                        return Err(invalid(cname, fname, d, format!("default is not a {}", f.ty.name())));
                    }
            }
            for ix in &coll.indexes {
                match coll.fields.get(&ix.field) {
                    None => return Err(invalid(cname, &ix.field, "", "index on an unknown field")),
                    Some(f) if !f.ty.is_scalar() => {
                        return Err(invalid(cname, &ix.field, "", format!("cannot index a {}", f.ty.name())));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    pub fn field(&self, collection: &str, field: &str) -> Option<&FieldDef> {
        self.collections.get(collection)?.fields.get(field)
    }

    pub fn default_value(&self, collection: &str, field: &str) -> Option<Value> {
        let f = self.field(collection, field)?;
        f.default.as_ref().and_then(|d| f.ty.from_json(d))
    }

    pub fn is_indexed(&self, collection: &str, field: &str) -> bool {
        self.collections.get(collection).is_some_and(|c| c.indexes.iter().any(|i| i.field == field))
    }

    /// Validates one op against the schema.
    pub fn validate_op(&self, op: &Op) -> Result<()> {
        let cname = op.collection();
        let coll = self
            .collections
            .get(cname)
            .ok_or_else(|| Error::Schema(format!("unknown collection {cname:?}")))?;
        let Some(fname) = op.field() else { return Ok(()) };
        let f = coll.fields.get(fname).ok_or_else(|| invalid(cname, fname, "", "unknown field"))?;
        match (op, &f.ty) {
            (Op::Set { value: Value::Null, .. }, ty) if ty.is_scalar() => {
                if f.required {
                    return Err(invalid(cname, fname, "null", "field is required"));
                }
            }
            (Op::Set { value, .. }, ty) if ty.is_scalar() => {
                if !ty.accepts(value) {
                    return Err(invalid(cname, fname, value, format!("expected {}", ty.name())));
                }
            }
            (Op::CounterAdd { .. }, FieldType::Counter) => {}
            (Op::SetAdd { elem, .. } | Op::SetRemove { elem, .. }, FieldType::Set { of }) => {
                let ty = FieldType::from(*of);
                if !ty.accepts(elem) {
                    return Err(invalid(cname, fname, elem, format!("expected {}", ty.name())));
                }
            }
            (op, ty) => {
                let what = match op {
                    Op::Set { .. } => "a plain write",
                    Op::CounterAdd { .. } => "a counter add",
                    _ => "a set op",
                };
                let value = match op {
                    Op::Set { value, .. } => value.to_string(),
                    Op::CounterAdd { delta, .. } => delta.to_string(),
                    Op::SetAdd { elem, .. } | Op::SetRemove { elem, .. } => elem.to_string(),
                    _ => String::new(),
                };
                return Err(invalid(cname, fname, value, format!("{what} does not apply to a {}", ty.name())));
            }
        }
        Ok(())
    }

    /// Required fields without a default that a new record must set.
    pub fn required_fields(&self, collection: &str) -> impl Iterator<Item = &str> {
        self.collections
            .get(collection)
            .into_iter()
            .flat_map(|c| c.fields.iter())
            .filter(|(_, f)| f.required && f.default.is_none())
            .map(|(n, _)| n.as_str())
    }

    /// Decides how to move from `self` to `new`: additive changes apply by themselves;
    /// each breaking change must be covered by a migration step declared from this version.
    pub fn check_upgrade(&self, new: &Schema) -> Result<Upgrade> {
        new.check()?;
        if self.collections == new.collections {
            return Ok(Upgrade::Unchanged);
        }
        if new.version <= self.version {
            return Err(Error::Schema(format!(
                "schema changed without a new version (still {})",
                new.version
            )));
        }
        let steps: &[MigrationStep] = new
            .migrations
            .iter()
            .find(|m| m.from == self.version)
            .map_or(&[], |m| m.steps.as_slice());
        let covered = |pred: &dyn Fn(&MigrationStep) -> bool| steps.iter().any(pred);
        let need = |what: String| {
            Error::Schema(format!("breaking change: {what} needs a migration from version {}", self.version))
        };
        for (cname, old_c) in &self.collections {
            let Some(new_c) = new.collections.get(cname) else {
                if !covered(&|s| matches!(s, MigrationStep::DropCollection { collection } if collection == cname)) {
                    return Err(need(format!("collection {cname} removed")));
                }
                continue;
            };
            for (fname, old_f) in &old_c.fields {
                match new_c.fields.get(fname) {
                    None => {
                        let ok = covered(&|s| match s {
                            MigrationStep::DropField { collection, field } => collection == cname && field == fname,
                            MigrationStep::RenameField { collection, from, .. } => collection == cname && from == fname,
                            _ => false,
                        });
                        if !ok {
                            return Err(need(format!("field {cname}.{fname} removed")));
                        }
                    }
                    Some(new_f) if new_f.ty != old_f.ty => {
                        let ok = covered(&|s| matches!(s, MigrationStep::RetypeField { collection, field } if collection == cname && field == fname));
                        if !ok {
                            return Err(need(format!(
                                "field {cname}.{fname} changed from {} to {}",
                                old_f.ty.name(),
                                new_f.ty.name()
                            )));
                        }
                    }
                    Some(_) => {}
                }
            }
            for (fname, new_f) in &new_c.fields {
                if new_f.required && new_f.default.is_none() && !old_c.fields.get(fname).is_some_and(|f| f.required) {
                    let ok = covered(&|s| match s {
                        MigrationStep::FillField { collection, field, .. } => collection == cname && field == fname,
                        MigrationStep::RenameField { collection, to, .. } => collection == cname && to == fname,
                        _ => false,
                    });
                    if !ok {
                        return Err(need(format!("field {cname}.{fname} became required without a default")));
                    }
                }
            }
        }
        if steps.is_empty() { Ok(Upgrade::Additive) } else { Ok(Upgrade::Migrated(steps.to_vec())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const TODO: &str = r#"
        version = 1
        [collections.user.fields]
        name = { type = "string", required = true }
        [collections.todo.fields]
        title = { type = "string", required = true }
        done = { type = "bool", default = false }
        owner = { type = "ref", collection = "user" }
        tags = { type = "set", of = "string" }
        likes = { type = "counter" }
        due = { type = "time" }
        [[collections.todo.indexes]]
        field = "done"
        [[collections.todo.indexes]]
        field = "due"
    "#;

    fn check_op(op: Op, expect: &str) {
        let schema = Schema::from_toml(TODO).unwrap();
        let got = match schema.validate_op(&op) {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expect);
    }

    fn set(field: &str, value: Value) -> Op {
        Op::Set { collection: "todo".into(), record: RecordId([1; 16]), field: field.into(), value }
    }

    #[test]
    fn writes_are_validated_with_names() {
        check_op(set("title", Value::Str("milk".into())), "ok");
        check_op(set("title", Value::Int(3)), "invalid value for todo.title: 3 (expected string)");
        check_op(set("title", Value::Null), "invalid value for todo.title: null (field is required)");
        check_op(set("due", Value::Null), "ok");
        check_op(set("nope", Value::Int(1)), "invalid value for todo.nope:  (unknown field)");
        check_op(set("likes", Value::Int(1)), "invalid value for todo.likes: 1 (a plain write does not apply to a counter)");
        check_op(
            Op::CounterAdd { collection: "todo".into(), record: RecordId([1; 16]), field: "likes".into(), delta: -2 },
            "ok",
        );
        check_op(
            Op::SetAdd { collection: "todo".into(), record: RecordId([1; 16]), field: "tags".into(), elem: Value::Bool(true) },
            "invalid value for todo.tags: true (expected string)",
        );
        check_op(
            Op::Delete { collection: "nope".into(), record: RecordId([1; 16]) },
            "schema error: unknown collection \"nope\"",
        );
    }

    fn check_schema(text: &str, expect: &str) {
        let got = match Schema::from_toml(text) {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        assert!(got.starts_with(expect), "{got}");
    }

    #[test]
    fn bad_schemas_are_refused() {
        check_schema(TODO, "ok");
        check_schema(
            "version = 1\n[collections.a.fields]\nx = { type = \"ref\", collection = \"b\" }",
            "invalid value for a.x: b (ref to an unknown collection)",
        );
        check_schema(
            "version = 1\n[collections.a.fields]\nx = { type = \"int\", default = \"seven\" }",
            "invalid value for a.x: \"seven\" (default is not a int)",
        );
        check_schema(
            "version = 1\n[collections.a.fields]\nx = { type = \"counter\" }\n[[collections.a.indexes]]\nfield = \"x\"",
            "invalid value for a.x:  (cannot index a counter)",
        );
        check_schema("version = 1\n[collections.a.fields]\nx = { type = \"decimal\" }", "schema error: ");
    }

    fn check_upgrade(new_tail: &str, expect: &str) {
        let old = Schema::from_toml(TODO).unwrap();
        let new_text = TODO.replace("version = 1", "version = 2") + new_tail;
        let got = match Schema::from_toml(&new_text).and_then(|new| old.check_upgrade(&new)) {
            Ok(u) => format!("{u:?}"),
            Err(e) => e.to_string(),
        };
        assert!(got.starts_with(expect), "{got}");
    }

    #[test]
    fn additive_changes_apply_and_breaking_ones_need_a_migration() {
        check_upgrade("", "Unchanged");
        check_upgrade("[collections.note.fields]\nbody = { type = \"string\" }", "Additive");
        check_upgrade(
            "[collections.note.fields]\nbody = { type = \"string\", required = true }",
            "Additive",
        );
        let old = Schema::from_toml(TODO).unwrap();
        let retyped = Schema::from_toml(&TODO.replace("version = 1", "version = 2").replace(
            "due = { type = \"time\" }",
            "due = { type = \"int\" }",
        ))
        .unwrap();
        assert_eq!(
            old.check_upgrade(&retyped).unwrap_err().to_string(),
            "schema error: breaking change: field todo.due changed from time to int needs a migration from version 1"
        );
        let mut migrated = retyped.clone();
        migrated.migrations.push(Migration {
            from: 1,
            steps: vec![MigrationStep::RetypeField { collection: "todo".into(), field: "due".into() }],
        });
        assert!(matches!(old.check_upgrade(&migrated), Ok(Upgrade::Migrated(_))));
        let same_version = Schema::from_toml(&(TODO.to_owned() + "[collections.x.fields]\n")).unwrap();
        assert_eq!(
            old.check_upgrade(&same_version).unwrap_err().to_string(),
            "schema error: schema changed without a new version (still 1)"
        );
    }

    #[test]
    fn json_and_toml_agree() {
        let s = Schema::from_toml(TODO).unwrap();
        assert_eq!(Schema::from_json(&s.to_json()).unwrap(), s);
    }
}
