//! Object storage: one bucket per group/resource, a single resourceVersion counter (like etcd's revision),
//! and a bounded history of changes that watches replay from and that a compaction can cut (410 Gone).

use serde_json::Value;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast;

/// How many changes are kept for watches to resume from.
const HISTORY_LIMIT: usize = 100_000;
/// How many changes a slow watcher may fall behind before it is ended with 410 Gone.
const BROADCAST_CAPACITY: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: ChangeType,
    pub bucket: String,
    pub namespace: String,
    /// The object after the change (for deletions: the last state, with the deletion's resourceVersion).
    pub object: Value,
    /// The object before the change, for watches with selectors (an object that stops matching is DELETED).
    pub old: Option<Value>,
}

/// What a watch starts from: the changes to replay, then the live feed.
pub type Subscription = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

pub type Key = (String, String); // (namespace, name); namespace is "" for cluster-scoped objects

pub struct Store {
    rv: u64,
    buckets: BTreeMap<String, BTreeMap<Key, Value>>,
    history: VecDeque<Arc<Change>>,
    /// The oldest resourceVersion a watch may resume from; older ones get 410 Gone.
    compacted: u64,
    tx: broadcast::Sender<Arc<Change>>,
    /// The uids of the stored objects.
    uids: HashSet<String>,
    /// Whether the garbage collector may find work: set by every deletion, by an object stored with an owner
    /// whose uid is not stored, and by an object being deleted; cleared by [`Store::take_collectable`]. The
    /// collector sweeps only then, as the real one works from events, rather than blocking every request
    /// with a sweep of the whole store every second.
    collectable: bool,
}

impl Default for Store {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Store {
            rv: 1,
            buckets: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            tx,
            uids: HashSet::new(),
            collectable: false,
        }
    }
}

fn uid_of(object: &Value) -> Option<&str> {
    object["metadata"]["uid"].as_str()
}

impl Store {
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, bucket: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.buckets.get(bucket)?.get(&(namespace.to_string(), name.to_string()))
    }

    /// Objects of a bucket, optionally of one namespace, ordered by namespace then name.
    pub fn list<'a>(&'a self, bucket: &str, namespace: Option<&'a str>) -> impl Iterator<Item = &'a Value> + 'a {
        let objects = self.buckets.get(bucket);
        let all = objects.filter(|_| namespace.is_none()).into_iter().flat_map(|b| b.values());
        // keys sort by namespace first: one namespace is a range
        let one = namespace.zip(objects).into_iter().flat_map(|(ns, b)| {
            b.range((ns.to_string(), String::new())..).take_while(move |((n, _), _)| n == ns).map(|(_, v)| v)
        });
        all.chain(one)
    }

    /// Whether the garbage collector may find work since it last asked (see `collectable`).
    pub fn take_collectable(&mut self) -> bool {
        std::mem::take(&mut self.collectable)
    }

    /// Every object in every bucket, with its bucket (for the garbage collector).
    pub fn all(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.buckets.iter().flat_map(|(b, objs)| objs.values().map(move |v| (b, v)))
    }

    /// Stores an object (setting its resourceVersion) and notifies watchers. Returns the stored object.
    pub fn put(&mut self, bucket: &str, mut object: Value, kind: ChangeType) -> Value {
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let key = key_of(&object);
        let old = self.buckets.entry(bucket.to_string()).or_default().insert(key.clone(), object.clone());
        if let Some(uid) = old.as_ref().and_then(uid_of).filter(|u| Some(*u) != uid_of(&object)) {
            self.uids.remove(uid);
            self.collectable = true;
        }
        if let Some(uid) = uid_of(&object) {
            self.uids.insert(uid.to_string());
        }
        let metadata = &object["metadata"];
        let orphaned = metadata["ownerReferences"]
            .as_array()
            .is_some_and(|refs| refs.iter().any(|r| !r["uid"].as_str().is_some_and(|u| self.uids.contains(u))));
        self.collectable |= orphaned || metadata.get("deletionTimestamp").is_some();
        self.record(Change { rv, kind, bucket: bucket.into(), namespace: key.0, object: object.clone(), old });
        object
    }

    /// Removes an object and notifies watchers. Returns the removed object as last seen.
    pub fn remove(&mut self, bucket: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (namespace.to_string(), name.to_string());
        let mut old = self.buckets.get_mut(bucket)?.remove(&key)?;
        if let Some(uid) = uid_of(&old) {
            self.uids.remove(uid);
        }
        self.collectable = true;
        self.rv += 1;
        let rv = self.rv;
        let before = old.clone();
        old["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.record(Change {
            rv,
            kind: ChangeType::Deleted,
            bucket: bucket.into(),
            namespace: key.0,
            object: old.clone(),
            old: Some(before),
        });
        Some(old)
    }

    /// Removes a whole bucket (a deleted CRD takes its objects with it).
    pub fn drop_bucket(&mut self, bucket: &str) {
        let keys: Vec<Key> = self.buckets.get(bucket).map(|b| b.keys().cloned().collect()).unwrap_or_default();
        for (ns, name) in keys {
            self.remove(bucket, &ns, &name);
        }
        self.buckets.remove(bucket);
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(c) = self.history.pop_front() {
                self.compacted = c.rv;
            }
        }
        let _ = self.tx.send(change);
    }

    /// Subscribes to changes after `since`: returns the backlog to replay and the live receiver, or None when
    /// `since` is older than the compacted history (the caller answers 410 Gone).
    pub fn subscribe(&self, since: u64) -> Option<Subscription> {
        if since < self.compacted {
            return None;
        }
        let backlog = self.history.iter().filter(|c| c.rv > since).cloned().collect();
        Some((backlog, self.tx.subscribe()))
    }

    /// Forgets the whole history, as an etcd compaction does: watches from any older revision get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }
}

pub fn key_of(object: &Value) -> Key {
    let m = &object["metadata"];
    (m["namespace"].as_str().unwrap_or_default().to_string(), m["name"].as_str().unwrap_or_default().to_string())
}
