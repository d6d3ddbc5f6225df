//! A real kube-rs `Controller` (with `.owns()`) running against fake-apiserver: it reacts to creates, updates
//! and deletes through watches, and keeps reacting after its watches expire (410 Gone) and after the API
//! server restarts.

use fake_apiserver::FakeApiServer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Greeting", namespaced)]
struct GreetingSpec {
    message: String,
}

/// Writes the greeting's message into a ConfigMap it owns.
async fn reconcile(g: Arc<Greeting>, client: Arc<Client>) -> Result<Action, kube::Error> {
    let cms: Api<ConfigMap> = Api::namespaced((*client).clone(), &g.namespace().unwrap());
    let owner = g.controller_owner_ref(&()).unwrap();
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": g.name_any(), "ownerReferences": [owner]},
        "data": {"message": g.spec.message},
    });
    cms.patch(&g.name_any(), &PatchParams::apply("greeter").force(), &Patch::Apply(cm)).await?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<Greeting>, _: &kube::Error, _: Arc<Client>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

async fn message_of(cms: &Api<ConfigMap>, name: &str) -> Option<String> {
    cms.get_opt(name).await.ok().flatten().and_then(|c| c.data).and_then(|d| d.get("message").cloned())
}

async fn wait_for(cms: &Api<ConfigMap>, name: &str, expected: Option<&str>, what: &str) {
    for _ in 0..150 {
        if message_of(cms, name).await.as_deref() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}: {:?}", message_of(cms, name).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_reacts_through_watches_and_survives_expiry_and_restart() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Greeting::crd()).await.unwrap();
    let greetings: Api<Greeting> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let controller = Controller::new(greetings.clone(), watcher::Config::default())
        .owns(cms.clone(), watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(client.clone()))
        .for_each(|_| async {});
    let task = tokio::spawn(controller);

    let hello = Greeting::new("hello", GreetingSpec { message: "hi".into() });
    greetings.create(&PostParams::default(), &hello).await.unwrap();
    wait_for(&cms, "hello", Some("hi"), "the owned ConfigMap after create").await;

    let set = |m: &str| Patch::Merge(serde_json::json!({"spec": {"message": m}}));
    greetings.patch("hello", &PatchParams::default(), &set("updated")).await.unwrap();
    wait_for(&cms, "hello", Some("updated"), "the ConfigMap after an update").await;

    // .owns(): deleting the child triggers a reconcile of its owner, which recreates it
    cms.delete("hello", &DeleteParams::default()).await.unwrap();
    wait_for(&cms, "hello", Some("updated"), "the ConfigMap recreated after deletion").await;

    // watches expire (410 Gone): the controller relists and keeps going
    server.state().expire_watches();
    greetings.patch("hello", &PatchParams::default(), &set("after-410")).await.unwrap();
    wait_for(&cms, "hello", Some("after-410"), "a change after the watches expired").await;

    // the API server restarts: connections drop, the controller reconnects
    server.restart().await.unwrap();
    greetings.patch("hello", &PatchParams::default(), &set("after-restart")).await.unwrap();
    wait_for(&cms, "hello", Some("after-restart"), "a change after a restart").await;

    // deleting the owner removes the child through garbage collection
    greetings.delete("hello", &DeleteParams::default()).await.unwrap();
    wait_for(&cms, "hello", None, "garbage collection of the ConfigMap").await;
    task.abort();
}
