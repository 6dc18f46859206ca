//! JSON through the browser's own `JSON` object, for the serving module.
//!
//! The serving module answers status, reads its stored manifests and talks to the data
//! module in JSON, but links no JSON library: `serde_json` and its float formatting
//! were the largest part of its wasm that the serving path never needed. Objects are
//! built as JS values ([`Obj`]) and written with `JSON.stringify`; text is read with
//! `JSON.parse` and walked with the getters here. The data module keeps serde.

use js_sys::{Array, JSON, Object, Reflect};
use wasm_bindgen::JsValue;

/// A JS object under construction.
pub struct Obj(Object);

impl Default for Obj {
    fn default() -> Self {
        Obj::new()
    }
}

impl Obj {
    pub fn new() -> Obj {
        Obj(Object::new())
    }

    /// Sets `key` to `value` (`Option::None` becomes `null`, as serde writes it).
    pub fn set(self, key: &str, value: impl IntoJs) -> Obj {
        let _ = Reflect::set(&self.0, &key.into(), &value.into_js());
        self
    }

    pub fn build(self) -> JsValue {
        self.0.into()
    }
}

/// What [`Obj::set`] takes: strings, numbers, booleans, options of those, JS values.
pub trait IntoJs {
    fn into_js(self) -> JsValue;
}

impl IntoJs for JsValue {
    fn into_js(self) -> JsValue {
        self
    }
}
impl IntoJs for &str {
    fn into_js(self) -> JsValue {
        JsValue::from_str(self)
    }
}
impl IntoJs for String {
    fn into_js(self) -> JsValue {
        JsValue::from_str(&self)
    }
}
impl IntoJs for &String {
    fn into_js(self) -> JsValue {
        JsValue::from_str(self)
    }
}
impl IntoJs for f64 {
    fn into_js(self) -> JsValue {
        JsValue::from_f64(self)
    }
}
impl IntoJs for u64 {
    /// Exact up to 2^53, which no size or count here reaches.
    fn into_js(self) -> JsValue {
        JsValue::from_f64(self as f64)
    }
}
impl IntoJs for usize {
    fn into_js(self) -> JsValue {
        JsValue::from_f64(self as f64)
    }
}
impl IntoJs for u16 {
    fn into_js(self) -> JsValue {
        JsValue::from_f64(self.into())
    }
}
impl IntoJs for bool {
    fn into_js(self) -> JsValue {
        JsValue::from_bool(self)
    }
}
impl<T: IntoJs> IntoJs for Option<T> {
    fn into_js(self) -> JsValue {
        self.map_or(JsValue::NULL, IntoJs::into_js)
    }
}

/// A JS array of `items`.
pub fn array<T: IntoJs>(items: impl IntoIterator<Item = T>) -> JsValue {
    items.into_iter().map(IntoJs::into_js).collect::<Array>().into()
}

/// `JSON.stringify(value)`; "null" for what JSON cannot hold.
pub fn stringify(value: &JsValue) -> String {
    JSON::stringify(value).ok().and_then(|s| s.as_string()).unwrap_or_else(|| "null".into())
}

/// `JSON.parse(text)`, with the parser's message on failure.
pub fn parse(text: &str) -> Result<JsValue, String> {
    JSON::parse(text).map_err(|e| {
        Reflect::get(&e, &"message".into()).ok().and_then(|m| m.as_string()).unwrap_or_else(|| "not JSON".into())
    })
}

/// `value[key]` (`undefined` when `value` is not an object).
pub fn get(value: &JsValue, key: &str) -> JsValue {
    if value.is_object() { Reflect::get(value, &key.into()).unwrap_or(JsValue::UNDEFINED) } else { JsValue::UNDEFINED }
}

/// `value[key]` when it is a string.
pub fn get_str(value: &JsValue, key: &str) -> Option<String> {
    get(value, key).as_string()
}

/// `value[key]` when it is a number.
pub fn get_f64(value: &JsValue, key: &str) -> Option<f64> {
    get(value, key).as_f64()
}

/// `value[key]` when it is a whole number from 0 to 2^53.
pub fn get_u64(value: &JsValue, key: &str) -> Option<u64> {
    get_f64(value, key).filter(|n| n.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(n)).map(|n| n as u64)
}

/// `value[key]` when it is a boolean.
pub fn get_bool(value: &JsValue, key: &str) -> Option<bool> {
    get(value, key).as_bool()
}

/// The items of `value` when it is an array.
pub fn items(value: &JsValue) -> Option<Vec<JsValue>> {
    Array::is_array(value).then(|| Array::from(value).to_vec())
}
