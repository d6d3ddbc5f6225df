//! Which custom resources refer to an object by name: a Kanary to its destination and backend Services, a
//! Canary to its target and its canary Deployment. Kept up to date from the custom resources' own watch
//! events, so that an event about a Service, an EndpointSlice or a Deployment finds the objects to reconcile
//! with one lookup, without reading (or parsing) every custom resource.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::runtime::watcher::Event;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// A namespace and a name.
type Key = (String, String);

/// What an object refers to: names in its namespace.
type RefersTo<K> = dyn Fn(&K) -> Vec<String> + Send + Sync;

/// Objects of kind `K` by the names (in their namespace) they refer to.
pub struct References<K> {
    /// The names an object refers to.
    refers_to: Box<RefersTo<K>>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// referred name -> names of the objects referring to it, sorted (a sorted `Vec`: most hold one name, and
    /// a `BTreeSet` allocates a node of eleven for it, measured: half of the index's memory)
    referrers: HashMap<Key, Vec<String>>,
    /// object -> the names it refers to
    referred: HashMap<Key, Vec<String>>,
    /// the objects seen since a relist started (the others are gone once it ends)
    relisted: Option<HashSet<Key>>,
}

impl Inner {
    fn remove(&mut self, object: &Key) {
        for name in self.referred.remove(object).unwrap_or_default() {
            let key = (object.0.clone(), name);
            if let Some(set) = self.referrers.get_mut(&key) {
                set.retain(|n| *n != object.1);
                if set.is_empty() {
                    self.referrers.remove(&key);
                }
            }
        }
    }

    fn insert(&mut self, object: Key, names: Vec<String>) {
        self.remove(&object);
        if names.is_empty() {
            // most objects of a cache refer to nothing (an unlabelled Service): not even an entry
            return;
        }
        for name in &names {
            let set = self.referrers.entry((object.0.clone(), name.clone())).or_default();
            if let Err(at) = set.binary_search(&object.1) {
                set.insert(at, object.1.clone());
            }
        }
        self.referred.insert(object, names);
    }
}

impl<K: kube::Resource> References<K> {
    pub fn new(refers_to: impl Fn(&K) -> Vec<String> + Send + Sync + 'static) -> Self {
        References { refers_to: Box::new(refers_to), inner: Mutex::default() }
    }

    /// Updates the index with an event of the custom resources' watch.
    pub fn apply(&self, event: &Event<K>) {
        let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
        let mut inner = self.inner.lock().expect("index lock");
        match event {
            Event::Apply(o) => inner.insert(key(o), (self.refers_to)(o)),
            Event::Delete(o) => inner.remove(&key(o)),
            Event::Init => inner.relisted = Some(HashSet::new()),
            Event::InitApply(o) => {
                let names = (self.refers_to)(o);
                if let Some(seen) = inner.relisted.as_mut().filter(|_| !names.is_empty()) {
                    seen.insert(key(o));
                }
                inner.insert(key(o), names);
            }
            Event::InitDone => {
                let seen = inner.relisted.take().unwrap_or_default();
                let gone: Vec<Key> = inner.referred.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                for object in gone {
                    inner.remove(&object);
                }
            }
        }
    }

    /// The names of the objects an event about `object` matters to: its controller, when `is_owner` says the
    /// controller is of this kind (unless the event is the `echo` of that controller's own write: it tells
    /// the controller nothing new), and the objects that refer to `referred` in its namespace.
    pub fn woken_by(
        &self,
        object: &impl kube::Resource,
        referred: Option<&str>,
        is_owner: impl Fn(&OwnerReference) -> bool,
        echo: bool,
    ) -> Vec<String> {
        let ns = object.namespace().unwrap_or_default();
        let owner = object.owner_references().iter().find(|r| r.controller == Some(true) && is_owner(r));
        let mut names = referred.map(|name| self.referring_to(&ns, name)).unwrap_or_default();
        names.extend(owner.map(|r| r.name.clone()));
        names.sort();
        names.dedup();
        if let Some(owner) = owner.filter(|_| echo) {
            names.retain(|n| *n != owner.name);
        }
        names
    }

    /// The names of the objects of namespace `ns` that refer to `name`.
    pub fn referring_to(&self, ns: &str, name: &str) -> Vec<String> {
        let inner = self.inner.lock().expect("index lock");
        inner.referrers.get(&(ns.to_string(), name.to_string())).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    /// A ConfigMap stands for a custom resource: it refers to the names listed in its data.
    fn object(name: &str, refers_to: &[&str]) -> ConfigMap {
        let data = refers_to.iter().map(|r| (r.to_string(), String::new())).collect();
        ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        }
    }

    fn index() -> References<ConfigMap> {
        References::new(|c: &ConfigMap| c.data.iter().flatten().map(|(k, _)| k.clone()).collect())
    }

    #[test]
    fn lookups_follow_changes_deletions_and_relists() {
        let index = index();
        index.apply(&Event::Apply(object("a", &["s1", "s2"])));
        index.apply(&Event::Apply(object("b", &["s2"])));
        assert_eq!(index.referring_to("ns", "s2"), ["a", "b"]);
        assert_eq!(index.referring_to("other", "s2"), Vec::<String>::new(), "namespaced");

        index.apply(&Event::Apply(object("a", &["s3"])));
        assert_eq!(index.referring_to("ns", "s1"), Vec::<String>::new(), "a no longer refers to s1");
        assert_eq!(index.referring_to("ns", "s3"), ["a"]);

        index.apply(&Event::Delete(object("b", &["s2"])));
        assert_eq!(index.referring_to("ns", "s2"), Vec::<String>::new());

        // a relist that no longer has a: a is gone once it ends
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(object("c", &["s3"])));
        assert_eq!(index.referring_to("ns", "s3"), ["a", "c"], "a is kept until the relist ends");
        index.apply(&Event::InitDone);
        assert_eq!(index.referring_to("ns", "s3"), ["c"]);
    }
}
