//! What `kubectl canary get` shows of a Canary: where its release stands, its steps, the proxy's routes
//! with their weights, the window being measured (with HTTP traffic, each route's requests so far) and the
//! last judged window (connections per route, each check's value, bound and verdict). Pure: text from the Canary and its Kanary, no client in scope.

use canary_controller::api::canary::{Canary, Evidence, Phase, ReleaseStatus, Window, WindowRequests};
use canary_controller::canary::release::{Settings, describe};
use kube::ResourceExt;
use std::fmt::Write;

/// Text read from the API (status messages hold webhook and Prometheus answers) made safe for a terminal:
/// every control character but the line break is shown escaped (`\u{1b}`), so that no text can move the
/// cursor, clear the screen or retitle the terminal.
pub fn safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The routes of a release's Kanary: (Service, weight, the addresses its status lists for it), in its order
/// (stable, canary, baseline).
pub fn routes(kanary: &serde_json::Value) -> Vec<(String, i64, Option<usize>)> {
    let routes = kanary["spec"]["routes"].as_array().cloned().unwrap_or_default();
    let endpoints = kanary["status"]["endpointStatuses"].as_array().cloned().unwrap_or_default();
    routes
        .iter()
        .map(|r| {
            let service = r["backend"]["serviceName"].as_str().unwrap_or("?").to_string();
            let ips = endpoints.iter().find(|e| e["ServiceName"] == service.as_str()).and_then(|e| e["Ips"].as_array());
            (service, r["weight"].as_i64().unwrap_or(0), ips.map(Vec::len))
        })
        .collect()
}

/// What the Kanary's status says of its proxy pods (`2/2 proxy pods serve revision ...`).
fn proxies(kanary: &serde_json::Value) -> Option<String> {
    let conditions = kanary["status"]["conditions"].as_array()?;
    let synced = conditions.iter().find(|c| c["type"] == "DataPlaneSynced")?;
    Some(format!(
        "{} ({})",
        synced["message"].as_str().unwrap_or_default(),
        synced["reason"].as_str().unwrap_or_default()
    ))
}

/// One line per Canary for `list`: name, target, phase, weight, step.
pub fn list_line(canary: &Canary) -> [String; 5] {
    let release = canary.status.as_ref().and_then(|s| s.release.as_ref());
    [
        canary.name_any(),
        canary.spec.target_deployment_name.clone(),
        release.map(|r| format!("{:?}", r.phase)).unwrap_or_else(|| "-".into()),
        release.map(|r| format!("{}%", r.weight)).unwrap_or_else(|| "-".into()),
        release.map(|r| r.step_description.clone()).unwrap_or_else(|| "-".into()),
    ]
}

/// Rows as columns padded to their widest cell.
pub fn table(header: [&str; 5], rows: &[[String; 5]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = header.map(String::from);
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", cells.join("   ").trim_end());
    }
    out
}

/// The full view of a Canary (and its Kanary's spec, when there is one).
pub fn render(canary: &Canary, kanary: Option<&serde_json::Value>) -> String {
    let mut out = String::new();
    let ns = canary.namespace().unwrap_or_default();
    let _ = writeln!(
        out,
        "Canary {} (namespace {ns}): target Deployment {}",
        canary.name_any(),
        canary.spec.target_deployment_name
    );
    let images: Vec<String> = canary.spec.target_containers.iter().map(|c| format!("{}={}", c.name, c.image)).collect();
    let _ = writeln!(out, "Images:   {}", images.join(", "));
    let status = canary.status.clone().unwrap_or_default();
    for c in status.conditions.iter().filter(|c| c.type_ == "Ready" && c.status != "True") {
        let _ = writeln!(out, "Problem:  {}: {}", c.reason, c.message);
    }
    let Some(release) = &status.release else {
        let ready = status.ready_replicas.unwrap_or(0);
        let _ = writeln!(out, "No release (the Canary has no traffic): canary Deployment {ready} ready");
        return out;
    };
    let _ = writeln!(out, "Phase:    {:?}{}", release.phase, if canary.spec.paused { " (spec.paused)" } else { "" });
    let _ = writeln!(out, "Step:     {}", release.step_description);
    let _ = writeln!(out, "Weight:   {}% to the canary", release.weight);
    if !release.message.is_empty() {
        let _ = writeln!(out, "Message:  {}", release.message);
    }
    steps(&mut out, canary, release);
    if let Some(kanary) = kanary {
        let _ = writeln!(out, "\nRoutes (Kanary {}):", canary.name_any());
        for (service, weight, endpoints) in routes(kanary) {
            let endpoints = endpoints.map(|n| format!("{n} endpoint(s)")).unwrap_or_default();
            let _ = writeln!(out, "  {service:<30} {weight:>3}%   {endpoints}");
        }
        if let Some(proxies) = proxies(kanary) {
            let _ = writeln!(out, "  proxies: {proxies}");
        }
    }
    if let Some(open) = &release.window {
        current_window(&mut out, canary, release, open);
    }
    if let Some(evidence) = release.evidence.last() {
        window(&mut out, evidence);
    }
    out
}

/// The window being measured: when it started, and with HTTP traffic each route's requests so far.
fn current_window(out: &mut String, canary: &Canary, release: &ReleaseStatus, open: &Window) {
    let interval = Settings::of(&canary.spec).interval.as_secs();
    let started = open.started_at.0.strftime("%H:%M:%S");
    let _ = write!(
        out,
        "\nCurrent window (step {}, weight {}%, {interval}s from {started})",
        release.step + 1,
        release.weight
    );
    match (&open.requests, &open.measured_at) {
        (Some(requests), Some(at)) => {
            let so_far = at.0.duration_since(open.started_at.0).as_secs().max(0);
            let _ = writeln!(out, ": so far, {so_far}s in (as of {}):", at.0.strftime("%H:%M:%S"));
            requests_table(out, requests);
        }
        _ => {
            let _ = writeln!(out, ": measuring");
        }
    }
}

/// Each route's request rate, success rate and percentiles.
fn requests_table(out: &mut String, requests: &WindowRequests) {
    let _ =
        writeln!(out, "  requests:   {:<8} {:>9} {:>9} {:>9} {:>9} {:>9}", "", "per s", "success", "p50", "p90", "p99");
    for (route, r) in [("canary", &requests.canary), ("stable", &requests.stable)] {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        let success = r.success_rate.map_or("-".to_string(), |v| format!("{v:.2} %"));
        let _ = writeln!(
            out,
            "              {route:<8} {:>9.1} {success:>9} {:>9} {:>9} {:>9}",
            r.rate,
            ms(r.p50_ms),
            ms(r.p90_ms),
            ms(r.p99_ms)
        );
    }
}

fn steps(out: &mut String, canary: &Canary, release: &ReleaseStatus) {
    let settings = Settings::of(&canary.spec);
    let _ = writeln!(out, "\nSteps:");
    for (i, step) in settings.steps.iter().enumerate() {
        let i = i as i32;
        let mark = match (i.cmp(&release.step), release.phase) {
            (std::cmp::Ordering::Less, _) => "[x]",
            (std::cmp::Ordering::Equal, Phase::RolledBack | Phase::Aborted) => "[!]",
            (std::cmp::Ordering::Equal, _) => "[>]",
            _ => "[ ]",
        };
        let _ = writeln!(out, "  {mark} {:>2}. {}", i + 1, describe(step));
    }
    let promoted = match release.phase {
        Phase::Succeeded => "[x]",
        Phase::Promoting => "[>]",
        _ => "[ ]",
    };
    let _ = writeln!(out, "  {promoted}     promotion");
}

fn window(out: &mut String, e: &Evidence) {
    let _ = writeln!(
        out,
        "\nLast window (step {}, weight {}%, {} to {}): {:?}",
        e.step + 1,
        e.weight,
        e.started_at.0.strftime("%H:%M:%S"),
        e.finished_at.0.strftime("%H:%M:%S"),
        e.verdict
    );
    let _ = writeln!(out, "  connections: canary {}, stable {}", e.canary_sessions, e.stable_sessions);
    if let Some(requests) = &e.requests {
        requests_table(out, requests);
    }
    for m in &e.metrics {
        let name = canary_controller::canary::release::metric_name(m);
        let value = match (&m.no_data, &m.comparison) {
            (Some(why), _) => format!("no data ({why})"),
            (None, Some(c)) => format!(
                "effect {:+} p={:.4} ({}, {}/{} samples)",
                m.value, c.p_value, c.judgement, c.canary_samples, c.baseline_samples
            ),
            (None, None) => format!("{}", m.value),
        };
        let _ = writeln!(out, "  {name:<20} {:<12} {:<22} {value}", format!("{:?}", m.verdict), m.bound);
        if let Some(query) = &m.query {
            let _ = writeln!(out, "  {:<20} {query}", "");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canary(status: serde_json::Value) -> Canary {
        serde_json::from_value(json!({"apiVersion": "canary.k8s.wantedly.com/v1beta1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"targetDeploymentName": "app", "targetContainers": [{"name": "app", "image": "app:v2"}],
                "traffic": {"service": "app", "frontService": "app-front"},
                "steps": [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 50}]},
            "status": status}))
        .unwrap()
    }

    #[test]
    fn text_from_the_api_cannot_drive_the_terminal() {
        // issue: status text (which holds webhook answers) was printed raw
        let hostile = "step 1 failed: HTTP 500: \u{1b}]0;pwned\u{7}\u{1b}[2J\r\u{9b}31m ok";
        let c = canary(json!({"release": {"revision": "app=app:v2", "phase": "Paused", "step": 0, "weight": 0,
            "message": hostile}}));
        let shown = safe(&render(&c, None));
        assert!(!shown.chars().any(|c| c.is_control() && c != '\n'), "{shown:?}");
        assert!(shown.contains("\\u{1b}]0;pwned\\u{7}"), "{shown}");
        let listed = safe(&table(["NAME", "TARGET", "PHASE", "WEIGHT", "STEP"], &[list_line(&c)]));
        assert!(!listed.chars().any(|c| c.is_control() && c != '\n'), "{listed:?}");
        assert_eq!(safe("a\nb"), "a\nb");
    }

    #[test]
    fn the_view_shows_steps_routes_and_the_last_windows_checks() {
        let c = canary(json!({"release": {"revision": "app=app:v2", "phase": "Progressing", "step": 2,
            "stepDescription": "3/3 setWeight 50", "weight": 50, "message": "waiting for every proxy pod to serve weight 50",
            "evidence": [{"step": 1, "weight": 20, "startedAt": "2026-12-02T10:00:00Z", "finishedAt": "2026-12-02T10:00:30Z",
                "canarySessions": 120, "stableSessions": 480, "verdict": "Passed",
                "metrics": [{"metric": "errorRate", "value": 0.01, "bound": "max 0.05", "verdict": "Passed"},
                    {"query": "sum(rate(x[30s]))", "value": 0.0, "noData": "the query returned NaN", "bound": "max 1", "verdict": "Inconclusive"}]}]}}));
        let kanary = json!({"spec": {"routes": [{"backend": {"serviceName": "web-stable"}, "weight": 50},
            {"backend": {"serviceName": "web-canary"}, "weight": 50}]},
            "status": {"endpointStatuses": [{"ServiceName": "web-canary", "Weight": 50, "Ips": ["10.0.0.9"]}],
                "conditions": [{"type": "DataPlaneSynced", "status": "True", "reason": "Synced",
                    "message": "2/2 proxy pods serve revision abc"}]}});
        let text = render(&c, Some(&kanary));
        for wanted in [
            "Phase:    Progressing",
            "Weight:   50% to the canary",
            "[x]  1. setWeight 20",
            "[x]  2. analysis",
            "[>]  3. setWeight 50",
            "[ ]     promotion",
            "web-canary                      50%   1 endpoint(s)",
            "proxies: 2/2 proxy pods serve revision abc (Synced)",
            "Last window (step 2, weight 20%, 10:00:00 to 10:00:30): Passed",
            "connections: canary 120, stable 480",
            "ErrorRate",
            "max 0.05",
            "no data (the query returned NaN)",
            "sum(rate(x[30s]))",
        ] {
            assert!(text.contains(wanted), "{wanted:?} missing from:\n{text}");
        }
    }

    #[test]
    fn an_http_window_shows_each_routes_request_rate_success_and_percentiles() {
        let route = |rate: f64, success: f64, p99: f64| {
            json!({"requests": (rate * 30.0) as u64, "rate": rate,
            "successRate": success, "p50Ms": 1.2, "p90Ms": 1.8, "p99Ms": p99})
        };
        let c = canary(json!({"release": {"revision": "app=app:v2", "phase": "RolledBack", "step": 1, "weight": 0,
            "evidence": [{"step": 1, "weight": 20, "startedAt": "2026-12-02T10:00:00Z", "finishedAt": "2026-12-02T10:00:30Z",
                "canarySessions": 1200, "stableSessions": 4800, "verdict": "Failed",
                "requests": {"canary": route(40.0, 97.9, 33.5), "stable": route(160.0, 100.0, 2.4)},
                "metrics": [{"metric": "requestSuccessRate", "value": 97.9, "stableValue": 100.0, "bound": "maxBelowStable 0.5", "verdict": "Failed"}]}]}}));
        let text = render(&c, None);
        assert!(text.contains("per s   success       p50       p90       p99"), "{text}");
        assert!(text.contains("canary        40.0   97.90 %    1.2 ms    1.8 ms   33.5 ms"), "{text}");
        assert!(text.contains("stable       160.0  100.00 %    1.2 ms    1.8 ms    2.4 ms"), "{text}");
        let said = crate::explain::explain(&c, &[]).join(" ");
        assert!(said.contains("HTTP: the canary 1200 requests (40/s), 97.9% succeeded, p99 33.5 ms"), "{said}");
    }

    #[test]
    fn the_current_http_window_shows_each_routes_requests_so_far() {
        let route = |requests: u64, rate: f64, p99: f64| json!({"requests": requests, "rate": rate, "successRate": 100.0, "p50Ms": 1.0, "p90Ms": 1.5, "p99Ms": p99});
        let c = canary(json!({"release": {"revision": "app=app:v2", "phase": "Progressing", "step": 1, "weight": 20,
            "window": {"startedAt": "2026-12-02T10:00:00Z", "counters": {}, "measuredAt": "2026-12-02T10:00:20Z",
                "requests": {"canary": route(800, 40.0, 3.1), "stable": route(3200, 160.0, 2.4)}}}}));
        let text = render(&c, None);
        let wanted = "Current window (step 2, weight 20%, 60s from 10:00:00): so far, 20s in (as of 10:00:20):";
        assert!(text.contains(wanted), "{text}");
        assert!(text.contains("canary        40.0  100.00 %    1.0 ms    1.5 ms    3.1 ms"), "{text}");
        assert!(text.contains("stable       160.0  100.00 %    1.0 ms    1.5 ms    2.4 ms"), "{text}");
        let said = crate::explain::explain(&c, &[]).join(" ");
        let wanted = "The current window (step 2, at 20%) is 20s into its 60s: so far the canary 800 requests (40/s), \
                      100% succeeded, p99 3.1 ms; stable 3200 requests (160/s)";
        assert!(said.contains(wanted), "{said}");
        // a window not read yet (a TCP release, or just started) says only that it measures
        let tcp = canary(json!({"release": {"revision": "app=app:v2", "phase": "Progressing", "step": 1, "weight": 20,
            "window": {"startedAt": "2026-12-02T10:00:00Z", "counters": {}}}}));
        assert!(render(&tcp, None).contains("Current window (step 2, weight 20%, 60s from 10:00:00): measuring"));
        assert!(!crate::explain::explain(&tcp, &[]).join(" ").contains("current window"));
    }

    #[test]
    fn a_rolled_back_step_is_marked_and_a_canary_without_traffic_says_so() {
        let c = canary(json!({"release": {"revision": "r", "phase": "RolledBack", "step": 1, "weight": 0}}));
        assert!(render(&c, None).contains("[!]  2. analysis"));
        let plain = canary(json!({"readyReplicas": 1}));
        assert!(render(&plain, None).contains("No release"));
        let rows = [list_line(&c), list_line(&plain)];
        let listed = table(["NAME", "TARGET", "PHASE", "WEIGHT", "STEP"], &rows);
        assert!(listed.contains("RolledBack") && listed.lines().count() == 3, "{listed}");
    }
}
