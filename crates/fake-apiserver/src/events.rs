//! `events.k8s.io/v1` and core `v1` Events are one resource in two shapes, as on a real server: stored in the
//! core shape, converted on the way in and out (`regarding` <-> `involvedObject`, `note` <-> `message`...).

use serde_json::{Map, Value};

const PAIRS: &[(&str, &str)] = &[
    // (events.k8s.io/v1 field, core/v1 field)
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &Value, from_new: bool, api_version: &str) -> Value {
    let mut out = Map::new();
    for (k, v) in obj.as_object().into_iter().flatten() {
        let renamed = PAIRS
            .iter()
            .find(|(new, core)| if from_new { new == k } else { core == k })
            .map(|(new, core)| if from_new { *core } else { *new })
            .unwrap_or(k);
        out.insert(renamed.to_string(), v.clone());
    }
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    Value::Object(out)
}

/// An events.k8s.io/v1 Event in the stored (core v1) shape.
pub fn to_core(event: &Value) -> Value {
    let mut core = rename(event, true, "v1");
    if core.get("source").is_none()
        && let Some(c) = core.get("reportingComponent").cloned()
    {
        core["source"] = serde_json::json!({"component": c});
    }
    core
}

/// A stored Event in the events.k8s.io/v1 shape.
pub fn from_core(event: &Value) -> Value {
    rename(event, false, "events.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip() {
        let e = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
                       "regarding": {"name": "x"}, "note": "hello", "reason": "Created", "reportingController": "c"});
        let core = to_core(&e);
        assert_eq!(core["involvedObject"]["name"], "x");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["source"]["component"], "c");
        assert_eq!(from_core(&core)["note"], "hello");
    }
}
