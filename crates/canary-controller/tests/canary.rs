//! End-to-end: the real `canary-controller run` on the control plane (or E2E_KUBECONFIG), driven through the
//! API and, for the original project's README session, through real kubectl.

use e2e_support as support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{Cluster, Process, eventually};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/samples");

fn target(name: &str, selector: Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": "nginx"}, "annotations": {"team": "web"}},
        "spec": {"replicas": 2, "selector": selector, "template": {"metadata": {"labels": {"app": "nginx"}}, "spec": {"containers": [
            {"name": "nginx", "image": "nginx:1.15.4"}, {"name": "redis", "image": "redis"}]}}}
    }))
    .unwrap()
}

fn canary(name: &str, target: &str, containers: Value) -> Value {
    json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary", "metadata": {"name": name},
           "spec": {"targetDeploymentName": target, "targetContainers": containers}})
}

struct Env {
    cluster: Cluster,
    /// Kept so that the controller runs as long as the test (it is killed on drop).
    _controller: Process,
    deployments: Api<Deployment>,
    canaries: Api<kube::core::DynamicObject>,
}

async fn env() -> Env {
    env_on(Cluster::start().await).await
}

async fn env_on(cluster: Cluster) -> Env {
    cluster.install_crds().await;
    let mut controller = cluster.spawn_controller();
    controller.wait_for_log("controllers running").await;
    let deployments = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let ar = kube::discovery::ApiResource::erase::<canary_controller::api::canary::Canary>(&());
    let canaries = Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &ar);
    Env { cluster, _controller: controller, deployments, canaries }
}

impl Env {
    /// Target `foo` (nginx:1.15.4 and redis) and Canary `c` running nginx:latest, once its Deployment is there.
    async fn with_running_canary(self) -> Self {
        self.deployments
            .create(&PostParams::default(), &target("foo", json!({"matchLabels": {"app": "nginx"}})))
            .await
            .unwrap();
        self.create_canary(canary("c", "foo", json!([{"name": "nginx", "image": "nginx:latest"}]))).await;
        self.wait_images("foo-canary", &["nginx:latest", "redis"]).await;
        self
    }

    async fn create_canary(&self, c: Value) {
        self.canaries.create(&PostParams::default(), &serde_json::from_value(c).unwrap()).await.unwrap();
    }

    async fn images(&self, name: &str) -> Option<Vec<String>> {
        let d = self.deployments.get_opt(name).await.unwrap()?;
        Some(d.spec.unwrap().template.spec.unwrap().containers.into_iter().map(|c| c.image.unwrap()).collect())
    }

    async fn wait_images(&self, name: &str, expected: &[&str]) {
        let what = format!("{name} to run {expected:?}");
        eventually(10, &what, || async {
            self.images(name).await == Some(expected.iter().map(|s| s.to_string()).collect())
        })
        .await;
    }

    async fn condition(&self, canary: &str, type_: &str) -> Option<(String, String, String)> {
        let c = self.canaries.get(canary).await.unwrap();
        let cond = c.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?.clone();
        Some((cond["status"].as_str()?.into(), cond["reason"].as_str()?.into(), cond["message"].as_str()?.into()))
    }

    async fn wait_condition(&self, canary: &str, type_: &str, status: &str, reason: &str) -> String {
        let what = format!("{canary} condition {type_}={status} ({reason})");
        eventually(10, &what, || async {
            self.condition(canary, type_).await.is_some_and(|(s, r, _)| s == status && r == reason)
        })
        .await;
        self.condition(canary, type_).await.unwrap().2
    }

    async fn warning_events(&self, reason: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.cluster.client.clone(), &self.cluster.namespace);
        let list = events.list(&ListParams::default()).await.unwrap();
        list.items
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
            .map(|e| e.message.unwrap_or_default())
            .collect()
    }
}

/// The kubectl session of the original project's README, unchanged.
#[tokio::test]
async fn the_original_readme_session_works_with_kubectl() {
    let e = env().await;
    let ns = e.cluster.namespace.clone();
    let kubectl = |args: Vec<String>| {
        let cluster = &e.cluster;
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cluster.kubectl(&refs, None).await
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).chain(["-n".to_string(), ns.clone()]).collect::<Vec<_>>();
    let Some(out) = kubectl(args(&["apply", "-f", &format!("{SAMPLES}/target_deployment.yaml")])).await else { return };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl(args(&["apply", "-f", &format!("{SAMPLES}/canary_v1beta1_canary.yaml")])).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "canary.canary.k8s.wantedly.com/canary-sample created");
    e.wait_images("foo-canary", &["nginx:latest", "redis:5.0.5"]).await;

    let out = kubectl(args(&[
        "get",
        "deploy",
        "foo",
        "-o",
        "jsonpath={.spec.template.spec.containers[?(@.name==\"nginx\")].image}",
    ]))
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nginx:1.15.4");
    let out = kubectl(args(&[
        "get",
        "deploy",
        "foo-canary",
        "-o",
        "jsonpath={.spec.template.spec.containers[?(@.name==\"nginx\")].image}",
    ]))
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nginx:latest");
    let out = kubectl(args(&["get", "deploy"])).await.unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(listing.contains("foo ") && listing.contains("foo-canary "), "{listing}");
    let out = kubectl(args(&["get", "canaries"])).await.unwrap();
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "TARGET", "CANARY", "DEPLOYMENT", "READY", "AGE"], "{table}");
    assert!(table.lines().nth(1).unwrap().contains("canary-sample   foo      foo-canary"), "{table}");
    // the original manifests keep the original feature: no release in the status, nothing put in front of
    // the target (no Service, no Kanary)
    let status = e.canaries.get("canary-sample").await.unwrap().data["status"].clone();
    assert!(status.get("release").is_none(), "{status}");
    let types: Vec<&str> = status["conditions"].as_array().unwrap().iter().filter_map(|c| c["type"].as_str()).collect();
    assert!(!types.contains(&"Released") && !types.contains(&"RolledBack"), "{types:?}");
    let services = e.cluster.api::<k8s_openapi::api::core::v1::Service>().list(&Default::default()).await.unwrap();
    assert!(services.items.is_empty(), "{:?}", services.items);
    assert!(e.cluster.kanaries("kanary.k8s.io", "v1").list(&Default::default()).await.unwrap().items.is_empty());

    let out = kubectl(args(&["delete", "-f", &format!("{SAMPLES}/canary_v1beta1_canary.yaml")])).await.unwrap();
    // kubectl 1.37 adds " from NAMESPACE namespace"
    let deleted = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(deleted.starts_with("canary.canary.k8s.wantedly.com \"canary-sample\" deleted"), "{deleted}");
    eventually(10, "foo-canary to be garbage collected", || async {
        e.deployments.get_opt("foo-canary").await.unwrap().is_none()
    })
    .await;
    assert!(e.deployments.get_opt("foo").await.unwrap().is_some());
    e.cluster.cleanup().await;
}

#[tokio::test]
async fn the_canary_deployment_carries_the_canary_marks() {
    let e = env().await.with_running_canary().await;
    let d = e.deployments.get("foo-canary").await.unwrap();
    let labels = d.metadata.labels.clone().unwrap();
    assert_eq!((labels["canary"].as_str(), labels["app"].as_str()), ("true", "nginx"));
    assert_eq!(d.metadata.annotations.clone().unwrap()["team"], "web");
    let owner = &d.metadata.owner_references.clone().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Canary", "c", Some(true)));
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(spec.selector.match_labels.unwrap()["canary"], "true");
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.hostname.as_deref(), Some("canary"));
    for c in pod.containers {
        let env = c.env.unwrap();
        assert_eq!(env.iter().filter(|e| e.name == "CANARY_ENABLED" && e.value.as_deref() == Some("1")).count(), 1);
    }
    // the status is written after the Deployment is applied
    eventually(10, "status.canaryDeployment", || async {
        e.canaries.get("c").await.unwrap().data["status"]["canaryDeployment"] == "foo-canary"
    })
    .await;
    e.cluster.cleanup().await;
}

#[tokio::test]
async fn follows_changes_of_the_canary_and_of_the_target() {
    // (how fast is measured by `cargo bench --bench scale`, not asserted here)
    let e = env().await.with_running_canary().await;

    let patch = json!({"spec": {"targetContainers": [{"name": "nginx", "image": "nginx:1.27"}], "replicas": 1}});
    e.canaries.patch("c", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    e.wait_images("foo-canary", &["nginx:1.27", "redis"]).await;
    assert_eq!(e.deployments.get("foo-canary").await.unwrap().spec.unwrap().replicas, Some(1));

    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "redis", "image": "redis:7"}]}}}});
    e.deployments.patch("foo", &PatchParams::default(), &Patch::Strategic(patch)).await.unwrap();
    e.wait_images("foo-canary", &["nginx:1.27", "redis:7"]).await;
    e.cluster.cleanup().await;
}

#[tokio::test]
async fn a_target_created_later_is_picked_up_and_a_missing_one_is_reported() {
    let e = env().await;
    e.create_canary(canary("c", "foo", json!([{"name": "nginx", "image": "nginx:latest"}]))).await;
    let message = e.wait_condition("c", "Ready", "False", "TargetNotFound").await;
    assert!(message.contains("spec.targetDeploymentName") && message.contains("\"foo\""), "{message}");
    e.wait_condition("c", "TargetFound", "False", "TargetNotFound").await;
    eventually(5, "a TargetNotFound warning event", || async { !e.warning_events("TargetNotFound").await.is_empty() })
        .await;
    assert!(e.deployments.get_opt("foo-canary").await.unwrap().is_none());

    e.deployments
        .create(&PostParams::default(), &target("foo", json!({"matchLabels": {"app": "nginx"}})))
        .await
        .unwrap();
    e.wait_images("foo-canary", &["nginx:latest", "redis"]).await;
    e.wait_condition("c", "TargetFound", "True", "TargetFound").await;
    e.cluster.cleanup().await;
}

#[tokio::test]
async fn an_unknown_container_name_changes_nothing_and_is_reported() {
    let e = env().await;
    e.deployments
        .create(&PostParams::default(), &target("foo", json!({"matchLabels": {"app": "nginx"}})))
        .await
        .unwrap();
    e.create_canary(canary("typo", "foo", json!([{"name": "ngnix", "image": "nginx:latest"}]))).await;
    let message = e.wait_condition("typo", "Ready", "False", "UnknownContainer").await;
    assert!(message.contains("no container named \"ngnix\"") && message.contains("nginx, redis"), "{message}");
    eventually(5, "an UnknownContainer warning event", || async {
        !e.warning_events("UnknownContainer").await.is_empty()
    })
    .await;
    assert!(e.deployments.get_opt("foo-canary").await.unwrap().is_none());

    // a later typo in a working Canary leaves its Deployment as it was
    e.canaries
        .patch(
            "typo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"targetContainers": [{"name": "nginx", "image": "nginx:2"}]}})),
        )
        .await
        .unwrap();
    e.wait_images("foo-canary", &["nginx:2", "redis"]).await;
    e.canaries
        .patch(
            "typo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"targetContainers": [{"name": "nginxx", "image": "nginx:3"}]}})),
        )
        .await
        .unwrap();
    e.wait_condition("typo", "Ready", "False", "UnknownContainer").await;
    assert_eq!(e.images("foo-canary").await.unwrap(), ["nginx:2", "redis"]);
    e.cluster.cleanup().await;
}

#[tokio::test]
async fn a_deployment_we_do_not_own_is_never_touched() {
    let e = env().await;
    e.deployments
        .create(&PostParams::default(), &target("foo", json!({"matchLabels": {"app": "nginx"}})))
        .await
        .unwrap();
    let mut squatter = target("foo-canary", json!({"matchLabels": {"app": "nginx"}}));
    squatter.metadata.labels = Some([("owner".to_string(), "someone".to_string())].into());
    let before = e.deployments.create(&PostParams::default(), &squatter).await.unwrap();
    e.create_canary(canary("c", "foo", json!([{"name": "nginx", "image": "nginx:latest"}]))).await;
    let message = e.wait_condition("c", "Conflict", "True", "DeploymentNotOwned").await;
    assert!(message.contains("\"foo-canary\" already exists"), "{message}");
    e.wait_condition("c", "Ready", "False", "DeploymentNotOwned").await;
    eventually(5, "a DeploymentNotOwned warning event", || async {
        !e.warning_events("DeploymentNotOwned").await.is_empty()
    })
    .await;
    let after = e.deployments.get("foo-canary").await.unwrap();
    assert_eq!(before.metadata.resource_version, after.metadata.resource_version, "the user's Deployment was modified");

    // once the user removes it, the canary takes the name
    e.deployments.delete("foo-canary", &DeleteParams::default()).await.unwrap();
    e.wait_images("foo-canary", &["nginx:latest", "redis"]).await;
    e.wait_condition("c", "Conflict", "False", "NoConflict").await;

    // a second Canary on the same target does not take over the first one's Deployment
    e.create_canary(canary("second", "foo", json!([{"name": "nginx", "image": "nginx:other"}]))).await;
    e.wait_condition("second", "Conflict", "True", "DeploymentNotOwned").await;
    assert_eq!(e.images("foo-canary").await.unwrap(), ["nginx:latest", "redis"]);
    e.cluster.cleanup().await;
}

/// A Canary retargeted from `foo` to `bar` removes `foo-canary` (which it owns), runs `bar-canary`, and says
/// so in a Normal event; a `<target>-canary` it does not own is never removed.
#[tokio::test]
async fn a_retargeted_canary_removes_the_deployment_of_its_previous_target() {
    let e = env().await.with_running_canary().await;
    let mut bar = target("bar", json!({"matchLabels": {"app": "bar"}}));
    bar.spec.as_mut().unwrap().template.metadata.as_mut().unwrap().labels = Some([("app".into(), "bar".into())].into());
    e.deployments.create(&PostParams::default(), &bar).await.unwrap();
    let mut someone_elses = target("baz-canary", json!({"matchLabels": {"app": "nginx"}}));
    someone_elses.metadata.labels = Some([("canary".to_string(), "true".to_string())].into());
    e.deployments.create(&PostParams::default(), &someone_elses).await.unwrap();

    let retarget = json!({"spec": {"targetDeploymentName": "bar"}});
    e.canaries.patch("c", &PatchParams::default(), &Patch::Merge(retarget)).await.unwrap();
    e.wait_images("bar-canary", &["nginx:latest", "redis"]).await;
    let removed = || async { e.deployments.get_opt("foo-canary").await.unwrap().is_none() };
    if !support::within(10, removed).await {
        panic!("foo-canary was not removed:\n{}", e._controller.log());
    }
    let events: Api<Event> = Api::namespaced(e.cluster.client.clone(), &e.cluster.namespace);
    eventually(10, "a PreviousCanaryDeleted event", || async {
        events.list(&ListParams::default()).await.unwrap().items.iter().any(|ev| {
            ev.reason.as_deref() == Some("PreviousCanaryDeleted")
                && ev.message.as_deref().is_some_and(|m| m.contains("\"foo-canary\""))
        })
    })
    .await;
    assert!(e.deployments.get_opt("baz-canary").await.unwrap().is_some(), "a Deployment we do not own was removed");
    assert_eq!(e.images("foo").await.unwrap(), ["nginx:1.15.4", "redis"], "the old target was touched");
    e.cluster.cleanup().await;
}

#[tokio::test]
async fn deleted_canary_deployment_is_recreated_and_deleted_target_is_reported() {
    let e = env().await.with_running_canary().await;
    let first_uid = e.deployments.get("foo-canary").await.unwrap().metadata.uid;
    e.deployments.delete("foo-canary", &DeleteParams::default()).await.unwrap();
    eventually(10, "foo-canary to be recreated", || async {
        e.deployments.get_opt("foo-canary").await.unwrap().is_some_and(|d| d.metadata.uid != first_uid)
    })
    .await;

    e.deployments.delete("foo", &DeleteParams::default()).await.unwrap();
    e.wait_condition("c", "TargetFound", "False", "TargetNotFound").await;
    assert!(
        e.deployments.get_opt("foo-canary").await.unwrap().is_some(),
        "the canary keeps running without its target"
    );
    e.cluster.cleanup().await;
}

#[tokio::test]
async fn status_follows_the_canary_deployment_and_selectors_with_only_expressions_work() {
    let e = env().await;
    let selector = json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["nginx"]}]});
    e.deployments.create(&PostParams::default(), &target("foo", selector)).await.unwrap();
    e.create_canary(canary("c", "foo", json!([{"name": "nginx", "image": "nginx:latest"}]))).await;
    e.wait_images("foo-canary", &["nginx:latest", "redis"]).await;
    e.wait_condition("c", "Ready", "False", "CanaryProgressing").await;
    // the real controllers count the pods a kubelet reports ready
    e.cluster.report_pods_ready("canary=true", 2).await;
    e.wait_condition("c", "Ready", "True", "CanaryReady").await;
    // what a user waits on
    let ns = e.cluster.namespace.clone();
    let wait = ["wait", "--for=condition=Ready", "canary/c", "-n", &ns, "--timeout=30s"];
    if let Some(out) = e.cluster.kubectl(&wait, None).await {
        assert!(out.status.success(), "kubectl wait: {}", String::from_utf8_lossy(&out.stderr));
    }
    let c = e.canaries.get("c").await.unwrap();
    assert_eq!(c.data["status"]["readyReplicas"], 2);
    assert_eq!(c.data["status"]["observedGeneration"], 1);
    e.cluster.cleanup().await;
}

#[tokio::test]
async fn a_canary_that_cannot_be_read_is_reported_and_does_not_stall_the_others() {
    // loosening the CRD would disturb the tests sharing a control plane
    let Some(cluster) = Cluster::start_own().await else { return };
    let e = env_on(cluster).await;
    // a CRD edited by hand (or an older one) lets in a spec the operator cannot read
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(e.cluster.client.clone());
    let loosen = json!([{"op": "replace", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec",
        "value": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}]);
    let patch = Patch::Json::<()>(serde_json::from_value(loosen).unwrap());
    crds.patch("canaries.canary.k8s.wantedly.com", &PatchParams::default(), &patch).await.unwrap();
    e.create_canary(
        json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary", "metadata": {"name": "bad"},
        "spec": {"targetDeploymentName": ["not", "a", "name"], "targetContainers": "nginx"}}),
    )
    .await;

    let e = e.with_running_canary().await;
    let message = e.wait_condition("bad", "Ready", "False", "InvalidSpec").await;
    assert!(
        message.contains("the Canary cannot be read: Invalid type string \"nginx\". Expected a sequence"),
        "{message}"
    );
    assert!(message.contains("kubectl edit canary bad"), "{message}");
    assert!(!e.warning_events("InvalidSpec").await.is_empty());
    assert_eq!(e.deployments.list(&ListParams::default()).await.unwrap().items.len(), 2, "only foo and foo-canary");

    // a release it was running is kept as it was when the Canary is reported (fixing the spec resumes it)
    let release = json!({"revision": "nginx=nginx:2", "phase": "Paused", "step": 1, "weight": 20});
    let written_by_us = json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary",
        "status": {"conditions": [], "release": release}});
    let ours = PatchParams::apply(canary_controller::names::FIELD_MANAGER).force();
    e.canaries.patch_status("bad", &ours, &Patch::Apply(written_by_us)).await.unwrap();
    let request = json!({"metadata": {"annotations": {canary_controller::names::REQUEST_ANNOTATION: "resume"}}});
    e.canaries.patch("bad", &PatchParams::default(), &Patch::Merge(request)).await.unwrap();
    e.wait_condition("bad", "Ready", "False", "InvalidSpec").await;
    let status = e.canaries.get("bad").await.unwrap().data["status"].clone();
    let kept = &status["release"];
    assert_eq!(
        (&kept["phase"], &kept["step"], &kept["weight"]),
        (&release["phase"], &release["step"], &release["weight"])
    );
    e.cluster.cleanup().await;
}

#[tokio::test]
async fn release_fields_the_controller_cannot_act_on_are_refused_by_the_schema_with_the_fix() {
    let e = env().await;
    let with = |steps: Value, metrics: Value| -> kube::core::DynamicObject {
        let mut c = canary("r", "foo", json!([{"name": "nginx", "image": "nginx:2"}]));
        c["spec"]["traffic"] = json!({"service": "foo", "frontService": "foo-front"});
        c["spec"]["steps"] = steps;
        c["spec"]["analysis"] = json!({"metrics": metrics});
        serde_json::from_value(c).unwrap()
    };
    let canaries = &e.canaries;
    let refused = |object: kube::core::DynamicObject| async move {
        match canaries.create(&PostParams::default(), &object).await {
            Err(kube::Error::Api(status)) if status.code == 422 => status.message,
            other => panic!("accepted, or another error: {other:?}"),
        }
    };
    let query = json!({"query": "sum(up)"});
    let both = refused(with(json!([]), json!([{"metric": "errorRate", "prometheus": query, "max": 1}]))).await;
    assert!(both.contains("set exactly one of metric (measured by the proxy) and prometheus"), "{both}");
    let neither = refused(with(json!([]), json!([{"max": 1}]))).await;
    assert!(neither.contains("set exactly one of metric"), "{neither}");
    let relative = refused(with(json!([]), json!([{"prometheus": query, "maxOverStable": 1}]))).await;
    assert!(relative.contains("maxOverStable and maxBelowStable compare the proxy's routes"), "{relative}");
    let unbounded = refused(with(json!([]), json!([{"metric": "errorRate"}]))).await;
    assert!(unbounded.contains("a metric check needs a bound"), "{unbounded}");
    let two_kinds = refused(with(json!([{"setWeight": 10, "analysis": {}}]), json!([]))).await;
    assert!(two_kinds.contains("a step has exactly one of setWeight, pause, analysis"), "{two_kinds}");
    let plain_url =
        refused(with(json!([]), json!([{"prometheus": {"query": "up", "address": "prometheus:9090"}, "max": 1}])))
            .await;
    assert!(plain_url.contains("address"), "{plain_url}");
    // outgoing calls and windows have a maximum (a slow peer must not hold the controller; a window's
    // samples are bounded)
    let mut long_window = with(json!([]), json!([]));
    long_window.data["spec"]["analysis"]["interval"] = json!("2h");
    let long_window = refused(long_window).await;
    assert!(long_window.contains("analysis.interval: at most 1h"), "{long_window}");
    let slow_hook = refused(with(json!([{"webhook": {"url": "http://gate/", "timeout": "10m"}}]), json!([]))).await;
    assert!(slow_hook.contains("webhook.timeout: at most 60s"), "{slow_hook}");
    let slow_query = json!([{"prometheus": {"query": "up", "timeout": "2m"}, "max": 1}]);
    let slow_query = refused(with(json!([]), slow_query)).await;
    assert!(slow_query.contains("prometheus.timeout: at most 60s"), "{slow_query}");
    let long_query = refused(with(json!([]), json!([{"prometheus": {"query": "x".repeat(5000)}, "max": 1}]))).await;
    assert!(long_query.contains("query"), "{long_query}");
    let with_query_string = json!([{"prometheus": {"query": "up", "address": "http://p:9090/-/quit?"}, "max": 1}]);
    let with_query_string = refused(with(json!([]), with_query_string)).await;
    assert!(with_query_string.contains("address"), "{with_query_string}");
    let with_baseline = |steps: Value, max_weight: Value| {
        let mut c = with(steps, json!([]));
        c.data["spec"]["traffic"]["baseline"] = json!(true);
        c.data["spec"]["analysis"]["maxWeight"] = max_weight;
        c
    };
    let over_half = refused(with_baseline(json!([{"setWeight": 60}]), json!(50))).await;
    assert!(over_half.contains("spec.traffic.baseline") && over_half.contains("at most 50"), "{over_half}");
    let short_form = refused(with_baseline(json!([]), json!(60))).await;
    assert!(short_form.contains("at most 50"), "{short_form}");
    let mut fine = with_baseline(json!([{"setWeight": 50}]), json!(50));
    fine.metadata.name = Some("with-baseline".into());
    e.canaries.create(&PostParams::default(), &fine).await.expect("a baseline with weights up to 50 is accepted");
    // HTTP checks: a percentile only for requestDuration, no stable comparison for a query
    let percentile = refused(with(json!([]), json!([{"metric": "errorRate", "max": 1, "percentile": 99}]))).await;
    assert!(percentile.contains("percentile is the percentile of metric requestDuration"), "{percentile}");
    let below = refused(with(json!([]), json!([{"prometheus": query, "maxBelowStable": 1}]))).await;
    assert!(below.contains("maxBelowStable compare the proxy's routes"), "{below}");
    // cohorts and overrides need HTTP traffic (a TCP proxy has no request to route)
    for routing in [json!({"sticky": true}), json!({"header": "x-canary"})] {
        let mut tcp = with(json!([]), json!([]));
        for (field, value) in routing.as_object().unwrap() {
            tcp.data["spec"]["traffic"][field] = value.clone();
        }
        let tcp = refused(tcp).await;
        assert!(tcp.contains("header and sticky route HTTP requests: set protocol to http"), "{tcp}");
    }
    for example in ["release.yml", "release-baseline.yml", "http-release.yml"] {
        let path = format!("{}/../../examples/{example}", env!("CARGO_MANIFEST_DIR"));
        let applied = e.cluster.kubectl(&["apply", "--dry-run=server", "-f", &path], None).await;
        let applied = applied.expect("kubectl runs");
        assert!(applied.status.success(), "examples/{example}: {}", String::from_utf8_lossy(&applied.stderr));
    }
    e.canaries
        .create(&PostParams::default(), &with(json!([]), json!([{"prometheus": query, "max": 1, "onNoData": "Fail"}])))
        .await
        .expect("a PromQL check with a bound is accepted");
    e.cluster.cleanup().await;
}
