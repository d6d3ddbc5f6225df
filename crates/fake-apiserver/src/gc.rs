//! The garbage collector, run asynchronously after deletions as the real one is: an object all of whose
//! owners (by uid) are gone is deleted (background propagation); an owner being deleted in the foreground
//! (`foregroundDeletion` finalizer) has its dependents deleted first and goes once they are gone.

use crate::objects::{DeleteOptions, Inner, owned_by};
use serde_json::Value;
use std::collections::HashSet;

/// One pass; returns whether anything changed (the caller runs passes until nothing does).
pub fn sweep(inner: &mut Inner) -> bool {
    let uids: HashSet<String> =
        inner.store.all().filter_map(|(_, o)| o["metadata"]["uid"].as_str().map(String::from)).collect();
    let mut orphans = vec![];
    let mut foreground = vec![];
    for (bucket, o) in inner.store.all() {
        let refs = o["metadata"]["ownerReferences"].as_array();
        if let Some(refs) = refs.filter(|r| !r.is_empty()) {
            let alive = refs.iter().any(|r| r["uid"].as_str().is_some_and(|u| uids.contains(u)));
            if !alive && o["metadata"].get("deletionTimestamp").is_none() {
                orphans.push((bucket.clone(), o.clone()));
            }
        }
        let deleting = o["metadata"].get("deletionTimestamp").is_some();
        let fg = o["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|x| x == "foregroundDeletion"));
        if deleting && fg {
            foreground.push((bucket.clone(), o.clone()));
        }
    }
    let mut changed = false;
    for (bucket, o) in orphans {
        changed |= delete(inner, &bucket, &o, "Background");
    }
    for (bucket, owner) in foreground {
        let uid = owner["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let dependents: Vec<(String, Value)> =
            inner.store.all().filter(|(_, o)| owned_by(o, &uid)).map(|(b, o)| (b.clone(), o.clone())).collect();
        if dependents.is_empty() {
            let mut done = owner.clone();
            if let Some(f) = done["metadata"]["finalizers"].as_array_mut() {
                f.retain(|x| x != "foregroundDeletion");
            }
            let rt = type_for_bucket(inner, &bucket);
            if let Some(rt) = rt {
                let _ = inner.write_update(
                    &rt,
                    &crate::objects::present(&rt, &owner),
                    crate::objects::present(&rt, &done),
                    false,
                    false,
                    &crate::objects::WriteOptions::by("garbage-collector"),
                );
                changed = true;
            }
        } else {
            for (b, d) in dependents {
                if d["metadata"].get("deletionTimestamp").is_none() {
                    changed |= delete(inner, &b, &d, "Foreground");
                }
            }
        }
    }
    changed
}

fn type_for_bucket(inner: &Inner, bucket: &str) -> Option<std::sync::Arc<crate::registry::ResourceType>> {
    inner.registry.all().find(|t| t.bucket == bucket && t.group != "events.k8s.io").cloned()
}

fn delete(inner: &mut Inner, bucket: &str, o: &Value, policy: &str) -> bool {
    let Some(rt) = type_for_bucket(inner, bucket) else { return false };
    let ns = o["metadata"]["namespace"].as_str();
    let name = o["metadata"]["name"].as_str().unwrap_or_default();
    let opts = DeleteOptions { propagation: Some(policy.into()), ..Default::default() };
    inner.delete(&rt, ns, name, &opts).is_ok()
}
