//! Decodes Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) of the built-in kinds
//! into the JSON objects the rest of the server handles. kubectl sends them for its generator commands
//! (`kubectl create deployment|service|configmap|secret|namespace|serviceaccount|role...`, `kubectl run`).
//!
//! A body is the magic `k8s\0` and a `runtime.Unknown` (type meta and the raw message). The raw message is
//! decoded by the table in `schema` (generated from k8s-pb's tags and k8s-openapi's JSON names): fields
//! become their JSON names, embedded Go structs (`json:",inline"`) are flattened, and the types with a JSON
//! form of their own (Time, IntOrString, Quantity, RawExtension...) are written in that form. A field the
//! table does not know is an error, never dropped.

#[rustfmt::skip]
mod schema;

use base64::Engine;
use serde_json::{Map, Value, json};

pub struct Message {
    pub name: &'static str,
    pub fields: &'static [Field],
}

pub struct Field {
    pub tag: u32,
    pub json: &'static str,
    pub kind: Kind,
    pub label: Label,
    /// Embedded in Go with `json:",inline"`: its fields are written into the parent object.
    pub inline: bool,
}

#[derive(Clone, Copy)]
pub enum Kind {
    String,
    Bool,
    Int,
    Double,
    Float,
    /// base64 in JSON
    Bytes,
    Message(&'static str),
    Time,
    MicroTime,
    Duration,
    /// a message whose bytes field 1 holds JSON (RawExtension, FieldsV1)
    RawJson,
    IntOrString,
    Quantity,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Label {
    Optional,
    Repeated,
    Map,
}

/// How a zero Go time.Time decodes.
const ZERO_TIME: &str = "1970-01-01T00:00:00Z";

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

/// Decodes a protobuf request body into a JSON object with `apiVersion` and `kind`.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body.strip_prefix(MAGIC).ok_or("a protobuf body starts with the magic \"k8s\\0\"")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for entry in Reader::new(envelope) {
        match entry? {
            (1, Wire::Bytes(type_meta)) => {
                for e in Reader::new(type_meta) {
                    match e? {
                        (1, Wire::Bytes(v)) => api_version = utf8(v)?,
                        (2, Wire::Bytes(v)) => kind = utf8(v)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(bytes)) => raw = Some(bytes),
            (3, Wire::Bytes(encoding)) if !encoding.is_empty() => {
                return Err(format!("contentEncoding {:?} is not supported", utf8(encoding)?));
            }
            _ => {}
        }
    }
    let (_, _, message) = schema::ROOTS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
        .ok_or_else(|| format!("fake-apiserver does not decode protobuf bodies of {api_version} {kind}; send JSON"))?;
    let mut object = Map::new();
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    if let Value::Object(fields) = decode_message(raw.unwrap_or_default(), message)? {
        object.extend(fields);
    }
    Ok(Value::Object(object))
}

fn message(name: &str) -> Result<&'static Message, String> {
    schema::MESSAGES.iter().find(|m| m.name == name).ok_or_else(|| format!("no protobuf message {name}"))
}

fn decode_message(bytes: &[u8], name: &str) -> Result<Value, String> {
    let message = message(name)?;
    let mut out = Map::new();
    for entry in Reader::new(bytes) {
        let (tag, wire) = entry?;
        let field = message
            .fields
            .iter()
            .find(|f| f.tag == tag)
            .ok_or_else(|| format!("{name}: field {tag} is not known to fake-apiserver"))?;
        match field.label {
            Label::Optional if field.inline => {
                if let Value::Object(inner) = decode_value(field.kind, wire)? {
                    out.extend(inner);
                }
            }
            Label::Optional => {
                // Go's protobuf code writes non-pointer fields even when zero; an empty string or a zero
                // time is an unset field (JSON omits them), a 0 or false is kept (pointers set to zero mean it)
                let value = decode_value(field.kind, wire)?;
                let unset = value == json!("") || (matches!(field.kind, Kind::Time) && value == json!(ZERO_TIME));
                if !unset {
                    out.insert(field.json.into(), value);
                }
            }
            Label::Repeated => {
                let list = out.entry(field.json).or_insert_with(|| json!([]));
                let items = list.as_array_mut().expect("a list");
                match (field.kind, wire) {
                    // packed scalars
                    (Kind::Int | Kind::Bool, Wire::Bytes(packed)) => {
                        let mut rest = packed;
                        while !rest.is_empty() {
                            let (v, n) = varint(rest)?;
                            items.push(scalar(field.kind, v));
                            rest = &rest[n..];
                        }
                    }
                    (kind, wire) => items.push(decode_value(kind, wire)?),
                }
            }
            Label::Map => {
                let Wire::Bytes(entry) = wire else { return Err(format!("{name}.{}: a map entry", field.json)) };
                let (mut key, mut value) = (String::new(), None);
                for e in Reader::new(entry) {
                    match e? {
                        (1, Wire::Bytes(k)) => key = utf8(k)?,
                        (2, v) => value = Some(decode_value(field.kind, v)?),
                        _ => {}
                    }
                }
                let value = value.unwrap_or_else(|| empty(field.kind));
                let map = out.entry(field.json).or_insert_with(|| json!({}));
                map.as_object_mut().expect("a map").insert(key, value);
            }
        }
    }
    Ok(Value::Object(out))
}

/// The value of a map entry whose value was not written (the type's zero value).
fn empty(kind: Kind) -> Value {
    match kind {
        Kind::String | Kind::Bytes | Kind::Quantity => json!(""),
        Kind::Bool => json!(false),
        Kind::Int => json!(0),
        Kind::Double | Kind::Float => json!(0.0),
        _ => json!({}),
    }
}

fn scalar(kind: Kind, v: u64) -> Value {
    match kind {
        Kind::Bool => json!(v != 0),
        _ => json!(v as i64),
    }
}

fn decode_value(kind: Kind, wire: Wire) -> Result<Value, String> {
    Ok(match (kind, wire) {
        (Kind::Int | Kind::Bool, Wire::Varint(v)) => scalar(kind, v),
        (Kind::Double, Wire::Fixed64(v)) => json!(f64::from_bits(v)),
        (Kind::Float, Wire::Fixed32(v)) => json!(f32::from_bits(v) as f64),
        (Kind::String, Wire::Bytes(b)) => json!(utf8(b)?),
        (Kind::Bytes, Wire::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        (Kind::Message(name), Wire::Bytes(b)) => decode_message(b, name)?,
        (Kind::Time | Kind::MicroTime, Wire::Bytes(b)) => {
            let (seconds, nanos) = (varint_field(b, 1)? as i64, varint_field(b, 2)? as u32);
            let time = chrono::DateTime::from_timestamp(seconds, nanos).ok_or("a time out of range")?;
            let format = if matches!(kind, Kind::Time) { "%Y-%m-%dT%H:%M:%SZ" } else { "%Y-%m-%dT%H:%M:%S%.6fZ" };
            json!(time.format(format).to_string())
        }
        (Kind::Duration, Wire::Bytes(b)) => json!(go_duration(varint_field(b, 1)? as i64)),
        (Kind::RawJson, Wire::Bytes(b)) => match bytes_field(b, 1)? {
            [] => json!({}),
            raw => serde_json::from_slice(raw).map_err(|e| e.to_string())?,
        },
        (Kind::IntOrString, Wire::Bytes(b)) => match varint_field(b, 1)? {
            1 => json!(utf8(bytes_field(b, 3)?)?),
            _ => json!(varint_field(b, 2)? as i64 as i32 as i64),
        },
        (Kind::Quantity, Wire::Bytes(b)) => json!(utf8(bytes_field(b, 1)?)?),
        _ => return Err("a field of an unexpected wire type".into()),
    })
}

/// The varint field `tag` of a message (its last occurrence; 0, the protobuf default, when absent).
fn varint_field(message: &[u8], tag: u32) -> Result<u64, String> {
    let mut value = 0;
    for entry in Reader::new(message) {
        if let (t, Wire::Varint(v)) = entry?
            && t == tag
        {
            value = v;
        }
    }
    Ok(value)
}

/// The length-delimited field `tag` of a message (its last occurrence; empty when absent).
fn bytes_field(message: &[u8], tag: u32) -> Result<&[u8], String> {
    let mut value: &[u8] = &[];
    for entry in Reader::new(message) {
        if let (t, Wire::Bytes(b)) = entry?
            && t == tag
        {
            value = b;
        }
    }
    Ok(value)
}

/// Go's time.Duration text for whole seconds or milliseconds (`90s` is written `1m30s`).
fn go_duration(nanos: i64) -> String {
    if nanos % 1_000_000_000 != 0 {
        return format!("{}ms", nanos / 1_000_000);
    }
    let s = nanos / 1_000_000_000;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, sec) => format!("{h}h{m}m{sec}s"),
    }
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string field is not UTF-8".to_string())
}

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

fn varint(b: &[u8]) -> Result<(u64, usize), String> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err("a truncated varint".into())
}

/// The (tag, value) entries of a protobuf message.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn next_entry(&mut self) -> Result<(u32, Wire<'a>), String> {
        let (key, n) = varint(self.rest)?;
        self.rest = &self.rest[n..];
        let take = |rest: &mut &'a [u8], len: usize| -> Result<&'a [u8], String> {
            if rest.len() < len {
                return Err("a truncated field".into());
            }
            let (value, tail) = rest.split_at(len);
            *rest = tail;
            Ok(value)
        };
        let wire = match key & 7 {
            0 => {
                let (v, n) = varint(self.rest)?;
                self.rest = &self.rest[n..];
                Wire::Varint(v)
            }
            1 => Wire::Fixed64(u64::from_le_bytes(take(&mut self.rest, 8)?.try_into().expect("8 bytes"))),
            2 => {
                let (len, n) = varint(self.rest)?;
                self.rest = &self.rest[n..];
                Wire::Bytes(take(&mut self.rest, len as usize)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(take(&mut self.rest, 4)?.try_into().expect("4 bytes"))),
            other => return Err(format!("wire type {other} is not supported")),
        };
        Ok(((key >> 3) as u32, wire))
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<(u32, Wire<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let entry = self.next_entry();
        if entry.is_err() {
            self.rest = &[];
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let field = |tag: u8, bytes: &[u8]| [&[tag << 3 | 2, bytes.len() as u8][..], bytes].concat();
        let type_meta = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
        [MAGIC, &field(1, &type_meta), &field(2, raw)].concat()
    }

    #[test]
    fn decodes_a_config_map_and_refuses_what_it_does_not_know() {
        // ConfigMap { metadata: { name: "c", namespace: "" }, data: { "k": "v" } }
        let metadata = [&[10, 1][..], b"c", &[26, 0]].concat();
        let entry = [&[10, 1][..], b"k", &[18, 1], b"v"].concat();
        let raw = [&[10, metadata.len() as u8][..], &metadata, &[18, entry.len() as u8], &entry].concat();
        let object = decode(&envelope("v1", "ConfigMap", &raw)).unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}})
        );

        assert!(decode(&raw).unwrap_err().contains("magic"));
        assert!(decode(&envelope("v1", "Widget", &raw)).unwrap_err().contains("v1 Widget"));
        let unknown_field = [&raw[..], &[200, 1, 0]].concat(); // field 25, varint 0
        assert!(decode(&envelope("v1", "ConfigMap", &unknown_field)).unwrap_err().contains("field 25"));
    }
}
