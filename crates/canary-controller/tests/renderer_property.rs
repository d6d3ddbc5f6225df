//! Property test of the path from what users and the cluster control to haproxy.cfg: arbitrary (often
//! hostile) Kanary specs, Service ports and EndpointSlices go through `parse_and_validate`, `resolve` and
//! `render`. Whatever the input, the config either is not produced (the spec is rejected) or every line is
//! one the renderer writes by design, server names are unique in each backend (several slices per Service,
//! both address families, colliding pod names), and `haproxy -c` accepts it.

use canary_controller::dataplane::haproxy::{ProxySettings, RouteBackend, render, weights_map, weights_path};
use canary_controller::kanary::endpoints::{Resolution, resolve};
use canary_controller::kanary::validate::parse_and_validate;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;
use regex::Regex;
use serde_json::{Value, json};

/// Strings a user or a compromised workload could put in a name, a port name or an address.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => "[a-z][a-z0-9-]{0,8}[a-z0-9]",
        1 => "[a-z]{63,64}",
        1 => Just("myapp\n    bind :1".to_string()),
        1 => Just("a }\nbackend evil".to_string()),
        1 => Just("x # comment".to_string()),
        1 => Just("web server 1.2.3.4:80".to_string()),
        1 => Just(String::new()),
        1 => Just("ünïcode".to_string()),
        1 => ".{0,20}",
    ]
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..=255, 0u8..=255).prop_map(|(a, b)| format!("10.0.{a}.{b}")),
        Just("fd00::1".to_string()),
        (0u16..=0xffff).prop_map(|a| format!("fd00::{a:x}")),
        Just("10.0.0.1 check\n    bind :2".to_string()),
        Just("example.com".to_string()),
        hostile(),
    ]
}

/// Pod names that collide, before and after renaming (`x`, `x`, `x-2`), or hostile ones.
fn pod_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["x", "x-2", "x-3", "x-2-2", "y"]).prop_map(String::from),
        1 => hostile(),
    ]
}

/// One EndpointSlice: its address family and its (pod name, address, ready) endpoints.
type Slice = (&'static str, Vec<(String, String, bool)>);

#[derive(Debug, Clone)]
struct Backend {
    name: String,
    port_name: String,
    slice_port: i32,
    /// Several slices per Service, of both families (a dual-stack Service lists each pod twice).
    slices: Vec<Slice>,
}

fn backend() -> impl Strategy<Value = Backend> {
    let slice = (
        prop::sample::select(vec!["IPv4", "IPv6"]),
        prop::collection::vec((pod_name(), address(), any::<bool>()), 0..5),
    );
    (hostile(), hostile(), -2i32..70000, prop::collection::vec(slice, 1..4))
        .prop_map(|(name, port_name, slice_port, slices)| Backend { name, port_name, slice_port, slices })
}

/// Weights that add up to 100 (as valid specs have), or arbitrary ones.
fn weights(n: usize) -> impl Strategy<Value = Vec<i64>> {
    let shares = prop::collection::vec(0i64..50, n).prop_map(|shares| {
        let total: i64 = shares.iter().sum::<i64>().max(1);
        let mut w: Vec<i64> = shares.iter().map(|s| s * 100 / total).collect();
        w[0] += 100 - w.iter().sum::<i64>();
        w
    });
    prop_oneof![4 => shares, 1 => prop::collection::vec(-5i64..=105, n)]
}

fn case() -> impl Strategy<Value = (String, Vec<(Backend, Value, i64)>)> {
    let port = prop_oneof![
        6 => Just(json!(80)),
        1 => (-1i64..70000).prop_map(|p| json!(p)),
        2 => hostile().prop_map(|s| json!(s))
    ];
    let routes = (1usize..6).prop_flat_map(move |n| {
        (prop::collection::vec((backend(), port.clone()), n), weights(n))
            .prop_map(|(bs, ws)| bs.into_iter().zip(ws).map(|((b, p), w)| (b, p, w)).collect::<Vec<_>>())
    });
    (hostile(), routes)
}

fn service(b: &Backend) -> Service {
    serde_json::from_value(json!({"metadata": {"name": b.name},
        "spec": {"ports": [{"name": b.port_name, "port": 80, "targetPort": 8080}]}}))
    .unwrap()
}

/// The slices as the controller's cache keeps them.
fn cached(slices: Vec<EndpointSlice>) -> Vec<canary_controller::runtime::caches::CachedSlice> {
    slices.into_iter().map(Into::into).collect()
}

fn slices(b: &Backend) -> Vec<EndpointSlice> {
    let slice = |i: usize, (family, endpoints): &Slice| -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": format!("s{i}")}, "addressType": family,
            "ports": [{"name": b.port_name, "port": b.slice_port}],
            "endpoints": endpoints.iter().map(|(pod, ip, ready)| json!({
                "addresses": [ip], "conditions": {"ready": ready}, "targetRef": {"kind": "Pod", "name": pod}})).collect::<Vec<_>>()}))
        .unwrap()
    };
    b.slices.iter().enumerate().map(|(i, s)| slice(i, s)).collect()
}

/// HAProxy refuses a backend with two servers of one name.
fn server_names_are_unique_per_backend(cfg: &str) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for line in cfg.lines() {
        if line.starts_with("backend ") {
            names.clear();
        } else if let Some(rest) = line.strip_prefix("    server ") {
            let name = rest.split(' ').next().unwrap_or_default();
            if !names.insert(name.to_string()) {
                return Err(format!("server name {name:?} twice in a backend"));
            }
        }
    }
    Ok(())
}

/// The lines the renderer writes by design: the fixed ones, and the per-route templates.
fn allowed_line(fixed: &[String], line: &str) -> bool {
    static TEMPLATES: std::sync::LazyLock<Vec<Regex>> = std::sync::LazyLock::new(|| {
        let name = r"[a-z]([-a-z0-9]*[a-z0-9])?";
        [
            r"^    tcp-request content set-var\(sess\.([tw])(\d{1,2})\) str\(([tw])(\d{1,2})\),map_str_int\(/var/run/kanary/weights\.map,0\)$".to_string(),
            format!(r"^    use_backend be_{name} if \{{ var\(sess\.w\d{{1,2}}\) -m int gt 0 \}} \{{ var\(sess\.r\),sub\(sess\.t\d{{1,2}}\) -m int lt 0 \}} \{{ nbsrv\(be_{name}\) gt 0 \}}$"),
            format!(r"^    use_backend be_{name} if \{{ var\(sess\.w\d{{1,2}}\) -m int gt 0 \}} \{{ nbsrv\(be_{name}\) gt 0 \}}$"),
            format!(r"^backend be_{name}$"),
            r"^    balance roundrobin$".to_string(),
            r"^    server s\d{1,4} (\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[0-9a-f:]+\]):\d{1,5} check$".to_string(),
            r"^    server s\d{1,4} 127\.0\.0\.1:1 check disabled$".to_string(),
        ]
        .iter()
        .map(|r| Regex::new(r).unwrap())
        .collect()
    });
    fixed.iter().any(|f| f == line) || TEMPLATES.iter().any(|t| t.is_match(line))
}

#[test]
fn no_input_yields_a_config_haproxy_rejects_or_a_directive_we_did_not_write() {
    let haproxy = e2e_support::tools::available("haproxy");
    let fixed: Vec<String> = render("ns/k", &[], &ProxySettings::default()).lines().map(String::from).collect();
    let dir = tempfile::tempdir().unwrap();
    let map_path = dir.path().join("weights.map").to_str().unwrap().to_string();
    let rendered = std::sync::atomic::AtomicUsize::new(0);
    let config = ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |((destination, routes) in case())| {
        let spec = json!({"spec": {"destination": destination, "routes": routes.iter().map(|(b, port, weight)| json!(
            {"backend": {"serviceName": b.name, "servicePort": port}, "weight": weight})).collect::<Vec<_>>()}});
        let Ok(spec) = parse_and_validate("k", &spec) else { return Ok(()) };
        let mut backends = vec![];
        for (route, (b, _, _)) in spec.routes.iter().zip(&routes) {
            let servers = match resolve(&route.backend.service_port, Some(&service(b)), &cached(slices(b))) {
                Resolution::Servers(s) => s,
                Resolution::ServiceNotFound => vec![],
                Resolution::PortNotFound { .. } => return Ok(()),
            };
            backends.push(RouteBackend { service: route.backend.service_name.clone(), weight: route.weight, servers, h2c: false, header_value: None });
        }
        let cfg = render("ns/k", &backends, &ProxySettings::default());
        for line in cfg.lines() {
            prop_assert!(allowed_line(&fixed, line), "a line the renderer does not write by design: {line:?}\n{cfg}");
        }
        if let Err(e) = server_names_are_unique_per_backend(&cfg) {
            prop_assert!(false, "{e}\n{cfg}");
        }
        let n = rendered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if haproxy && n.is_multiple_of(4) {
            let path = dir.path().join("haproxy.cfg");
            let with_map = cfg.replace(&weights_path(&ProxySettings::default()), &map_path);
            std::fs::write(&path, &with_map).unwrap();
            std::fs::write(&map_path, weights_map(backends.iter().map(|b| &b.weight))).unwrap();
            let out = std::process::Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().unwrap();
            prop_assert!(out.status.success(), "haproxy -c rejected:\n{cfg}\n{}", String::from_utf8_lossy(&out.stderr));
        }
    });
    let rendered = rendered.into_inner();
    println!("{rendered} of 1000 generated inputs were accepted and rendered");
    assert!(rendered > 100, "too few generated inputs pass validation ({rendered}) for the property to mean much");
}
