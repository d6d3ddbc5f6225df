//! How the controllers write their children (`canary_controller::runtime::children`), on the control plane (or the
//! cluster of E2E_KUBECONFIG): a create never takes over an object someone else created first; fields set at
//! creation belong to server-side apply, so a later apply removes those it no longer sets; neither an apply
//! nor a delete touches an object that replaced ours under the same name.

use e2e_support as support;

use canary_controller::runtime::children::{self, Created};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, PostParams};
use kube::core::PartialObjectMeta;
use serde_json::json;
use support::Cluster;

fn config_map(name: &str, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap()
}

#[tokio::test]
async fn a_create_never_takes_over_and_a_delete_never_removes_a_replacement() {
    let cluster = Cluster::start().await;
    let api = cluster.api::<ConfigMap>();

    // someone else got there first: left untouched, reported as AlreadyExists
    let theirs = api.create(&PostParams::default(), &config_map("taken", json!({"who": "them"}))).await.unwrap();
    let result = children::create::<_, ConfigMap>(&api, &config_map("taken", json!({"who": "us"}))).await.unwrap();
    assert!(matches!(result, Created::AlreadyExists));
    let after = api.get("taken").await.unwrap();
    assert_eq!(after.metadata.resource_version, theirs.metadata.resource_version, "their object was written");

    // created by us, then applied without a key: the key goes (the create's fields belong to our apply), also
    // when only the metadata of the answers is read (as the Kanary controller does)
    let Created::Created(ours) =
        children::create::<_, PartialObjectMeta<ConfigMap>>(&api, &config_map("ours", json!({"a": "1", "b": "2"})))
            .await
            .unwrap()
    else {
        panic!("an absent object is created");
    };
    let applied: PartialObjectMeta<ConfigMap> =
        children::apply(&api, &config_map("ours", json!({"a": "1"}))).await.unwrap();
    assert_eq!(applied.metadata.uid, ours.metadata.uid);
    let data = api.get("ours").await.unwrap().data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["a"], "a key the apply no longer sets stayed");

    // replaced under the same name: deleting by the old uid leaves the new object alone
    api.delete("ours", &DeleteParams::default()).await.unwrap();
    support::eventually(10, "ours to be gone", || async { api.get_opt("ours").await.unwrap().is_none() }).await;
    api.create(&PostParams::default(), &config_map("ours", json!({"who": "them"}))).await.unwrap();
    let old_uid = ours.metadata.uid.unwrap();
    assert!(!children::delete(&api, "ours", &old_uid).await.unwrap());
    assert!(api.get_opt("ours").await.unwrap().is_some(), "the replacement was deleted");
    // nor does an apply of what was checked as ours (its uid) take the replacement over
    let replacement = api.get("ours").await.unwrap();
    let mut stale = config_map("ours", json!({"who": "us"}));
    stale.metadata.uid = Some(old_uid.clone());
    let applied = children::apply::<_, ConfigMap>(&api, &stale).await;
    assert!(applied.is_err(), "an apply of the replaced object went through: {applied:?}");
    let after = api.get("ours").await.unwrap();
    assert_eq!(after.metadata.resource_version, replacement.metadata.resource_version, "the replacement was written");
    let new_uid = replacement.metadata.uid.unwrap();
    assert!(children::delete(&api, "ours", &new_uid).await.unwrap());
    cluster.cleanup().await;
}
