//! Renders a Kanary's proxy files, following the design measured on HAProxy 2.6:
//! - one random draw per connection (`set-var(sess.r) rand(100)`), compared with cumulative thresholds,
//!   so the split does not depend on pod counts (never per-pod fractional weights);
//! - the thresholds and weights are read from a map file (`weights.map`: `t<i>` the cumulative threshold
//!   and `w<i>` the weight of route `i`), so that the proxy agent changes weights at run time, atomically,
//!   with no reload;
//! - one backend per route, `balance roundrobin`, a fixed number of server slots (`s1`...`sN`), `check`
//!   on every server, `observe layer4` so a connection refused marks its server down at once (the
//!   connection goes to another server); a slot without a server is parked at `127.0.0.1:1`, `disabled`,
//!   so the agent fills and empties slots at run time, with no reload;
//! - each rule guarded by `nbsrv(backend) gt 0`: a route with no live server is skipped, and its share goes
//!   to the first route with a live server (fallback rules), so no connection is accepted and dropped;
//!   weight-0 routes never match;
//! - Prometheus exporter, stats and a health URI on a separate HTTP port.
//!
//! Every name in the output is a validated Service name or a slot name, every address a parsed IP, every
//! setting a validated number or duration: no input can add a directive. Same inputs, byte-identical output.
//! Pure.

use super::Server;
pub use crate::api::kanary::{HttpRouting, Protocol, STICKY_COOKIE};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// One route as the controller resolved it: the Service, its weight, its live servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteBackend {
    pub service: String,
    pub weight: i64,
    pub servers: Vec<Server>,
    /// Its servers speak HTTP/2 without TLS (the Service port's `appProtocol`): in HTTP mode, the proxy
    /// speaks HTTP/2 to them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub h2c: bool,
    /// Requests whose override header has this value go here (HTTP mode, `http.header` set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_value: Option<String>,
}

/// One route as HAProxy runs it: its weight and its server slots (`None`: an empty slot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlottedBackend {
    pub service: String,
    pub weight: i64,
    pub slots: Vec<Option<Server>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub h2c: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_value: Option<String>,
}

/// Fewest slots a backend gets.
pub const MIN_SLOTS: usize = 8;

/// The slots a backend gets for `servers` servers: room for twice as many (a rollout's surge and the pods
/// it replaces), a power of two, at least [`MIN_SLOTS`]; so scaling and rollouts seldom need a reload.
pub fn slot_capacity(servers: usize) -> usize {
    (servers * 2).next_power_of_two().max(MIN_SLOTS)
}

impl SlottedBackend {
    /// The route's servers in its first slots.
    pub fn fresh(route: &RouteBackend) -> SlottedBackend {
        let mut slots: Vec<Option<Server>> = route.servers.iter().cloned().map(Some).collect();
        slots.resize(slot_capacity(route.servers.len()), None);
        SlottedBackend {
            service: route.service.clone(),
            weight: route.weight,
            slots,
            h2c: route.h2c,
            header_value: route.header_value.clone(),
        }
    }
}

/// Listening ports, limits and timeouts of the proxy, and where its files are. Both ports are bound on every
/// IPv4 and IPv6 address (`bind :::PORT v4v6`), so the proxy serves IPv4-only, IPv6-only and dual-stack
/// clusters alike. Durations are HAProxy's (`30s`, `1h`, `500ms`), validated before they get here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxySettings {
    /// Where traffic is accepted (8080 in the pod).
    pub port: u16,
    /// Where metrics (`/metrics`), stats (`/stats`) and health (`/healthz`) are served (8404 in the pod).
    pub stats_port: u16,
    /// Must fit the file-descriptor limit (about two descriptors a connection).
    pub maxconn: u32,
    /// How long a connection to a backend may take.
    pub timeout_connect: String,
    /// How long a client or a server may stay silent on an established connection: long, so that idle
    /// long-lived connections (database pools) are not cut.
    pub timeout_client: String,
    pub timeout_server: String,
    /// How long the connections of a configuration replaced by a reload may go on.
    pub hard_stop_after: String,
    /// The directory of the weights map (the config's directory).
    pub files_dir: String,
    /// Connections or HTTP requests: what each draw routes.
    #[serde(default, skip_serializing_if = "Protocol::is_tcp")]
    pub protocol: Protocol,
    /// HTTP mode: the override header and sticky cohorts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRouting>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            port: PROXY_PORT,
            stats_port: STATS_PORT,
            maxconn: 4096,
            timeout_connect: "5s".into(),
            timeout_client: "1h".into(),
            timeout_server: "1h".into(),
            hard_stop_after: "30m".into(),
            files_dir: RUNTIME_DIR.into(),
            protocol: Protocol::Tcp,
            http: None,
        }
    }
}

/// A bind line's address: every IPv6 and (through `v4v6`) every IPv4 address of the pod.
fn any_address(port: u16) -> String {
    format!(":::{port} v4v6")
}

pub const PROXY_PORT: u16 = 8080;
pub const STATS_PORT: u16 = 8404;
pub const HEALTH_PATH: &str = "/healthz";
/// Where the proxy pod keeps its config and weights map (an emptyDir the agent writes and HAProxy reads).
pub const RUNTIME_DIR: &str = "/var/run/kanary";
pub const CONFIG_FILE: &str = "haproxy.cfg";
pub const WEIGHTS_FILE: &str = "weights.map";
/// Where HAProxy in HTTP mode sends its request log: the proxy agent's port on the pod's loopback, over TCP
/// (syslog's octet counting) from a ring buffer, so a busy agent delays lines instead of losing them (a Unix
/// datagram socket queues 10 by default, `net.unix.max_dgram_qlen`: a burst lost lines).
pub const REQUEST_LOG_PORT: u16 = 8406;
/// The ring buffer that holds request log lines until the agent has them.
pub const REQUEST_LOG_RING: &str = "requests";
/// Its size: about 15,000 lines.
pub const REQUEST_LOG_RING_BYTES: usize = 1 << 20;
/// What HAProxy logs of each request, space separated: the backend, the status (-1: none), the microseconds
/// from the request (its headers read) to the end of the answer, the termination state, and the gRPC status
/// of the answer's headers (`-`: none). Read by [`super::requests::RequestLine`].
pub const REQUEST_LOG_FORMAT: &str = "%b %ST %[date(0,us),sub(txn.start)] %tsc %[var(txn.grpc)]";
/// How long an HTTP client may take to send a request's headers (slow clients hold no connection slot for
/// longer).
pub const HTTP_REQUEST_TIMEOUT: &str = "30s";

/// Where an empty slot points (nothing listens there; the slot is disabled anyway).
pub const PARKED: &str = "127.0.0.1:1";

/// What every route's backend is named: the prefix and the route's Service.
pub const BACKEND_PREFIX: &str = "be_";

pub fn backend_name(service: &str) -> String {
    format!("{BACKEND_PREFIX}{service}")
}

/// The name of slot `index` (0-based) of a backend.
pub fn slot_name(index: usize) -> String {
    format!("s{}", index + 1)
}

/// The path of the weights map.
pub fn weights_path(settings: &ProxySettings) -> String {
    format!("{}/{WEIGHTS_FILE}", settings.files_dir.trim_end_matches('/'))
}

/// The weights map: for route `i`, `t<i>` its cumulative threshold and `w<i>` its weight.
pub fn weights_map<'a>(weights: impl IntoIterator<Item = &'a i64>) -> String {
    let mut map = String::new();
    let mut threshold = 0;
    for (i, weight) in weights.into_iter().enumerate() {
        threshold += (*weight).max(0);
        let _ = writeln!(map, "t{i} {threshold}");
        let _ = writeln!(map, "w{i} {weight}");
    }
    map
}

/// Renders haproxy.cfg for `routes` with a fresh slot layout (see [`render_slotted`]); the weights go to the
/// weights map ([`weights_map`]). `owner` names the Kanary in the header comment.
pub fn render(owner: &str, routes: &[RouteBackend], settings: &ProxySettings) -> String {
    let backends: Vec<SlottedBackend> = routes.iter().map(SlottedBackend::fresh).collect();
    render_slotted(owner, &backends, settings)
}

/// Renders haproxy.cfg for backends whose servers are in the given slots.
pub fn render_slotted(owner: &str, backends: &[SlottedBackend], settings: &ProxySettings) -> String {
    let mut cfg = String::new();
    let w = &mut cfg;
    let _ = writeln!(w, "# Generated by canary-controller for Kanary {owner}. Changes made here are overwritten.");
    let _ = writeln!(w, "global");
    let _ = writeln!(w, "    maxconn {}", settings.maxconn);
    let _ = writeln!(w, "    hard-stop-after {}", settings.hard_stop_after);
    if settings.protocol == Protocol::Http {
        // one thread: handing each request's log line to the ring's forwarder across threads cost 44 % of the
        // HTTP/2 throughput on 2 threads (bench/http); one thread matched a minimal 2-thread HAProxy
        let _ = writeln!(w, "    nbthread 1");
        let _ = writeln!(w, "    log ring@{REQUEST_LOG_RING} local0");
        let _ = writeln!(w);
        let _ = writeln!(w, "ring {REQUEST_LOG_RING}");
        let _ = writeln!(w, "    description \"each request's line, for the proxy agent\"");
        let _ = writeln!(w, "    format raw");
        let _ = writeln!(w, "    maxlen 1024");
        let _ = writeln!(w, "    size {REQUEST_LOG_RING_BYTES}");
        let _ = writeln!(w, "    timeout connect 5s");
        let _ = writeln!(w, "    timeout server 30s");
        let _ = writeln!(w, "    server agent 127.0.0.1:{REQUEST_LOG_PORT} log-proto octet-count");
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "defaults");
    let _ = writeln!(w, "    mode {}", settings.protocol.as_str());
    let _ = writeln!(w, "    timeout connect {}", settings.timeout_connect);
    let _ = writeln!(w, "    timeout client {}", settings.timeout_client);
    let _ = writeln!(w, "    timeout server {}", settings.timeout_server);
    let _ = writeln!(w, "    timeout client-fin 10s");
    let _ = writeln!(w, "    timeout server-fin 10s");
    if settings.protocol == Protocol::Http {
        // headers within a bound; an idle keep-alive connection may stay as long as any idle client
        let _ = writeln!(w, "    timeout http-request {HTTP_REQUEST_TIMEOUT}");
        let _ = writeln!(w, "    timeout http-keep-alive {}", settings.timeout_client);
    }
    let _ = writeln!(w, "    retries 2");
    let _ = writeln!(w, "    option redispatch");
    let _ = writeln!(w, "    default-server inter 2s fall 2 rise 1 observe layer4 error-limit 1 on-error mark-down");
    let _ = writeln!(w);
    let _ = writeln!(w, "frontend stats");
    let _ = writeln!(w, "    mode http");
    let _ = writeln!(w, "    bind {}", any_address(settings.stats_port));
    let _ = writeln!(w, "    timeout client 10s");
    let _ = writeln!(w, "    monitor-uri {HEALTH_PATH}");
    let _ = writeln!(w, "    http-request use-service prometheus-exporter if {{ path /metrics }}");
    let _ = writeln!(w, "    stats enable");
    let _ = writeln!(w, "    stats uri /stats");
    let _ = writeln!(w, "    stats refresh 10s");
    let _ = writeln!(w);
    let _ = writeln!(w, "frontend kanary");
    let _ = writeln!(w, "    bind {}", any_address(settings.port));
    // a draw per connection (a session's variables), or per request (a transaction's)
    let (rule, scope) = match settings.protocol {
        Protocol::Tcp => ("tcp-request content", "sess"),
        Protocol::Http => ("http-request", "txn"),
    };
    if settings.protocol == Protocol::Http {
        // each request's line of the request log, for the agent's request metrics
        let _ = writeln!(w, "    log global");
        let _ = writeln!(w, "    option dontlognull");
        let _ = writeln!(w, "    log-format \"{REQUEST_LOG_FORMAT}\"");
        let _ = writeln!(w, "    http-request set-var(txn.start) date(0,us)");
        let _ = writeln!(w, "    http-response set-var(txn.grpc) res.hdr(grpc-status)");
    }
    // cohorts and overrides: HTTP mode only
    let routing = settings.http.as_ref().filter(|_| settings.protocol == Protocol::Http);
    if routing.is_some_and(|r| r.sticky) {
        // the cookie names the route that answered, set when it named another (or none)
        let _ = writeln!(w, "    http-request set-var(txn.cohort) req.cook({STICKY_COOKIE})");
        let _ = writeln!(w, "    http-response set-var(txn.route) be_name,regsub(^{BACKEND_PREFIX},)");
        let _ = writeln!(
            w,
            "    http-response add-header Set-Cookie \"{STICKY_COOKIE}=%[var(txn.route)]; Path=/; HttpOnly; SameSite=Lax\" if !{{ var(txn.cohort),strcmp(txn.route) eq 0 }}"
        );
    }
    let _ = writeln!(w, "    {rule} set-var({scope}.r) rand(100)");
    let map = weights_path(settings);
    for i in 0..backends.len() {
        for key in ["t", "w"] {
            let _ = writeln!(w, "    {rule} set-var({scope}.{key}{i}) str({key}{i}),map_str_int({map},0)");
        }
    }
    // overrides and cohorts first, each only to a route with a weight and a live server (a rollback's weight
    // 0 ends them at once)
    if let Some(header) = routing.and_then(|r| r.header.as_deref()) {
        for (i, b) in backends.iter().enumerate() {
            let Some(value) = &b.header_value else { continue };
            let be = backend_name(&b.service);
            let _ = writeln!(
                w,
                "    use_backend {be} if {{ req.hdr({header}) -m str {value} }} {{ var(txn.w{i}) -m int gt 0 }} {{ nbsrv({be}) gt 0 }}"
            );
        }
    }
    if routing.is_some_and(|r| r.sticky) {
        for (i, b) in backends.iter().enumerate() {
            let be = backend_name(&b.service);
            let _ = writeln!(
                w,
                "    use_backend {be} if {{ req.cook({STICKY_COOKIE}) -m str {} }} {{ var(txn.w{i}) -m int gt 0 }} {{ nbsrv({be}) gt 0 }}",
                b.service
            );
        }
    }
    for (i, b) in backends.iter().enumerate() {
        let be = backend_name(&b.service);
        let _ = writeln!(
            w,
            "    use_backend {be} if {{ var({scope}.w{i}) -m int gt 0 }} {{ var({scope}.r),sub({scope}.t{i}) -m int lt 0 }} {{ nbsrv({be}) gt 0 }}"
        );
    }
    let _ = writeln!(w, "    # the drawn route has no live server: the first route that has one");
    for (i, b) in backends.iter().enumerate() {
        let be = backend_name(&b.service);
        let _ = writeln!(w, "    use_backend {be} if {{ var({scope}.w{i}) -m int gt 0 }} {{ nbsrv({be}) gt 0 }}");
    }
    for b in backends {
        let _ = writeln!(w);
        let _ = writeln!(w, "backend {}", backend_name(&b.service));
        let _ = writeln!(w, "    balance roundrobin");
        let proto = if b.h2c && settings.protocol == Protocol::Http { " proto h2" } else { "" };
        for (i, slot) in b.slots.iter().enumerate() {
            match slot {
                Some(s) => writeln!(w, "    server {} {} check{proto}", slot_name(i), s.endpoint()),
                None => writeln!(w, "    server {} {PARKED} check disabled{proto}", slot_name(i)),
            }
            .expect("writing to a String");
        }
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, ip: &str, port: u16) -> Server {
        Server { name: name.into(), address: ip.parse().unwrap(), port }
    }

    pub fn sample_routes() -> Vec<RouteBackend> {
        vec![
            RouteBackend {
                service: "myapp-v1".into(),
                weight: 80,
                servers: vec![server("myapp-v1-a", "10.1.0.5", 8080), server("myapp-v1-b", "10.1.0.6", 8080)],
                h2c: false,
                header_value: None,
            },
            RouteBackend {
                service: "myapp-v2".into(),
                weight: 20,
                servers: vec![server("myapp-v2-a", "10.1.0.7", 8080)],
                h2c: false,
                header_value: None,
            },
            RouteBackend {
                service: "myapp-v3".into(),
                weight: 0,
                servers: vec![server("myapp-v3-a", "fd00::7", 8080)],
                h2c: false,
                header_value: None,
            },
        ]
    }

    #[test]
    fn golden_config() {
        let rendered = render("default/simple-kanary-rule", &sample_routes(), &ProxySettings::default());
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/dataplane/testdata/simple-kanary-rule.cfg");
            std::fs::write(path, &rendered).unwrap();
            return;
        }
        let golden = include_str!("testdata/simple-kanary-rule.cfg");
        assert_eq!(rendered, golden, "rendered config differs from testdata/simple-kanary-rule.cfg:\n{rendered}");
    }

    /// HTTP mode: the same map and rules, drawn per request (a transaction's variables), HTTP/2 to an h2c
    /// route's servers.
    #[test]
    fn golden_http_config() {
        let mut routes = sample_routes();
        routes[1].h2c = true;
        (routes[0].header_value, routes[1].header_value) = (Some("never".into()), Some("always".into()));
        let http = HttpRouting { header: Some("x-canary".into()), sticky: true };
        let settings = ProxySettings { protocol: Protocol::Http, http: Some(http), ..ProxySettings::default() };
        let rendered = render("default/http-kanary-rule", &routes, &settings);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/dataplane/testdata/http-kanary-rule.cfg");
            std::fs::write(path, &rendered).unwrap();
            return;
        }
        let golden = include_str!("testdata/http-kanary-rule.cfg");
        assert_eq!(rendered, golden, "rendered config differs from testdata/http-kanary-rule.cfg:\n{rendered}");
        let tcp = render("default/http-kanary-rule", &routes, &ProxySettings::default());
        assert!(!tcp.contains("proto h2"), "HTTP/2 to servers only in HTTP mode:\n{tcp}");
    }

    #[test]
    fn the_weights_map_holds_cumulative_thresholds_and_weights() {
        let weights: Vec<i64> = sample_routes().iter().map(|r| r.weight).collect();
        assert_eq!(weights_map(&weights), "t0 80\nw0 80\nt1 100\nw1 20\nt2 100\nw2 0\n");
    }

    /// Every shape of input renders a config that HAProxy accepts (skipped outside CI without haproxy).
    #[test]
    fn rendered_configs_pass_haproxy_check() {
        if !e2e_support::tools::available("haproxy") {
            return;
        }
        let many: Vec<RouteBackend> = (0..16)
            .map(|i| RouteBackend {
                service: format!("svc-{i}"),
                weight: if i < 4 { 25 } else { 0 },
                servers: (0..20).map(|j| server(&format!("pod-{i}-{j}"), &format!("10.{i}.0.{j}"), 8080)).collect(),
                h2c: false,
                header_value: None,
            })
            .collect();
        let no_servers = vec![RouteBackend {
            service: "empty".into(),
            weight: 100,
            servers: vec![],
            h2c: false,
            header_value: None,
        }];
        let dir = tempfile::tempdir().unwrap();
        let settings = ProxySettings { files_dir: dir.path().to_str().unwrap().into(), ..ProxySettings::default() };
        let mut h2c = sample_routes();
        h2c[0].h2c = true;
        h2c[1].header_value = Some("always".into());
        let cases = [sample_routes(), many, no_servers, h2c];
        let routing = HttpRouting { header: Some("x-canary".into()), sticky: true };
        let http = ProxySettings { protocol: Protocol::Http, http: Some(routing), ..settings.clone() };
        for (i, (routes, settings)) in cases.iter().flat_map(|r| [(r, &settings), (r, &http)]).enumerate() {
            let path = dir.path().join(format!("{i}.cfg"));
            std::fs::write(&path, render("ns/name", routes, settings)).unwrap();
            std::fs::write(weights_path(settings), weights_map(routes.iter().map(|r| &r.weight))).unwrap();
            let out = std::process::Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().unwrap();
            assert!(out.status.success(), "haproxy -c rejected case {i}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    #[test]
    fn rendering_is_deterministic_and_weights_stay_out_of_the_config() {
        let a = render("x", &sample_routes(), &ProxySettings::default());
        assert_eq!(a, render("x", &sample_routes(), &ProxySettings::default()));
        let mut reweighted = sample_routes();
        reweighted[0].weight = 0;
        reweighted[2].weight = 80;
        assert_eq!(a, render("x", &reweighted, &ProxySettings::default()), "weights live in the map");
        assert!(a.contains("use_backend be_myapp-v3 if { var(sess.w2) -m int gt 0 }"));
    }

    #[test]
    fn slots_leave_room_for_a_rollout() {
        assert_eq!(slot_capacity(0), MIN_SLOTS);
        assert_eq!(slot_capacity(4), 8);
        assert_eq!(slot_capacity(5), 16);
        let fresh = SlottedBackend::fresh(&sample_routes()[0]);
        assert_eq!(fresh.slots.len(), 8);
        assert_eq!(fresh.slots.iter().flatten().count(), 2);
        assert!(fresh.slots[0].is_some() && fresh.slots[2].is_none());
    }
}
