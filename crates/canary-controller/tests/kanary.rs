//! End-to-end: Kanaries of both API groups against the real binary on the control plane (or E2E_KUBECONFIG).

use canary_controller::kanary::validate::validate_proxy;
use e2e_support as support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::eventually;
use support::kanary::{EXAMPLES, env, haproxy_accepts, kanary_yaml};

/// The original README's Kanary (pyxida group), in mixed spellings, produces the original names and status.
#[tokio::test]
async fn readme_kanary_in_mixed_spellings_gives_the_original_names_and_status() {
    let e = env().await;
    e.backend_services().await;
    e.endpoints("myapp-v1", "http", 8080, &[("v1-a", "10.1.0.5", true), ("v1-b", "10.1.0.6", true)]).await;
    e.endpoints("myapp-v2", "", 8080, &[("v2-a", "10.1.0.7", true)]).await;
    let kanaries = e.kanaries("kanary.pyxida.io", "v1alpha1");
    let routes = json!([
        {"backend": {"servicename": "myapp-v1", "ServicePort": "http"}, "Weight": 80},
        {"backend": {"ServiceName": "myapp-v2", "serviceport": 9090}, "weight": 20},
    ]);
    kanaries.create(&PostParams::default(), &kanary_yaml("kanary.pyxida.io/v1alpha1", routes)).await.unwrap();

    let config = e.wait_config("simple-kanary-rule", "the HAProxy config", |c| c.contains("10.1.0.7:8080")).await;
    assert!(
        config.contains("server s1 10.1.0.5:8080 check") && config.contains("server s2 10.1.0.6:8080 check"),
        "{config}"
    );
    assert!(
        config.contains("{ nbsrv(be_myapp-v1) gt 0 }") && config.contains("{ nbsrv(be_myapp-v2) gt 0 }"),
        "{config}"
    );
    assert_eq!(e.weights("simple-kanary-rule").await.unwrap(), "t0 80\nw0 80\nt1 100\nw1 20\n");
    haproxy_accepts(&config);

    let deployments: Api<Deployment> = e.cluster.api();
    let applied =
        support::within(10, || async { deployments.get_opt("simple-kanary-rule-haproxy").await.unwrap().is_some() });
    assert!(applied.await, "the proxy's Deployment is applied:\n{}", e.controller.log());
    let proxy = deployments.get("simple-kanary-rule-haproxy").await.unwrap();
    assert_eq!(
        proxy.spec.as_ref().unwrap().selector.match_labels.as_ref().unwrap()["proxy"],
        "simple-kanary-rule-haproxy"
    );
    let pod = proxy.spec.unwrap().template.spec.unwrap();
    // HAProxy and the agent (a native sidecar): both hardened, the agent under the Kanary's ServiceAccount
    let agent = &pod.init_containers.as_ref().expect("the agent")[0];
    assert_eq!(agent.restart_policy.as_deref(), Some("Always"));
    assert!(agent.args.as_ref().unwrap().windows(2).any(|a| a == ["--config-map", "simple-kanary-rule-config"]));
    for container in [&pod.containers[0], agent] {
        let sc = container.security_context.clone().unwrap();
        assert_eq!((sc.read_only_root_filesystem, sc.allow_privilege_escalation), (Some(true), Some(false)));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    }
    assert_eq!(pod.service_account_name.as_deref(), Some("simple-kanary-rule-haproxy"));
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    let role: k8s_openapi::api::rbac::v1::Role = e.cluster.api().get("simple-kanary-rule-haproxy").await.unwrap();
    let rules = role.rules.unwrap();
    assert_eq!(rules[0].resource_names, Some(vec!["simple-kanary-rule-config".to_string()]));
    assert_eq!(rules[1].resources, Some(vec!["kanaries/status".to_string()]));
    assert_eq!(rules[1].api_groups, Some(vec!["kanary.pyxida.io".to_string()]));
    let binding: k8s_openapi::api::rbac::v1::RoleBinding =
        e.cluster.api().get("simple-kanary-rule-haproxy").await.unwrap();
    assert_eq!(binding.subjects.unwrap()[0].name, "simple-kanary-rule-haproxy");
    let service: Service = e.cluster.api().get("myapp").await.unwrap();
    let spec = service.spec.unwrap();
    assert_eq!(spec.ports.unwrap()[0].port, 80);
    assert_eq!(spec.selector.unwrap()["proxy"], "simple-kanary-rule-haproxy");

    eventually(10, "the status", || async {
        kanaries.get("simple-kanary-rule").await.unwrap().data["status"]["endpointStatuses"]
            .as_array()
            .is_some_and(|a| a.len() == 2)
    })
    .await;
    let status = kanaries.get("simple-kanary-rule").await.unwrap().data["status"].clone();
    assert_eq!(
        status["destinationStatus"],
        json!({"proxyName": "simple-kanary-rule-haproxy", "serviceName": "myapp", "configName": "simple-kanary-rule-config"})
    );
    assert_eq!(
        status["endpointStatuses"],
        json!([
            {"ServiceName": "myapp-v1", "Weight": 80, "Ips": ["10.1.0.5:8080", "10.1.0.6:8080"]},
            {"ServiceName": "myapp-v2", "Weight": 20, "Ips": ["10.1.0.7:8080"]},
        ])
    );
    assert_eq!(status["routes"], "myapp-v1=80,myapp-v2=20");
    e.cluster.cleanup().await;
}

/// The original README's manifest, unchanged, with kubectl.
#[tokio::test]
async fn the_original_readme_manifest_applies_unchanged_with_kubectl() {
    let e = env().await;
    e.backend_services().await;
    e.endpoints("myapp-v1", "http", 8080, &[("v1-a", "10.1.0.5", true)]).await;
    e.endpoints("myapp-v2", "", 8080, &[("v2-a", "10.1.0.7", true)]).await;
    let ns = e.cluster.namespace.clone();
    let Some(out) =
        e.cluster.kubectl(&["apply", "-n", &ns, "-f", &format!("{EXAMPLES}/readme-kanary.yml")], None).await
    else {
        return;
    };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kanary.kanary.pyxida.io/simple-kanary-rule created",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = e
        .wait_config("simple-kanary-rule", "the config", |c| c.contains("10.1.0.5:8080") && c.contains("10.1.0.7:8080"))
        .await;
    haproxy_accepts(&config);
    // with both groups installed, `kanary` means kanary.k8s.io (discovery order): name the group
    let get = [
        "get",
        "kanaries.kanary.pyxida.io",
        "simple-kanary-rule",
        "-n",
        &ns,
        "-o",
        "jsonpath={.status.destinationStatus.proxyName}",
    ];
    eventually(10, "the status through kubectl", || async {
        e.cluster
            .kubectl(&get, None)
            .await
            .is_some_and(|o| String::from_utf8_lossy(&o.stdout) == "simple-kanary-rule-haproxy")
    })
    .await;
    e.cluster.cleanup().await;
}

/// Each kind of user installs the Kanary group their manifests use (`canary-controller crd --kanary-group`);
/// then `kubectl get kanary` and `kubectl get ky` list their Kanaries, with no warning on stderr.
#[tokio::test]
async fn kubectl_get_kanary_and_ky_list_the_installed_group_without_a_warning() {
    for (group, manifest) in [("kanary.pyxida.io", "readme-kanary.yml"), ("kanary.k8s.io", "simple-stack.yml")] {
        // the installed groups are the cluster's: a control plane of its own
        let Some(cluster) = support::Cluster::start_own().await else { return };
        let crds = cluster.controller(&["crd", "--kanary-group", group]).await;
        assert!(crds.status.success(), "{}", String::from_utf8_lossy(&crds.stderr));
        let crds = String::from_utf8(crds.stdout).unwrap();
        let Some(out) = cluster.kubectl(&["apply", "--server-side", "-f", "-"], Some(&crds)).await else { return };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut controller = cluster.spawn_controller();
        controller.wait_for_log("controllers running").await;
        let ns = cluster.namespace.clone();
        let out = cluster.kubectl(&["apply", "-n", &ns, "-f", &format!("{EXAMPLES}/{manifest}")], None).await.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        for resource in ["kanary", "ky", "kanaries"] {
            let out = cluster.kubectl(&["get", resource, "-n", &ns], None).await.unwrap();
            let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(
                out.status.success() && stdout.contains("simple-kanary-rule"),
                "{group}: get {resource}:\n{stdout}\n{stderr}"
            );
            assert!(stderr.trim().is_empty(), "{group}: get {resource} warned:\n{stderr}");
            let out =
                cluster.kubectl(&["get", resource, "simple-kanary-rule", "-n", &ns, "-o", "name"], None).await.unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("kanary.{group}/simple-kanary-rule"));
        }
        assert!(!controller.log().contains("ERROR"), "{}", controller.log());
        cluster.cleanup().await;
    }
}

/// examples/simple-stack.yml (kanary.k8s.io group) with kubectl; then endpoint and weight changes, repair, deletion.
#[tokio::test]
async fn simple_stack_follows_endpoints_and_weights_and_is_repaired_and_deleted() {
    let e = env().await;
    let ns = e.cluster.namespace.clone();
    let Some(out) = e.cluster.kubectl(&["apply", "-n", &ns, "-f", &format!("{EXAMPLES}/simple-stack.yml")], None).await
    else {
        return;
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    e.endpoints("myapp-v1", "http", 8080, &[("v1-a", "10.1.0.5", true)]).await;
    e.endpoints("myapp-v2", "", 8080, &[("v2-a", "10.1.0.7", true)]).await;
    let kanaries = e.kanaries("kanary.k8s.io", "v1");
    e.wait_config("simple-kanary-rule", "the first config", |c| {
        c.contains("10.1.0.5:8080") && c.contains("10.1.0.7:8080")
    })
    .await;
    let out = e.cluster.kubectl(&["get", "ky", "-n", &ns], None).await.unwrap();
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        table.lines().next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["NAME", "DESTINATION", "ROUTES", "READY", "AGE"],
        "{table}"
    );
    assert!(table.contains("simple-kanary-rule   myapp         myapp-v1=80,myapp-v2=20"), "{table}");

    // scale up, scale down, a pod that is not ready: each reaches the config (how fast: cargo bench --bench scale)
    // the proxy agent applies them to the running HAProxy: the pod template stays as it was
    let template = |d: Deployment| serde_json::to_string(&d.spec.unwrap().template).unwrap();
    let deployments: Api<Deployment> = e.cluster.api();
    let first_template = template(deployments.get("simple-kanary-rule-haproxy").await.unwrap());
    e.endpoints("myapp-v1", "http", 8080, &[("v1-a", "10.1.0.5", true), ("v1-b", "10.1.0.6", true)]).await;
    e.wait_config("simple-kanary-rule", "scale up", |c| c.contains("10.1.0.6:8080")).await;
    e.endpoints("myapp-v1", "http", 8080, &[("v1-b", "10.1.0.6", true), ("v1-a", "10.1.0.5", false)]).await;
    e.wait_config("simple-kanary-rule", "a pod that is not ready leaves", |c| {
        !c.contains("10.1.0.5:8080") && c.contains("10.1.0.6")
    })
    .await;
    // a pod replaced: new name and address
    e.endpoints("myapp-v1", "http", 8080, &[("v1-c", "10.1.0.9", true)]).await;
    e.wait_config("simple-kanary-rule", "a replaced pod", |c| {
        c.contains("server s1 10.1.0.9:8080") && !c.contains("10.1.0.6")
    })
    .await;
    let now = template(deployments.get("simple-kanary-rule-haproxy").await.unwrap());
    assert_eq!(now, first_template, "the proxy's pod template changed with its backends");

    // weights
    kanaries
        .patch(
            "simple-kanary-rule",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"routes": [
            {"backend": {"serviceName": "myapp-v1", "servicePort": "http"}, "weight": 50},
            {"backend": {"serviceName": "myapp-v2", "servicePort": 9090}, "weight": 50}]}})),
        )
        .await
        .unwrap();
    e.wait_weights("simple-kanary-rule", "new weights", |w| w == "t0 50\nw0 50\nt1 100\nw1 50\n").await;
    haproxy_accepts(&e.config("simple-kanary-rule").await.unwrap());

    // the Kanary's own proxy settings, over the controller's defaults: in the config and the pod template
    let settings = json!({"spec": {"proxy": {"timeoutClient": "8h", "maxconn": 20000,
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}}}});
    kanaries.patch("simple-kanary-rule", &PatchParams::default(), &Patch::Merge(settings)).await.unwrap();
    let config =
        e.wait_config("simple-kanary-rule", "the Kanary's proxy settings", |c| c.contains("timeout client 8h")).await;
    assert!(config.contains("maxconn 20000") && config.contains("timeout server 1h"), "{config}");
    haproxy_accepts(&config);
    eventually(10, "the HAProxy container's resources", || async {
        let d = deployments.get("simple-kanary-rule-haproxy").await.unwrap();
        let haproxy = d.spec.unwrap().template.spec.unwrap().containers[0].resources.clone().unwrap_or_default();
        haproxy.limits.unwrap_or_default().get("memory").map(|q| q.0.as_str()) == Some("512Mi")
    })
    .await;
    let served = || async {
        e.route_weight("kanary.k8s.io", "simple-kanary-rule", "myapp-v1").await == Some(50.0)
            && e.route_weight("kanary.k8s.io", "simple-kanary-rule", "myapp-v2").await == Some(50.0)
    };
    assert!(support::within(10, served).await, "the served weights are not in /metrics:\n{}", e.controller.log());

    // objects changed or deleted by hand are repaired
    let cms: Api<ConfigMap> = e.cluster.api();
    cms.delete("simple-kanary-rule-config", &DeleteParams::default()).await.unwrap();
    e.wait_weights("simple-kanary-rule", "the ConfigMap recreated", |w| w.starts_with("t0 50\n")).await;
    let services: Api<Service> = e.cluster.api();
    services
        .patch(
            "myapp",
            &PatchParams::apply("someone").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service", "spec": {"selector": {"proxy": "elsewhere"}}})),
        )
        .await
        .unwrap();
    eventually(10, "the Service selector restored", || async {
        services.get("myapp").await.unwrap().spec.unwrap().selector.unwrap().get("proxy").map(String::as_str)
            == Some("simple-kanary-rule-haproxy")
    })
    .await;
    deployments.delete("simple-kanary-rule-haproxy", &DeleteParams::default()).await.unwrap();
    eventually(10, "the proxy Deployment recreated", || async {
        deployments.get_opt("simple-kanary-rule-haproxy").await.unwrap().is_some()
    })
    .await;

    // a new destination: the new Service appears, the old one goes
    kanaries
        .patch(
            "simple-kanary-rule",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"destination": "myapp-next"}})),
        )
        .await
        .unwrap();
    eventually(10, "the Service follows the destination", || async {
        services.get_opt("myapp-next").await.unwrap().is_some() && services.get_opt("myapp").await.unwrap().is_none()
    })
    .await;

    // deleting the Kanary removes what it owns
    kanaries.delete("simple-kanary-rule", &DeleteParams::default()).await.unwrap();
    eventually(10, "the owned objects collected", || async {
        cms.get_opt("simple-kanary-rule-config").await.unwrap().is_none()
            && deployments.get_opt("simple-kanary-rule-haproxy").await.unwrap().is_none()
            && services.get_opt("myapp-next").await.unwrap().is_none()
    })
    .await;
    assert!(services.get_opt("myapp-v1").await.unwrap().is_some(), "backend Services are the user's");
    e.cluster.cleanup().await;
}

#[tokio::test]
async fn invalid_updates_are_rejected_or_reported_and_the_last_good_config_keeps_serving() {
    let e = env().await;
    e.backend_services().await;
    e.endpoints("myapp-v1", "http", 8080, &[("v1-a", "10.1.0.5", true)]).await;
    e.endpoints("myapp-v2", "", 8080, &[("v2-a", "10.1.0.7", true)]).await;
    let kanaries = e.kanaries("kanary.k8s.io", "v1");
    let routes = |w1: i64, w2: i64, port2: Value| {
        json!([
        {"backend": {"serviceName": "myapp-v1", "servicePort": "http"}, "weight": w1},
        {"backend": {"serviceName": "myapp-v2", "servicePort": port2}, "weight": w2}])
    };
    kanaries
        .create(&PostParams::default(), &kanary_yaml("kanary.k8s.io/v1", routes(80, 20, json!(9090))))
        .await
        .unwrap();
    let good = e.wait_config("simple-kanary-rule", "the first config", |c| c.contains("10.1.0.7:8080")).await;
    // ... and reported (on a real API server the status write may come a moment after the config's)
    eventually(10, "the first status", || async {
        kanaries.get("simple-kanary-rule").await.unwrap().data["status"]["routes"] == "myapp-v1=80,myapp-v2=20"
    })
    .await;

    // the schema rejects what it can see (CEL): weights that do not add up to 100, a duplicate backend
    let bad = kanary_yaml("kanary.k8s.io/v1", routes(80, 30, json!(9090)));
    let err = kanaries
        .patch("simple-kanary-rule", &PatchParams::apply("test").force(), &Patch::Apply(bad))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the weights must add up to 100"), "{err}");
    let mut dup = kanary_yaml("kanary.k8s.io/v1", routes(50, 50, json!(9090)));
    dup.data["spec"]["routes"][1]["backend"]["serviceName"] = json!("myapp-v1");
    let err = kanaries
        .patch("simple-kanary-rule", &PatchParams::apply("test").force(), &Patch::Apply(dup))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("each backend serviceName may appear only once"), "{err}");
    // a port number out of range, or a port name longer than a DNS label (CEL `type()` on int-or-string)
    for port in [json!(0), json!(70000), json!("p".repeat(64))] {
        let bad = kanary_yaml("kanary.k8s.io/v1", routes(80, 20, port.clone()));
        let err = kanaries
            .patch("simple-kanary-rule", &PatchParams::apply("test").force(), &Patch::Apply(bad))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("servicePort: a port number of the Service (1 to 65535)"), "{port}: {err}");
    }

    // proxy settings HAProxy cannot read: a duration without a unit, one past 24 days, a maxconn of 0
    for (field, value, says) in [
        ("timeoutClient", json!("10"), "spec.proxy.timeoutClient"),
        ("hardStopAfter", json!("1fortnight"), "spec.proxy.hardStopAfter"),
        ("maxconn", json!(0), "spec.proxy.maxconn"),
    ] {
        let mut bad = kanary_yaml("kanary.k8s.io/v1", routes(80, 20, json!(9090)));
        bad.data["spec"]["proxy"] = json!({field: value});
        let err = kanaries
            .patch("simple-kanary-rule", &PatchParams::apply("test").force(), &Patch::Apply(bad))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(says), "{field}: {err}");
    }
    assert_eq!(
        validate_proxy(&serde_json::from_value(json!({"timeoutServer": "25d"})).unwrap()).unwrap_err(),
        "spec.proxy.timeoutServer: \"25d\" is not a duration HAProxy reads: a number and a unit (us, ms, s, m, h or d), at most 24 days, such as 30s or 1h"
    );

    // what only the controller can see (a port the Service does not have) is reported; the config stays
    kanaries
        .patch(
            "simple-kanary-rule",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"routes": routes(70, 30, json!(7777))}})),
        )
        .await
        .unwrap();
    let message = e.wait_condition(&kanaries, "simple-kanary-rule", "Ready", "False", "PortNotFound").await;
    assert!(message.contains("Service \"myapp-v2\" has no port 7777") && message.contains("9090"), "{message}");
    eventually(5, "a PortNotFound warning event", || async { e.warnings("PortNotFound").await > 0 }).await;
    assert_eq!(e.config("simple-kanary-rule").await.unwrap(), good, "the last good configuration must stay");
    let status = kanaries.get("simple-kanary-rule").await.unwrap().data["status"].clone();
    assert_eq!(status["routes"], "myapp-v1=80,myapp-v2=20", "the status reports what the proxy still serves");
    assert_eq!(status["endpointStatuses"][1]["Ips"], json!(["10.1.0.7:8080"]));

    // a backend Service that does not exist: its route gets no traffic, the others keep theirs
    kanaries
        .patch(
            "simple-kanary-rule",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"routes": [
            {"backend": {"serviceName": "myapp-v1", "servicePort": "http"}, "weight": 90},
            {"backend": {"serviceName": "myapp-v9", "servicePort": 80}, "weight": 10}]}})),
        )
        .await
        .unwrap();
    let message = e.wait_condition(&kanaries, "simple-kanary-rule", "BackendsReady", "False", "ServiceNotFound").await;
    assert!(message.contains("myapp-v9"), "{message}");
    let config = e
        .wait_config("simple-kanary-rule", "the config without the missing Service", |c| {
            c.contains("backend be_myapp-v9")
        })
        .await;
    haproxy_accepts(&config);
    e.cluster.cleanup().await;
}

#[tokio::test]
async fn objects_we_do_not_own_are_never_touched() {
    let e = env().await;
    e.backend_services().await;
    let services: Api<Service> = e.cluster.api();
    let theirs: Service = serde_json::from_value(
        json!({"metadata": {"name": "myapp"}, "spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}}}),
    )
    .unwrap();
    let before = services.create(&PostParams::default(), &theirs).await.unwrap();
    let kanaries = e.kanaries("kanary.pyxida.io", "v1alpha1");
    let routes = json!([{"backend": {"serviceName": "myapp-v1", "servicePort": "http"}, "weight": 100}]);
    kanaries.create(&PostParams::default(), &kanary_yaml("kanary.pyxida.io/v1alpha1", routes)).await.unwrap();
    let message = e.wait_condition(&kanaries, "simple-kanary-rule", "Conflict", "True", "ObjectNotOwned").await;
    assert!(message.contains("Service \"myapp\" already exists"), "{message}");
    eventually(5, "an ObjectNotOwned warning event", || async { e.warnings("ObjectNotOwned").await > 0 }).await;
    assert_eq!(services.get("myapp").await.unwrap().metadata.resource_version, before.metadata.resource_version);
    assert!(
        e.config("simple-kanary-rule").await.is_none(),
        "nothing is created while the destination is someone else's"
    );
    e.cluster.cleanup().await;
}

/// What the controller's `/metrics` says it did: reconciles, and API writes (events apart).
async fn reconciles_and_writes(controller: &support::Process) -> (f64, f64) {
    let text = support::http_get(&controller.metrics_address(), "/metrics").await.unwrap_or_default();
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let reconciles = text.lines().filter(|l| l.starts_with("canary_controller_reconciles_total{")).map(value).sum();
    let writes = text
        .lines()
        .filter(|l| l.starts_with("canary_controller_api_requests_total{") && !l.contains("resource=\"events\""))
        .filter(|l| ["create", "patch", "update", "delete"].iter().any(|v| l.contains(&format!("verb=\"{v}\""))))
        .map(value)
        .sum();
    (reconciles, writes)
}

/// Waits until the controller has reconciled at least `at_least` times and nothing changed for 3 seconds.
async fn settled(controller: &support::Process, at_least: f64) -> (f64, f64) {
    let mut last = reconciles_and_writes(controller).await;
    let mut since = std::time::Instant::now();
    let start = std::time::Instant::now();
    while !(last.0 >= at_least && since.elapsed() > std::time::Duration::from_secs(3)) {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "not settled: {last:?}\n{}", controller.log());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = reconciles_and_writes(controller).await;
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        }
    }
    last
}

/// A controller restarted on a converged cluster reconciles each object once and writes nothing: what its
/// caches show is as desired.
#[tokio::test]
async fn a_controller_restarted_on_a_converged_cluster_reconciles_once_each_and_writes_nothing() {
    let mut e = env().await;
    e.backend_services().await;
    e.endpoints("myapp-v1", "http", 8080, &[("v1-a", "10.1.0.5", true)]).await;
    e.endpoints("myapp-v2", "", 8080, &[("v2-a", "10.1.0.7", true)]).await;
    let routes = json!([{"backend": {"serviceName": "myapp-v1", "servicePort": "http"}, "weight": 80},
        {"backend": {"serviceName": "myapp-v2", "servicePort": 9090}, "weight": 20}]);
    let kanaries = e.kanaries("kanary.k8s.io", "v1");
    kanaries.create(&PostParams::default(), &kanary_yaml("kanary.k8s.io/v1", routes)).await.unwrap();
    let target = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}});
    let deployments: Api<Deployment> = e.cluster.api();
    deployments.create(&PostParams::default(), &serde_json::from_value(target).unwrap()).await.unwrap();
    let canary = json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary", "metadata": {"name": "c"},
        "spec": {"targetDeploymentName": "web", "targetContainers": [{"name": "web", "image": "web:2"}]}});
    let canaries = Api::<kube::core::DynamicObject>::namespaced_with(
        e.cluster.client.clone(),
        &e.cluster.namespace,
        &kube::discovery::ApiResource::erase::<canary_controller::api::canary::Canary>(&()),
    );
    canaries.create(&PostParams::default(), &serde_json::from_value(canary).unwrap()).await.unwrap();
    e.wait_condition(&kanaries, "simple-kanary-rule", "BackendsReady", "True", "BackendsReady").await;
    eventually(10, "web-canary", || async { deployments.get_opt("web-canary").await.unwrap().is_some() }).await;
    let (_, writes) = settled(&e.controller, 2.0).await;
    assert!(writes > 0.0, "the first controller wrote the children and statuses");
    // a real cluster's controllers write the children's statuses (ReplicaSets, conditions) on their own time:
    // restart once they are done, so that the one reconcile each is not followed by one for their news
    let quiet = || async {
        let list = deployments.list(&Default::default()).await.unwrap();
        list.items.iter().map(|d| d.metadata.resource_version.clone()).collect::<Vec<_>>()
    };
    let mut last = quiet().await;
    let mut unchanged = 0;
    for _ in 0..600 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = quiet().await;
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
        if unchanged == 30 {
            break;
        }
    }
    assert_eq!(unchanged, 30, "the Deployments kept changing for 60 s");

    e.controller.terminate().await;
    let mut restarted = e.cluster.spawn_controller();
    restarted.wait_for_log("controllers running").await;
    let (reconciles, writes) = settled(&restarted, 2.0).await;
    assert_eq!(writes, 0.0, "API writes after the restart:\n{}", restarted.log());
    assert_eq!(reconciles, 2.0, "one reconcile per object:\n{}", restarted.log());
    e.controller = restarted;
    e.cluster.cleanup().await;
}
