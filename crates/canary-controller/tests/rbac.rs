//! Least privilege, proven on the real API server (its RBAC authorizer decides; its audit log says what the
//! controller's service account did): the controller, holding only the roles of config/rbac, does everything
//! it is for (leader election, Canaries, Kanaries of both groups with their proxy agents' identities, a
//! changed destination, repairs, repeated events), and every verb on every resource those roles grant was
//! used, by a request or by granting it to the agents' Roles (a Role may grant only what its creator holds:
//! `get` of ConfigMaps is held for that alone).

use e2e_support as support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeSet;
use support::eventually;
use support::kanary::env;

/// (verb, group, resource) for every combination a role file's rules grant.
fn granted(file: &str) -> BTreeSet<(String, String, String)> {
    let path = format!("{}/../../config/rbac/{file}", env!("CARGO_MANIFEST_DIR"));
    let role: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((verb, group.clone(), resource.clone()));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn the_controller_works_with_its_roles_and_uses_every_grant() {
    let e = env().await;
    if e.cluster.controller_requests().is_none() {
        e2e_support::tools::skip_unsupported("what the controller requested is known on the tests' control plane");
        return;
    }
    let ns = e.cluster.namespace.clone();

    // Canary: created, then updated twice the same way (the repeated event is patched, not created again)
    let deployments: Api<Deployment> = e.cluster.api();
    let target = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}});
    deployments.create(&PostParams::default(), &serde_json::from_value(target).unwrap()).await.unwrap();
    let canaries = Api::<kube::core::DynamicObject>::namespaced_with(
        e.cluster.client.clone(),
        &ns,
        &kube::discovery::ApiResource::erase::<canary_controller::api::canary::Canary>(&()),
    );
    for image in ["web:2", "web:3", "web:4"] {
        let canary = json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary", "metadata": {"name": "c"},
            "spec": {"targetDeploymentName": "web", "targetContainers": [{"name": "web", "image": image}]}});
        canaries.patch("c", &PatchParams::apply("e2e").force(), &Patch::Apply(canary)).await.unwrap();
        eventually(10, &format!("web-canary runs {image}"), || async {
            let d = deployments.get_opt("web-canary").await.unwrap();
            d.and_then(|d| d.spec?.template.spec?.containers.first()?.image.clone()).as_deref() == Some(image)
        })
        .await;
    }

    // retargeted: the canary Deployment of the former target is deleted
    let target2 = json!({"metadata": {"name": "web2"}, "spec": {"selector": {"matchLabels": {"app": "web2"}},
        "template": {"metadata": {"labels": {"app": "web2"}}, "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}});
    deployments.create(&PostParams::default(), &serde_json::from_value(target2).unwrap()).await.unwrap();
    let retarget = Patch::Merge(json!({"spec": {"targetDeploymentName": "web2"}}));
    canaries.patch("c", &PatchParams::default(), &retarget).await.unwrap();
    eventually(10, "web-canary replaced by web2-canary", || async {
        deployments.get_opt("web-canary").await.unwrap().is_none()
            && deployments.get_opt("web2-canary").await.unwrap().is_some()
    })
    .await;

    // a release: the Canary puts its Kanary (kanary.k8s.io) in front of Service web2, writes the stable
    // route's EndpointSlice and follows the user's endpoints; a Kanary edited by someone else is repaired
    let services: Api<Service> = e.cluster.api();
    let web2 = json!({"metadata": {"name": "web2"}, "spec": {"selector": {"app": "web2"},
        "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}});
    services.create(&PostParams::default(), &serde_json::from_value(web2).unwrap()).await.unwrap();
    e.endpoints("web2", "tcp", 8080, &[("web2-a", "10.0.1.1", true)]).await;
    let traffic = Patch::Merge(json!({"spec": {"traffic": {"service": "web2", "frontService": "web2-front"}}}));
    canaries.patch("c", &PatchParams::default(), &traffic).await.unwrap();
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = e.cluster.api();
    let stable = || async {
        let slice = slices.get_opt("c-stable").await.unwrap();
        slice.map(|s| s.endpoints.iter().map(|e| e.addresses[0].clone()).collect::<Vec<_>>()).unwrap_or_default()
    };
    eventually(10, "the stable route's EndpointSlice", || async { stable().await == ["10.0.1.1"] }).await;
    e.endpoints("web2", "tcp", 8080, &[("web2-a", "10.0.1.1", true), ("web2-b", "10.0.1.2", true)]).await;
    eventually(10, "the stable route following the user's endpoints", || async { stable().await.len() == 2 }).await;
    let release_kanary = e.kanaries("kanary.k8s.io", "v1");
    let weights = Patch::Merge(json!({"spec": {"routes": [
        {"backend": {"serviceName": "c-stable", "servicePort": "traffic"}, "weight": 50},
        {"backend": {"serviceName": "c-canary", "servicePort": "traffic"}, "weight": 50}]}}));
    release_kanary.patch("c", &PatchParams::default(), &weights).await.unwrap();
    eventually(10, "the release's Kanary repaired", || async {
        release_kanary.get("c").await.unwrap().data["spec"]["routes"][1]["weight"] == 0
    })
    .await;
    // traffic removed: the release's Kanary, Services and EndpointSlice are deleted, the status drops it
    canaries.patch("c", &PatchParams::default(), &Patch::Merge(json!({"spec": {"traffic": null}}))).await.unwrap();
    eventually(10, "the release's objects deleted", || async {
        release_kanary.get_opt("c").await.unwrap().is_none()
            && services.get_opt("c-stable").await.unwrap().is_none()
            && services.get_opt("c-canary").await.unwrap().is_none()
            && slices.get_opt("c-stable").await.unwrap().is_none()
            && canaries.get("c").await.unwrap().data["status"].get("release").is_none()
    })
    .await;

    // Kanaries of both groups; one changes its destination (the former destination Service is deleted)
    e.backend_services().await;
    e.endpoints("myapp-v1", "http", 8080, &[("v1-a", "10.0.0.1", true)]).await;
    e.endpoints("myapp-v2", "", 8080, &[("v2-a", "10.0.0.2", true)]).await;
    let routes = json!([{"backend": {"serviceName": "myapp-v1", "servicePort": "http"}, "weight": 100},
        {"backend": {"serviceName": "myapp-v2", "servicePort": 9090}, "weight": 0}]);
    for (group, version) in canary_controller::api::kanary::GROUPS {
        let mut kanary = support::kanary::kanary_yaml(&format!("{group}/{version}"), routes.clone());
        kanary.metadata.name = Some(format!("k-{}", group.split('.').nth(1).unwrap()));
        kanary.data["spec"]["destination"] = json!(format!("front-{}", group.split('.').nth(1).unwrap()));
        e.kanaries(group, version).create(&PostParams::default(), &kanary).await.unwrap();
    }
    eventually(10, "both destination Services", || async {
        services.get_opt("front-k8s").await.unwrap().is_some()
            && services.get_opt("front-pyxida").await.unwrap().is_some()
    })
    .await;
    let merge = Patch::Merge(json!({"spec": {"destination": "front-new"}}));
    e.kanaries("kanary.k8s.io", "v1").patch("k-k8s", &PatchParams::default(), &merge).await.unwrap();
    eventually(10, "the former destination Service deleted", || async {
        services.get_opt("front-k8s").await.unwrap().is_none() && services.get_opt("front-new").await.unwrap().is_some()
    })
    .await;

    // a weight changes (the ConfigMap is applied again) and someone else edits a destination Service (repaired)
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> = e.cluster.api();
    let config = || async { config_maps.get("k-pyxida-config").await.unwrap().data };
    let before = config().await;
    let halves = json!([{"backend": {"serviceName": "myapp-v1", "servicePort": "http"}, "weight": 50},
        {"backend": {"serviceName": "myapp-v2", "servicePort": 9090}, "weight": 50}]);
    let reweigh = Patch::Merge(json!({"spec": {"routes": halves}}));
    e.kanaries("kanary.pyxida.io", "v1alpha1").patch("k-pyxida", &PatchParams::default(), &reweigh).await.unwrap();
    eventually(10, "the new weights configured", || async { config().await != before }).await;
    let tamper = Patch::Merge(json!({"spec": {"selector": {"proxy": "elsewhere"}}}));
    services.patch("front-pyxida", &PatchParams::default(), &tamper).await.unwrap();
    eventually(10, "the edited destination Service repaired", || async {
        let selector = services.get("front-pyxida").await.unwrap().spec.unwrap().selector.unwrap_or_default();
        selector.get("proxy").map(String::as_str) == Some("k-pyxida-haproxy")
    })
    .await;

    // someone else edits the proxy agent's ServiceAccount, Role and RoleBinding: each repaired (applied again)
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = e.cluster.api();
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = e.cluster.api();
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = e.cluster.api();
    let proxy = "k-pyxida-haproxy";
    let edit = |value| Patch::Merge(value);
    accounts.patch(proxy, &PatchParams::default(), &edit(json!({"automountServiceAccountToken": true}))).await.unwrap();
    let widen = json!({"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]});
    roles.patch(proxy, &PatchParams::default(), &edit(widen)).await.unwrap();
    let elsewhere = json!({"subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]});
    bindings.patch(proxy, &PatchParams::default(), &edit(elsewhere)).await.unwrap();
    eventually(10, "the agent's edited identity repaired", || async {
        let account = accounts.get(proxy).await.unwrap();
        let rules = roles.get(proxy).await.unwrap().rules.unwrap_or_default();
        let subjects = bindings.get(proxy).await.unwrap().subjects.unwrap_or_default();
        account.automount_service_account_token == Some(false)
            && rules.len() == 2
            && rules.iter().all(|r| r.resources.as_deref() != Some(&["secrets".to_string()][..]))
            && subjects.iter().all(|s| s.name == proxy)
    })
    .await;

    for ((group, version), kanary) in canary_controller::api::kanary::GROUPS.iter().zip(["k-k8s", "k-pyxida"]) {
        let api = e.kanaries(group, version);
        eventually(10, "the status written", || async { e.condition(&api, kanary, "Ready").await.is_some() }).await;
    }

    let mut used = e.cluster.controller_requests().unwrap();
    // what the controller granted to the agents' Roles (the API server's escalation check needs it held)
    let agent_roles = roles.list(&Default::default()).await.unwrap().items.into_iter();
    for role in agent_roles.filter(|r| r.metadata.owner_references.as_ref().is_some_and(|o| o[0].kind == "Kanary")) {
        for rule in role.rules.unwrap_or_default() {
            for (verb, group) in rule.verbs.iter().flat_map(|v| rule.api_groups.iter().flatten().map(move |g| (v, g))) {
                for resource in rule.resources.iter().flatten() {
                    used.insert((verb.clone(), group.clone(), resource.clone()));
                }
            }
        }
    }
    let mut grants = granted("role.yaml");
    grants.extend(granted("leader_election_role.yaml"));
    let unused: Vec<_> = grants.difference(&used).collect();
    assert!(unused.is_empty(), "config/rbac grants what the controller never used: {unused:?}\nused: {used:?}");
    let ungranted: Vec<_> = used.difference(&grants).collect();
    assert!(ungranted.is_empty(), "the controller used what config/rbac does not grant: {ungranted:?}");
    let log = e.controller.log();
    assert!(!log.contains("forbidden"), "a request was denied:\n{log}");
    e.cluster.cleanup().await;
}
