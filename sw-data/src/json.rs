//! Values and records as the page API's JSON shows them.

use serde_json::{Value as J, json};
use stead_core::ids::RecordId;
use stead_core::ops::{BlobRef, Value};
use stead_core::schema::{FieldType, Schema};
use stead_core::state::{FieldValue, RecordState};

/// A JSON value as a field value: by the schema's type when the field is declared,
/// otherwise by the JSON type (integers are `int`, other numbers `float`).
pub fn to_value(schema: Option<&Schema>, collection: &str, field: &str, j: &J) -> Result<Value, String> {
    if let Some(def) = schema.and_then(|s| s.field(collection, field)) {
        let ty = match &def.ty {
            FieldType::Set { of } => FieldType::from(*of),
            other => other.clone(),
        };
        if j.is_null() {
            return Ok(Value::Null);
        }
        if matches!(ty, FieldType::Blob) {
            return blob(j).ok_or_else(|| format!("{collection}.{field}: {j} is not a blob reference"));
        }
        return ty.from_json(j).ok_or_else(|| format!("{collection}.{field}: {j} is not a {ty:?} value"));
    }
    Ok(match j {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Str(s.clone()),
        other => return Err(format!("{collection}.{field}: {other} is not a scalar value")),
    })
}

fn blob(j: &J) -> Option<Value> {
    let sha256 = hex::decode(j.get("sha256")?.as_str()?).ok()?.try_into().ok()?;
    let size = j.get("size")?.as_u64()?;
    let mime = j.get("mime").and_then(J::as_str).unwrap_or("application/octet-stream").to_owned();
    Some(Value::Blob(Box::new(BlobRef { sha256, size, mime })))
}

pub fn from_value(v: &Value) -> J {
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) | Value::Time(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Str(s) => J::String(s.clone()),
        Value::Ref(r) => J::String(r.to_string()),
        Value::Blob(b) => json!({"sha256": hex::encode(b.sha256), "size": b.size, "mime": b.mime}),
    }
}

/// `{"id", "version", "fields": {...}}`; fields the schema declares with a default show it.
pub fn record(schema: Option<&Schema>, collection: &str, id: RecordId, rec: &RecordState) -> J {
    let mut fields = serde_json::Map::new();
    if let Some(coll) = schema.and_then(|s| s.collections.get(collection)) {
        for (name, def) in &coll.fields {
            if let Some(d) = &def.default {
                fields.insert(name.clone(), d.clone());
            }
        }
    }
    for (name, slot) in &rec.fields {
        let v = match slot.view() {
            FieldValue::Value(v) => from_value(&v),
            FieldValue::Counter(n) => json!(n),
            FieldValue::Set(items) => J::Array(items.iter().map(from_value).collect()),
        };
        fields.insert(name.clone(), v);
    }
    json!({"id": id.to_string(), "version": rec.version.to_string(), "fields": fields})
}
