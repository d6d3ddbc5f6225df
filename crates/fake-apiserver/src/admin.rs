//! Test controls over HTTP, under `/fake/`: fault injection and request counters, for tests that drive the
//! binary rather than the library.
//!
//! - `POST /fake/fail?count=N&code=500|429|409&retryAfter=S` fails the next N API requests
//! - `POST /fake/fail?seconds=S&code=...[&token=T][&resource=PLURAL]` fails for S seconds the requests with
//!   that bearer token and/or on that resource
//! - `POST /fake/latency?ms=N` delays every API request
//! - `POST /fake/drop-watches`, `POST /fake/expire-watches` (history compacted: resuming gets 410)
//! - `GET /fake/counters`, `DELETE /fake/counters`
//! - `POST /fake/tokens?token=T&user=U[&groups=G1,G2]` registers a bearer token (see `rbac`)
//! - `POST /fake/rbac?enforce=true|false` turns RBAC enforcement on or off
//! - `GET /fake/rbac-usage?user=U`: the requests U made, as `verb group resource` lines

use crate::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub async fn handle(state: &Arc<State>, method: &Method, path: &str, q: &HashMap<String, String>) -> Response {
    let num = |k: &str| q.get(k).and_then(|v| v.parse::<u64>().ok());
    match (method.as_str(), path) {
        ("POST", "fail") if q.contains_key("seconds") => {
            let code = num("code").unwrap_or(500) as u16;
            let scope = crate::FaultScope { token: q.get("token").cloned(), resource: q.get("resource").cloned() };
            let duration = Duration::from_secs(num("seconds").unwrap_or(0));
            state.fail_for_scoped(duration, code, num("retryAfter").map(|r| r as u32), Some(scope));
            (StatusCode::OK, "ok\n").into_response()
        }
        ("POST", "fail") => {
            let code = num("code").unwrap_or(500) as u16;
            state.fail_next(num("count").unwrap_or(1) as u32, code, num("retryAfter").map(|r| r as u32));
            (StatusCode::OK, "ok\n").into_response()
        }
        ("POST", "latency") => {
            state.set_latency(Duration::from_millis(num("ms").unwrap_or(0)));
            (StatusCode::OK, "ok\n").into_response()
        }
        ("POST", "drop-watches") => {
            state.drop_watches();
            (StatusCode::OK, "ok\n").into_response()
        }
        ("POST", "expire-watches") => {
            state.expire_watches();
            (StatusCode::OK, "ok\n").into_response()
        }
        ("GET", "counters") => {
            let body = serde_json::to_string_pretty(&state.counters()).unwrap_or_default();
            (StatusCode::OK, [("content-type", "application/json")], body).into_response()
        }
        ("DELETE", "counters") => {
            state.reset_counters();
            (StatusCode::OK, "ok\n").into_response()
        }
        ("POST", "tokens") => match (q.get("token"), q.get("user")) {
            (Some(token), Some(user)) => {
                let groups: Vec<&str> = q.get("groups").map(|g| g.split(',').collect()).unwrap_or_default();
                state.rbac.add_token(token, user, &groups);
                (StatusCode::OK, "ok\n").into_response()
            }
            _ => (StatusCode::BAD_REQUEST, "token and user are required\n").into_response(),
        },
        ("POST", "rbac") => {
            state.rbac.set_enforce(q.get("enforce").is_some_and(|e| e == "true"));
            (StatusCode::OK, "ok\n").into_response()
        }
        ("GET", "rbac-usage") => {
            let usage = state.rbac.usage(q.get("user").map(String::as_str).unwrap_or_default());
            let lines: String = usage.iter().map(|u| format!("{} {} {}\n", u.verb, u.group, u.resource)).collect();
            (StatusCode::OK, lines).into_response()
        }
        _ => (StatusCode::NOT_FOUND, "unknown fake-apiserver control\n").into_response(),
    }
}
