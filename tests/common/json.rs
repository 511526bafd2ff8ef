//! Normalising etcdctl JSON so that two outputs compare equal exactly when they agree on
//! everything except what legitimately differs between two clusters (ids, terms, sizes, timings,
//! URLs).

use serde_json::Value;

/// Replaces the value of every field named in `names`, at any depth, by the marker string
/// `"<name>"`: whether the field is present still counts, its value no longer does. Only number
/// and string values are masked, so a field name shared with a different meaning elsewhere is
/// left alone when its value has another type.
pub fn mask_fields(value: &mut Value, names: &[&str]) {
    mask_where(value, &|name, v| {
        names.contains(&name) && (v.is_number() || v.is_string())
    });
}

/// Like [`mask_fields`], but only string values (etcd's `Status.version` is a string, while the
/// `version` of a key-value is a number that must still compare).
pub fn mask_string_fields(value: &mut Value, names: &[&str]) {
    mask_where(value, &|name, v| names.contains(&name) && v.is_string());
}

fn mask_where(value: &mut Value, mask: &dyn Fn(&str, &Value) -> bool) {
    match value {
        Value::Object(map) => {
            for (name, field) in map.iter_mut() {
                if mask(name, field) {
                    *field = Value::String(format!("<{name}>"));
                } else {
                    mask_where(field, mask);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| mask_where(item, mask)),
        _ => {}
    }
}

/// Replaces `from` by `to` inside every string value, at any depth (e.g. endpoint URLs).
pub fn replace_in_strings(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(text) if text.contains(from) => *text = text.replace(from, to),
        Value::Object(map) => map
            .values_mut()
            .for_each(|field| replace_in_strings(field, from, to)),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| replace_in_strings(item, from, to)),
        _ => {}
    }
}

/// The shape of a document: the same objects and arrays, every leaf replaced by its JSON type.
/// Two outputs of the same request on different data have the same shape when they have the
/// same fields.
pub fn shape(value: &Value) -> Value {
    match value {
        Value::Null => Value::String("null".into()),
        Value::Bool(_) => Value::String("bool".into()),
        Value::Number(_) => Value::String("number".into()),
        Value::String(_) => Value::String("string".into()),
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(name, field)| (name.clone(), shape(field)))
                .collect(),
        ),
    }
}

/// `value[path...]` as a u64, panicking with the document if absent.
#[track_caller]
pub fn u64_at(value: &Value, path: &[&str]) -> u64 {
    let mut at = value;
    for step in path {
        at = &at[*step];
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("no unsigned number at {path:?} in {value}"))
}
