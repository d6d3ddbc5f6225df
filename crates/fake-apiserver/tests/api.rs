//! API semantics of fake-apiserver, driven through kube-rs as an operator would drive a real API server.

use fake_apiserver::FakeApiServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use std::time::Duration;

fn cm(name: &str, labels: Value, data: Value) -> ConfigMap {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": data}),
    )
    .unwrap()
}

/// A client that sends `token` (registered or not).
async fn client_with_token(server: &FakeApiServer, token: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_with_token(token)).unwrap();
    kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap()).unwrap()
}

fn api_err(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn create_get_update_with_optimistic_concurrency() {
    let server = FakeApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let created = cms.create(&PostParams::default(), &cm("a", json!({}), json!({"k": "v"}))).await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let (code, _) = api_err(cms.create(&PostParams::default(), &cm("a", json!({}), json!({}))).await.unwrap_err());
    assert_eq!(code, 409);

    let mut first = cms.get("a").await.unwrap();
    let mut second = first.clone();
    first.data = Some([("k".to_string(), "v1".to_string())].into());
    cms.replace("a", &PostParams::default(), &first).await.unwrap();
    second.data = Some([("k".to_string(), "v2".to_string())].into());
    let (code, msg) = api_err(cms.replace("a", &PostParams::default(), &second).await.unwrap_err());
    assert_eq!(code, 409);
    assert!(msg.contains("the object has been modified"), "{msg}");

    // a uid that is not the stored object's: the object was replaced, the write is refused
    let mut stale = cms.get("a").await.unwrap();
    stale.metadata.uid = Some("another-uid".into());
    stale.metadata.resource_version = None;
    let (code, msg) = api_err(cms.replace("a", &PostParams::default(), &stale).await.unwrap_err());
    assert!(code == 409 && msg.contains("Precondition failed: UID in precondition: another-uid"), "{msg}");
    let (code, _) = api_err(
        cms.delete(
            "a",
            &DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some("another-uid".into()),
                    resource_version: None,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 409);

    let (code, _) = api_err(cms.get("missing").await.unwrap_err());
    assert_eq!(code, 404);
    let in_missing_ns: Api<ConfigMap> = Api::namespaced(server.client(), "nope");
    let (code, msg) =
        api_err(in_missing_ns.create(&PostParams::default(), &cm("a", json!({}), json!({}))).await.unwrap_err());
    assert_eq!((code, msg.as_str()), (404, "namespaces \"nope\" not found"));
}

#[tokio::test]
async fn a_write_that_changes_nothing_keeps_the_resource_version() {
    let server = FakeApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PatchParams::apply("test");
    let a = cms.patch("a", &pp, &Patch::Apply(cm("a", json!({}), json!({"k": "v"})))).await.unwrap();
    let b = cms.patch("a", &pp, &Patch::Apply(cm("a", json!({}), json!({"k": "v"})))).await.unwrap();
    assert_eq!(a.metadata.resource_version, b.metadata.resource_version);
}

#[tokio::test]
async fn list_with_label_and_field_selectors_and_pages() {
    let server = FakeApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    for (name, tier) in [("a", "front"), ("b", "back"), ("c", "front"), ("d", "db")] {
        cms.create(&PostParams::default(), &cm(name, json!({"tier": tier, "app": "x"}), json!({}))).await.unwrap();
    }
    cms.create(&PostParams::default(), &cm("e", json!({}), json!({}))).await.unwrap();
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        l.items.into_iter().map(|c| c.metadata.name.unwrap()).collect::<Vec<_>>()
    };
    let sel = |s: &str| ListParams::default().labels(s);
    assert_eq!(names(cms.list(&sel("tier=front")).await.unwrap()), ["a", "c"]);
    assert_eq!(names(cms.list(&sel("tier!=front")).await.unwrap()), ["b", "d", "e"]);
    assert_eq!(names(cms.list(&sel("tier in (back,db)")).await.unwrap()), ["b", "d"]);
    assert_eq!(names(cms.list(&sel("tier notin (back,db),app")).await.unwrap()), ["a", "c"]);
    assert_eq!(names(cms.list(&sel("!app")).await.unwrap()), ["e"]);
    assert_eq!(names(cms.list(&ListParams::default().fields("metadata.name=d")).await.unwrap()), ["d"]);

    let page1 = cms.list(&ListParams::default().limit(2)).await.unwrap();
    let token = page1.metadata.continue_.clone().expect("a continue token");
    assert_eq!(names(page1), ["a", "b"]);
    let page2 = cms.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    let token2 = page2.metadata.continue_.clone().expect("a continue token");
    assert_eq!(names(page2), ["c", "d"]);
    let page3 = cms.list(&ListParams::default().limit(2).continue_token(&token2)).await.unwrap();
    assert!(page3.metadata.continue_.is_none());
    assert_eq!(names(page3), ["e"]);
}

#[tokio::test]
async fn delete_collection_honours_label_and_field_selectors() {
    let server = FakeApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    for (name, tier) in [("a", "front"), ("b", "front"), ("c", "back")] {
        cms.create(&PostParams::default(), &cm(name, json!({"tier": tier}), json!({}))).await.unwrap();
    }
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("tier=front").fields("metadata.name=a"),
    )
    .await
    .unwrap();
    let left: Vec<String> =
        cms.list(&ListParams::default()).await.unwrap().items.into_iter().map(|c| c.metadata.name.unwrap()).collect();
    assert_eq!(left, ["b", "c"]);
    cms.delete_collection(&DeleteParams::default(), &ListParams::default().labels("tier=front")).await.unwrap();
    let left: Vec<String> =
        cms.list(&ListParams::default()).await.unwrap().items.into_iter().map(|c| c.metadata.name.unwrap()).collect();
    assert_eq!(left, ["c"]);
}

#[tokio::test]
async fn watch_replays_from_a_resource_version_and_expires_with_410() {
    let server = FakeApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let a = cms.create(&PostParams::default(), &cm("a", json!({"w": "yes"}), json!({}))).await.unwrap();
    let rv = a.metadata.resource_version.clone().unwrap();
    cms.create(&PostParams::default(), &cm("b", json!({}), json!({}))).await.unwrap();
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"x": "1"}}))).await.unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();

    let mut stream = cms.watch(&WatchParams::default().labels("w=yes").timeout(5), &rv).await.unwrap().boxed();
    let mut seen = vec![];
    while let Some(ev) = stream.try_next().await.unwrap() {
        match ev {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => seen.push(format!("MODIFIED {}", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.metadata.name.unwrap())),
            _ => {}
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, ["MODIFIED a", "DELETED a"]);

    server.state().expire_watches();
    let mut stream = cms.watch(&WatchParams::default().timeout(5), &rv).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test]
async fn server_side_apply_prunes_omitted_fields_and_reports_conflicts() {
    let server = FakeApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mine = PatchParams::apply("me");
    cms.patch("a", &mine, &Patch::Apply(cm("a", json!({"l": "1"}), json!({"keep": "1", "drop": "2"})))).await.unwrap();
    let after = cms.patch("a", &mine, &Patch::Apply(cm("a", json!({}), json!({"keep": "1"})))).await.unwrap();
    assert_eq!(after.data.unwrap().keys().collect::<Vec<_>>(), ["keep"]);
    assert!(after.metadata.labels.unwrap_or_default().is_empty());

    let theirs = PatchParams::apply("someone-else");
    let (code, msg) =
        api_err(cms.patch("a", &theirs, &Patch::Apply(cm("a", json!({}), json!({"keep": "2"})))).await.unwrap_err());
    assert_eq!(code, 409);
    assert!(msg.contains("conflict with \"me\""), "{msg}");
    let forced =
        cms.patch("a", &theirs.clone().force(), &Patch::Apply(cm("a", json!({}), json!({"keep": "2"})))).await.unwrap();
    assert_eq!(forced.data.unwrap()["keep"], "2");

    // a resourceVersion in the applied configuration is a precondition (optimistic lock)
    let stale = forced.metadata.resource_version.clone().unwrap();
    cms.patch("a", &mine.clone().force(), &Patch::Apply(cm("a", json!({}), json!({"keep": "3"})))).await.unwrap();
    let mut locked = cm("a", json!({}), json!({"keep": "4"}));
    locked.metadata.resource_version = Some(stale);
    let (code, msg) = api_err(cms.patch("a", &mine.clone().force(), &Patch::Apply(locked)).await.unwrap_err());
    assert!(code == 409 && msg.contains("has been modified"), "{code} {msg}");

    // a field edited by another manager survives when the applier stops applying it
    let d: Api<Deployment> = Api::namespaced(server.client(), "default");
    let dep = |containers: Value| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
               "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": containers}}}})
    };
    d.patch("d", &mine, &Patch::Apply(dep(json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]))))
        .await
        .unwrap();
    let applied = d.patch("d", &mine, &Patch::Apply(dep(json!([{"name": "b", "image": "b:2"}])))).await.unwrap();
    let images: Vec<String> =
        applied.spec.unwrap().template.spec.unwrap().containers.into_iter().map(|c| c.image.unwrap()).collect();
    assert_eq!(images, ["b:2"]);
}

fn widget_crd(group: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "shortNames": ["wd"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"],
                             "x-kubernetes-validations": [{"rule": "self.size <= 10", "message": "size must be at most 10"}],
                             "properties": {"size": {"type": "integer"}, "color": {"type": "string", "default": "blue"}}},
                    "status": {"type": "object", "properties": {"seen": {"type": "integer"}}}
                }}}
            }]
        }
    })
}

async fn install_widgets(server: &FakeApiServer) -> Api<DynamicObject> {
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    crds.create(&PostParams::default(), &serde_json::from_value(widget_crd("example.com")).unwrap()).await.unwrap();
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Widget"), "widgets");
    Api::namespaced_with(server.client(), "default", &ar)
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

#[tokio::test]
async fn crd_schemas_validate_prune_default_and_run_cel_rules() {
    let server = FakeApiServer::start().await.unwrap();
    let widgets = install_widgets(&server).await;
    let w = widgets.create(&PostParams::default(), &widget("w", json!({"size": 3, "unknown": true}))).await.unwrap();
    assert_eq!(w.data["spec"], json!({"size": 3, "color": "blue"}), "pruned and defaulted");

    let (code, msg) =
        api_err(widgets.create(&PostParams::default(), &widget("big", json!({"size": 11}))).await.unwrap_err());
    assert_eq!(code, 422);
    assert!(msg.contains("size must be at most 10"), "{msg}");
    let (code, msg) =
        api_err(widgets.create(&PostParams::default(), &widget("bad", json!({"size": "x"}))).await.unwrap_err());
    assert_eq!(code, 422);
    assert!(msg.contains("spec.size") && msg.contains("must be of type integer"), "{msg}");
    let (code, msg) = api_err(widgets.create(&PostParams::default(), &widget("none", json!({}))).await.unwrap_err());
    assert_eq!(code, 422);
    assert!(msg.contains("spec.size: Required value"), "{msg}");

    // a CRD in a protected group needs the approval annotation, as on a real server
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    let (code, msg) = api_err(
        crds.create(&PostParams::default(), &serde_json::from_value(widget_crd("x.k8s.io")).unwrap())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(msg.contains("api-approved.kubernetes.io"), "{msg}");
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let server = FakeApiServer::start().await.unwrap();
    let widgets = install_widgets(&server).await;
    let mut w = widget("w", json!({"size": 1}));
    w.data["status"] = json!({"seen": 5});
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert!(created.data.get("status").is_none(), "status is ignored on create");
    assert_eq!(created.metadata.generation, Some(1));

    let with_status = widgets
        .patch_status("w", &PatchParams::default(), &Patch::Merge(json!({"status": {"seen": 1}, "spec": {"size": 9}})))
        .await
        .unwrap();
    assert_eq!(with_status.data["status"]["seen"], 1);
    assert_eq!(with_status.data["spec"]["size"], 1, "the status endpoint ignores spec");
    assert_eq!(with_status.metadata.generation, Some(1), "status changes do not bump generation");

    let relabelled = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}, "status": {"seen": 7}})),
        )
        .await
        .unwrap();
    assert_eq!(relabelled.metadata.generation, Some(1), "metadata changes do not bump generation");
    assert_eq!(relabelled.data["status"]["seen"], 1, "the main endpoint ignores status");
    let resized =
        widgets.patch("w", &PatchParams::default(), &Patch::Merge(json!({"spec": {"size": 2}}))).await.unwrap();
    assert_eq!(resized.metadata.generation, Some(2));
}

#[tokio::test]
async fn garbage_collection_and_finalizers() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner = cms.create(&PostParams::default(), &cm("owner", json!({}), json!({}))).await.unwrap();
    let owned_by = |name: &str| {
        let mut c = cm(name, json!({}), json!({}));
        c.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().unwrap(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        c
    };
    cms.create(&PostParams::default(), &owned_by("child")).await.unwrap();
    let mut held = owned_by("held");
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();

    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    eventually("the dependent is collected", || async { cms.get_opt("child").await.unwrap().is_none() }).await;
    // a dependent with a finalizer is only marked for deletion until the finalizer goes
    let marked = cms.get("held").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    cms.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert!(cms.get_opt("held").await.unwrap().is_none());

    // foreground propagation: the owner stays (deletionTimestamp, foregroundDeletion) until its dependents are gone
    let owner = cms.create(&PostParams::default(), &cm("owner", json!({}), json!({}))).await.unwrap();
    let mut slow = owned_by("slow");
    slow.metadata.owner_references.as_mut().unwrap()[0].uid = owner.metadata.uid.clone().unwrap();
    slow.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &slow).await.unwrap();
    cms.delete("owner", &DeleteParams::foreground()).await.unwrap();
    eventually("the dependent is being deleted", || async {
        cms.get("slow").await.unwrap().metadata.deletion_timestamp.is_some()
    })
    .await;
    let waiting = cms.get("owner").await.unwrap();
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert_eq!(waiting.metadata.finalizers, Some(vec!["foregroundDeletion".to_string()]));
    cms.patch("slow", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    eventually("the owner goes after its dependent", || async { cms.get_opt("owner").await.unwrap().is_none() }).await;

    // orphan propagation keeps dependents and removes the owner reference
    let owner = cms.create(&PostParams::default(), &cm("owner", json!({}), json!({}))).await.unwrap();
    let mut orphan = owned_by("orphan");
    orphan.metadata.owner_references.as_mut().unwrap()[0].uid = owner.metadata.uid.clone().unwrap();
    cms.create(&PostParams::default(), &orphan).await.unwrap();
    cms.delete("owner", &DeleteParams::orphan()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.state().gc_pass_completed()).await.unwrap();
    let kept = cms.get("orphan").await.unwrap();
    assert!(kept.metadata.owner_references.unwrap_or_default().is_empty());

    // an object whose owner is not there (never was, or is gone already) is collected too
    let mut dangling = owned_by("dangling");
    dangling.metadata.owner_references.as_mut().unwrap()[0].uid = "no-such-uid".into();
    cms.create(&PostParams::default(), &dangling).await.unwrap();
    eventually("the object without its owner is collected", || async {
        cms.get_opt("dangling").await.unwrap().is_none()
    })
    .await;
}

/// As on a real API server: a Pod bound to a node is only marked by a delete (its kubelet has its grace
/// period to stop it) and goes with a delete of grace 0; an unbound Pod goes at once.
#[tokio::test]
async fn deleting_a_bound_pod_is_graceful() {
    let server = FakeApiServer::start().await.unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(server.client(), "default");
    let pod = |name: &str, node: Option<&str>| {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 45, "containers": [{"name": "c", "image": "i"}]}}))
        .unwrap()
    };
    pods.create(&PostParams::default(), &pod("bound", Some("node-1"))).await.unwrap();
    pods.create(&PostParams::default(), &pod("unbound", None)).await.unwrap();
    pods.delete("bound", &DeleteParams::default()).await.unwrap();
    let marked = pods.get("bound").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(45));
    pods.delete("bound", &DeleteParams::default().grace_period(0)).await.unwrap();
    assert!(pods.get_opt("bound").await.unwrap().is_none());
    pods.delete("unbound", &DeleteParams::default()).await.unwrap();
    assert!(pods.get_opt("unbound").await.unwrap().is_none());
}

#[tokio::test]
async fn injected_faults_and_request_counters() {
    let server = FakeApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    server.state().fail_next(1, 500, None);
    let (code, _) = api_err(cms.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(code, 500);
    // kube-rs retries a 429 after Retry-After by itself: the list succeeds on the second request
    server.state().fail_next(1, 429, Some(1));
    cms.list(&ListParams::default()).await.unwrap();
    cms.get_opt("x").await.unwrap();
    let counters = server.counters();
    assert_eq!(counters.get("list configmaps"), Some(&3), "failed requests are counted too: {counters:?}");
    assert_eq!(counters.get("get configmaps"), Some(&1));
}

#[tokio::test]
async fn events_are_served_in_both_apis() {
    let server = FakeApiServer::start().await.unwrap();
    let new_api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(server.client(), "default");
    let ev: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "Created", "note": "made it",
        "type": "Normal", "action": "Create", "reportingController": "test", "reportingInstance": "test-1",
        "regarding": {"kind": "ConfigMap", "name": "a", "namespace": "default", "uid": "u1"}
    }))
    .unwrap();
    new_api.create(&PostParams::default(), &ev).await.unwrap();
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(server.client(), "default");
    let listed = core.list(&ListParams::default().fields("involvedObject.uid=u1")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].message.as_deref(), Some("made it"));
}

#[tokio::test]
async fn rbac_enforcement_allows_what_roles_grant_and_denies_the_rest_like_the_real_server() {
    let server = FakeApiServer::start().await.unwrap();
    let admin = server.client();
    let rbac = &server.state().rbac;
    rbac.add_token("t", "system:serviceaccount:team:app", &[]);
    let as_app = client_with_token(&server, "t").await;
    let apply = |v: Value| async {
        let kind = v["kind"].as_str().unwrap().to_string();
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", &kind));
        let api: Api<DynamicObject> = match v["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(admin.clone(), ns, &ar),
            None => Api::all_with(admin.clone(), &ar),
        };
        let name = v["metadata"]["name"].as_str().unwrap().to_string();
        api.patch(&name, &PatchParams::apply("t"), &Patch::Apply(v)).await.unwrap();
    };
    apply(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "cm-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"]}]}),
    )
    .await;
    // bound in namespace "default" only, to a service account given without namespace (the binding's)
    apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "b", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cm-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": "team"}]}))
    .await;
    Api::<ConfigMap>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &cm("one", json!({}), json!({})))
        .await
        .unwrap();

    // off: everything is allowed, and recorded
    let app_cms: Api<ConfigMap> = Api::namespaced(as_app.clone(), "default");
    app_cms.list(&ListParams::default()).await.unwrap();
    rbac.set_enforce(true);
    app_cms.get("one").await.unwrap();
    let (code, message) = api_err(app_cms.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "configmaps is forbidden: User \"system:serviceaccount:team:app\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );
    let elsewhere: Api<ConfigMap> = Api::namespaced(as_app.clone(), "kube-system");
    assert_eq!(api_err(elsewhere.get_opt("one").await.unwrap_err()).0, 403);
    // an apply on an existing object needs patch; one that creates needs create as well
    let pp = PatchParams::apply("app");
    app_cms.patch("one", &pp, &Patch::Apply(cm("one", json!({}), json!({"a": "b"})))).await.unwrap();
    let (code, message) =
        api_err(app_cms.patch("two", &pp, &Patch::Apply(cm("two", json!({}), json!({})))).await.unwrap_err());
    assert_eq!(code, 403);
    assert!(message.contains("cannot create resource \"configmaps\""), "{message}");
    // the admin (no token) is never checked; an unknown token is 401
    Api::<ConfigMap>::namespaced(admin.clone(), "kube-system").list(&ListParams::default()).await.unwrap();
    let stranger = client_with_token(&server, "nope").await;
    assert_eq!(api_err(Api::<ConfigMap>::all(stranger).list(&ListParams::default()).await.unwrap_err()).0, 401);

    let usage: Vec<String> =
        rbac.usage("system:serviceaccount:team:app").iter().map(|u| format!("{} {}", u.verb, u.resource)).collect();
    assert_eq!(usage, ["create configmaps", "get configmaps", "list configmaps", "patch configmaps"]);
}

/// A Role with `resourceNames` grants a list or watch only when it selects that one name
/// (`fieldSelector=metadata.name=X`), as the real server authorizes it.
#[tokio::test]
async fn resource_names_grant_list_and_watch_of_one_name_by_field_selector() {
    let server = FakeApiServer::start().await.unwrap();
    let admin = server.client();
    let rbac = &server.state().rbac;
    rbac.add_token("t", "system:serviceaccount:default:agent", &[]);
    let as_agent = client_with_token(&server, "t").await;
    let rbac_api = |kind: &str| {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind));
        Api::<DynamicObject>::namespaced_with(admin.clone(), "default", &ar)
    };
    let pp = PatchParams::apply("t");
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r", "namespace": "default"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"], "resourceNames": ["mine"]}]});
    rbac_api("Role").patch("r", &pp, &Patch::Apply(role)).await.unwrap();
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "r", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent"}]});
    rbac_api("RoleBinding").patch("r", &pp, &Patch::Apply(binding)).await.unwrap();
    let admin_cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    for name in ["mine", "other"] {
        admin_cms.create(&PostParams::default(), &cm(name, json!({}), json!({}))).await.unwrap();
    }
    rbac.set_enforce(true);
    let cms: Api<ConfigMap> = Api::namespaced(as_agent, "default");
    cms.get("mine").await.unwrap();
    let mine = cms.list(&ListParams::default().fields("metadata.name=mine")).await.unwrap();
    assert_eq!(mine.items.len(), 1);
    let mut watch = cms.watch(&WatchParams::default().fields("metadata.name=mine"), "0").await.unwrap().boxed();
    assert!(matches!(watch.try_next().await.unwrap(), Some(WatchEvent::Added(_))));
    assert_eq!(api_err(cms.get("other").await.unwrap_err()).0, 403);
    assert_eq!(api_err(cms.list(&ListParams::default()).await.unwrap_err()).0, 403);
    assert_eq!(api_err(cms.list(&ListParams::default().fields("metadata.name=other")).await.unwrap_err()).0, 403);
    let also_namespace = ListParams::default().fields("metadata.name=mine,metadata.namespace=default");
    assert_eq!(cms.list(&also_namespace).await.unwrap().items.len(), 1);
    assert_eq!(api_err(cms.list(&ListParams::default().fields("metadata.name!=other")).await.unwrap_err()).0, 403);
}

#[tokio::test]
async fn a_status_apply_records_its_owner_and_removes_only_what_that_manager_stopped_applying() {
    let server = FakeApiServer::start().await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(server.client(), "default");
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    deployments.patch("d", &PatchParams::apply("owner"), &Patch::Apply(deployment)).await.unwrap();
    let status = |value: Value| Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "status": value}));
    deployments.patch_status("d", &PatchParams::apply("one"), &status(json!({"replicas": 1}))).await.unwrap();
    deployments.patch_status("d", &PatchParams::apply("two"), &status(json!({"readyReplicas": 1}))).await.unwrap();
    let d = deployments.get("d").await.unwrap();
    let managers: Vec<_> = d.metadata.managed_fields.unwrap().into_iter().filter_map(|e| e.manager).collect();
    assert!(managers.contains(&"one".to_string()) && managers.contains(&"two".to_string()), "{managers:?}");
    // manager one applies without its field: removed; two's stays
    deployments.patch_status("d", &PatchParams::apply("one"), &status(json!({}))).await.unwrap();
    let s = deployments.get("d").await.unwrap().status.unwrap();
    assert_eq!((s.replicas, s.ready_replicas), (None, Some(1)));
}

#[tokio::test]
async fn a_user_may_grant_only_what_it_holds_unless_it_may_escalate_or_bind() {
    let server = FakeApiServer::start().await.unwrap();
    let admin = server.client();
    let rbac = &server.state().rbac;
    rbac.add_token("t", "system:serviceaccount:default:writer", &[]);
    let as_writer = client_with_token(&server, "t").await;
    let rbac_api = |client: &kube::Client, kind: &str| {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind));
        Api::<DynamicObject>::namespaced_with(client.clone(), "default", &ar)
    };
    let pp = PatchParams::apply("t");
    let role = |name: &str, rules: Value| json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name, "namespace": "default"}, "rules": rules});
    let binding = |name: &str, role: &str, subject: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name, "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": subject}]})
    };
    // the writer may write roles and bindings, and read ConfigMaps (not write them)
    let writer_rules = json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]);
    rbac_api(&admin, "Role").patch("writer", &pp, &Patch::Apply(role("writer", writer_rules))).await.unwrap();
    rbac_api(&admin, "RoleBinding")
        .patch("writer", &pp, &Patch::Apply(binding("writer", "writer", "writer")))
        .await
        .unwrap();
    let powerful = json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["delete"]}]);
    rbac_api(&admin, "Role").patch("powerful", &pp, &Patch::Apply(role("powerful", powerful.clone()))).await.unwrap();
    rbac.set_enforce(true);

    // what it holds (reading one ConfigMap): granted, by a role and a binding of its own
    let reader =
        json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"], "verbs": ["get", "watch"]}]);
    let roles = rbac_api(&as_writer, "Role");
    roles.patch("reader", &pp, &Patch::Apply(role("reader", reader))).await.unwrap();
    let bindings = rbac_api(&as_writer, "RoleBinding");
    bindings.patch("reader", &pp, &Patch::Apply(binding("reader", "reader", "agent"))).await.unwrap();
    // what it does not hold: neither a role granting it nor a binding to a role that has it
    let err = api_err(roles.patch("deleter", &pp, &Patch::Apply(role("deleter", powerful))).await.unwrap_err());
    assert_eq!(err.0, 403);
    assert!(err.1.contains("attempting to grant RBAC permissions not currently held"), "{}", err.1);
    assert!(err.1.contains("delete"), "{}", err.1);
    let err = api_err(bindings.patch("p", &pp, &Patch::Apply(binding("p", "powerful", "agent"))).await.unwrap_err());
    assert_eq!(err.0, 403, "{}", err.1);
    assert!(rbac_api(&admin, "Role").get_opt("deleter").await.unwrap().is_none(), "a refused role was stored");
    // with `bind` on that role, the binding is allowed
    rbac.set_enforce(false);
    let bind = json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "resourceNames": ["powerful"], "verbs": ["bind"]}]);
    rbac_api(&admin, "Role").patch("binder", &pp, &Patch::Apply(role("binder", bind))).await.unwrap();
    rbac_api(&admin, "RoleBinding")
        .patch("binder", &pp, &Patch::Apply(binding("binder", "binder", "writer")))
        .await
        .unwrap();
    rbac.set_enforce(true);
    bindings.patch("p", &pp, &Patch::Apply(binding("p", "powerful", "agent"))).await.unwrap();
}

#[tokio::test]
async fn a_token_request_returns_a_token_that_authenticates_as_the_service_account() {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let server = FakeApiServer::start().await.unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(server.client(), "default");
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).unwrap();
    // no such ServiceAccount: 404, as on a real server
    let missing = accounts.create_token_request("app", &PostParams::default(), &request).await.unwrap_err();
    assert_eq!(api_err(missing).0, 404);
    accounts
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap())
        .await
        .unwrap();
    let answer = accounts.create_token_request("app", &PostParams::default(), &request).await.unwrap();
    let token = answer.status.expect("a status with the token").token;
    assert!(!token.is_empty());

    // the token is the ServiceAccount: with RBAC on and no role, it may read nothing
    server.state().rbac.set_enforce(true);
    let as_app = client_with_token(&server, &token).await;
    let (code, message) =
        api_err(Api::<ConfigMap>::namespaced(as_app, "default").list(&ListParams::default()).await.unwrap_err());
    assert_eq!(code, 403);
    assert!(message.contains("User \"system:serviceaccount:default:app\" cannot list"), "{message}");
}

#[tokio::test]
async fn metadata_only_requests_get_partial_object_metadata() {
    use kube::core::PartialObjectMeta;
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("one", json!({"a": "b"}), json!({"big": "x".repeat(1000)}))).await.unwrap();
    let accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
    let request = axum::http::Request::get("/api/v1/namespaces/default/configmaps").header("accept", accept);
    let text = client.request_text(request.body(vec![]).unwrap()).await.unwrap();
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["kind"], "PartialObjectMetadataList");
    assert_eq!(list["items"][0]["kind"], "PartialObjectMetadata");
    assert_eq!(list["items"][0]["metadata"]["labels"]["a"], "b");
    assert!(!text.contains("xxxx"), "the data was sent: {text}");

    // kube-rs's metadata API and watcher
    let meta: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client.clone(), "default");
    assert_eq!(meta.get("one").await.unwrap().metadata.labels.unwrap()["a"], "b");
    let mut events = meta.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    match events.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("one")),
        other => panic!("expected ADDED, got {other:?}"),
    }
}

/// A real API server refuses two controller owner references; applying over an object owned by another
/// controller therefore fails instead of giving it two controllers.
#[tokio::test]
async fn at_most_one_owner_reference_is_the_controller() {
    let server = FakeApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let owner = |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": format!("uid-{name}"), "controller": true});
    let mut two = cm("two", json!({}), json!({}));
    two.metadata.owner_references = Some(serde_json::from_value(json!([owner("a"), owner("b")])).unwrap());
    let (code, message) = api_err(cms.create(&PostParams::default(), &two).await.unwrap_err());
    assert_eq!(code, 422);
    assert!(message.contains("Only one reference can have Controller set to true"), "{message}");

    let mut one = cm("one", json!({}), json!({}));
    one.metadata.owner_references = Some(serde_json::from_value(json!([owner("a")])).unwrap());
    cms.create(&PostParams::default(), &one).await.unwrap();
    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"ownerReferences": [owner("b")]}});
    let (code, _) =
        api_err(cms.patch("one", &PatchParams::apply("other").force(), &Patch::Apply(second)).await.unwrap_err());
    assert_eq!(code, 422);
}
