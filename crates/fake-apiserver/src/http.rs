//! The HTTP surface: parses Kubernetes API paths and verbs, applies injected faults, counts requests, and
//! answers with objects, lists, Tables, watch streams, discovery documents or `Status` errors.

use crate::errors::ApiError;
use crate::objects::{DeleteOptions, PatchBody, WriteOptions, present};
use crate::rbac::{Attributes, User};
use crate::registry::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Change, ChangeType};
use crate::{State, discovery, table};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

fn ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

type Query = HashMap<String, String>;

fn parse_query(uri: &Uri) -> Query {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect()
}

/// The name a field selector requires (a term `metadata.name=X` or `==`, beside any others), as the real
/// server's RequestInfo reads it for authorization.
fn selected_name(field_selector: &str) -> Option<String> {
    field_selector.split(',').find_map(|term| {
        let value = term.strip_prefix("metadata.name==").or_else(|| term.strip_prefix("metadata.name="))?;
        (!value.is_empty()).then(|| value.to_string())
    })
}

fn flag(q: &Query, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

/// Entry point for every request.
pub async fn handle(state: Arc<State>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    if let Some(admin) = path.strip_prefix("/fake/") {
        return crate::admin::handle(&state, &method, admin, &parse_query(&uri)).await;
    }
    match path.as_str() {
        "/version" => return ok(&discovery::version()),
        "/healthz" | "/readyz" | "/livez" => return (StatusCode::OK, "ok").into_response(),
        "/openapi/v3" => return ok(&discovery::openapi_v3_index(&state.inner.lock().expect("lock").registry)),
        _ => {}
    }
    if let Some(gv) = path.strip_prefix("/openapi/v3/") {
        let (group, version) = match gv.split('/').collect::<Vec<_>>().as_slice() {
            ["api", v] => (String::new(), v.to_string()),
            ["apis", g, v] => (g.to_string(), v.to_string()),
            _ => (String::new(), String::new()),
        };
        let doc = discovery::openapi_v3_group_version(&state.inner.lock().expect("lock").registry, &group, &version);
        return match doc {
            Some(d) => ok(&d),
            None => ApiError::no_such_resource().into_response(),
        };
    }
    if !(path == "/api" || path.starts_with("/api/") || path == "/apis" || path.starts_with("/apis/")) {
        return ApiError::no_such_resource().into_response();
    }
    let user = match state.rbac.authenticate(headers.get("authorization").and_then(|a| a.to_str().ok())) {
        Ok(user) => user,
        Err(e) => return e.into_response(),
    };
    match serve_api(&state, &user, &method, &path, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

struct Target {
    rt: Arc<ResourceType>,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

async fn serve_api(
    state: &Arc<State>,
    user: &User,
    method: &Method,
    path: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, version, rest): (&str, Option<&str>, &[&str]) = match segs.as_slice() {
        ["api"] => return Ok(ok(&discovery::core_versions())),
        ["apis"] => return Ok(ok(&discovery::group_list(&state.inner.lock().expect("lock").registry))),
        ["apis", g] => {
            return discovery::group(&state.inner.lock().expect("lock").registry, g)
                .map(|d| ok(&d))
                .ok_or_else(ApiError::no_such_resource);
        }
        ["api", v, rest @ ..] => ("", Some(*v), rest),
        ["apis", g, v, rest @ ..] => (*g, Some(*v), rest),
        _ => return Err(ApiError::no_such_resource()),
    };
    let version = version.unwrap_or_default();
    if rest.is_empty() {
        return discovery::resource_list(&state.inner.lock().expect("lock").registry, group, version)
            .map(|d| ok(&d))
            .ok_or_else(ApiError::no_such_resource);
    }
    let (ns, plural, name, sub) = match rest {
        ["namespaces", ns, res, tail @ ..] if !matches!(*res, "status" | "finalize") => {
            (Some(ns.to_string()), *res, tail.first().map(|s| s.to_string()), tail.get(1).map(|s| s.to_string()))
        }
        [res, tail @ ..] => (None, *res, tail.first().map(|s| s.to_string()), tail.get(1).map(|s| s.to_string())),
        [] => unreachable!("checked above"),
    };
    let rt =
        state.inner.lock().expect("lock").resource(group, version, plural).ok_or_else(ApiError::no_such_resource)?;
    if !rt.namespaced && ns.is_some() {
        return Err(ApiError::no_such_resource());
    }
    if rt.namespaced && ns.is_none() && name.is_some() {
        return Err(ApiError::no_such_resource());
    }
    if let Some(s) = &sub
        && !((s == "status" && rt.has_status) || (s == "token" && group.is_empty() && rt.plural == "serviceaccounts"))
    {
        return Err(ApiError::no_such_resource());
    }
    let target = Target { rt, ns, name, sub };
    let q = parse_query(uri);
    let verb = match (method.as_str(), target.name.is_some()) {
        ("GET", false) if flag(&q, "watch") => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", false) => "create",
        ("POST", true) if target.sub.as_deref() == Some("token") => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed(format!("{method} is not supported on this path"))),
    };
    let counted = match &target.sub {
        Some(s) => format!("{}/{s}", target.rt.qualified()),
        None => target.rt.qualified(),
    };
    state.count(verb, &counted);
    let request = Attributes {
        verb: verb.into(),
        group: target.rt.group.clone(),
        resource: match &target.sub {
            Some(s) => format!("{}/{s}", target.rt.plural),
            None => target.rt.plural.clone(),
        },
        namespace: target.ns.clone(),
        // as the real server's RequestInfo: a list or watch of one name (`fieldSelector=metadata.name=X`) is
        // authorized for that name, so a role with `resourceNames` can grant it
        name: target.name.clone().or_else(|| match verb {
            "list" | "watch" => selected_name(q.get("fieldSelector").map(String::as_str).unwrap_or_default()),
            _ => None,
        }),
    };
    state.rbac.authorize(&state.inner.lock().expect("lock"), user, &request)?;
    let token = headers.get("authorization").and_then(|a| a.to_str().ok()).and_then(|a| a.strip_prefix("Bearer "));
    if let Some(err) = state.faults.take_failure(token, &target.rt.plural).await {
        return Err(err);
    }
    if target.sub.as_deref() == Some("token") {
        if verb != "create" {
            return Err(ApiError::method_not_allowed(format!("{method} is not supported on serviceaccounts/token")));
        }
        let request = parse_body(&body)?;
        let inner = state.inner.lock().expect("lock");
        let account = inner.get(&target.rt, target.ns.as_deref(), target.name.as_deref().unwrap_or_default())?;
        return Ok(json_response(StatusCode::CREATED, &crate::rbac::token_request(&state.rbac, &account, &request)));
    }
    let opts = WriteOptions {
        manager: q.get("fieldManager").cloned().unwrap_or_else(|| manager_from_user_agent(headers)),
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        strict: q.get("fieldValidation").is_some_and(|v| v == "Strict"),
        force: flag(&q, "force"),
    };
    let status = target.sub.is_some();
    let ns = target.ns.as_deref();
    let rt = &target.rt;
    let shape = Shape::from_accept(headers.get("accept").and_then(|a| a.to_str().ok()).unwrap_or_default());
    match verb {
        "watch" => return watch(state, target, &q, shape).await,
        "list" => {
            let inner = state.inner.lock().expect("lock");
            return list(&inner, rt, ns, &q, shape);
        }
        "get" => {
            let inner = state.inner.lock().expect("lock");
            let obj = inner.get(rt, ns, target.name.as_deref().unwrap_or_default())?;
            return Ok(ok(&match shape {
                Shape::Table => {
                    let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
                    table::table(rt, &[obj], &rv, None)
                }
                Shape::Metadata => metadata_only(&obj),
                Shape::Object => obj,
            }));
        }
        _ => {}
    }
    let content_type = headers
        .get("content-type")
        .and_then(|c| c.to_str().ok())
        .map(|c| c.split(';').next().unwrap_or_default().trim().to_string())
        .unwrap_or_default();
    let parsed = if body.is_empty() {
        Value::Null
    } else if content_type == crate::protobuf::MEDIA_TYPE && matches!(verb, "create" | "update") {
        crate::protobuf::decode(&body).map_err(|e| ApiError::bad_request(format!("decoding the protobuf body: {e}")))?
    } else if content_type.contains("protobuf") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "protobuf bodies are decoded for create and update only",
        ));
    } else {
        parse_body(&body)?
    };
    let name = target.name.clone().unwrap_or_default();
    let mut inner = state.inner.lock().expect("lock");
    if rt.group == "rbac.authorization.k8s.io" && matches!(verb, "create" | "update" | "patch") && !opts.dry_run {
        // a role or binding must not grant what its writer does not hold: judge the object as it would be
        // stored (a dry run of the same write)
        let dry = WriteOptions { dry_run: true, ..opts.clone() };
        let preview = match verb {
            "create" => inner.create(rt, ns, parsed.clone(), &dry),
            "update" => inner.update(rt, ns, &name, parsed.clone(), status, &dry),
            _ if content_type == "application/apply-patch+yaml" => {
                inner.server_side_apply(rt, ns, &name, &parsed, status, &dry)
            }
            _ => inner.patch(rt, ns, &name, PatchBody { content_type: &content_type, body: &parsed }, status, &dry),
        };
        if let Ok(preview) = preview {
            state.rbac.check_escalation(&inner, user, &rt.plural, &preview)?;
        }
    }
    let result = match verb {
        "create" => inner.create(rt, ns, parsed, &opts).map(|o| (StatusCode::CREATED, o)),
        "update" => inner.update(rt, ns, &name, parsed, status, &opts).map(|o| (StatusCode::OK, o)),
        "patch" if content_type == "application/apply-patch+yaml" => {
            if !q.contains_key("fieldManager") {
                return Err(ApiError::bad_request("PATCH /apply requests require fieldManager"));
            }
            let existed = inner.get(rt, ns, &name).is_ok();
            // an apply that creates the object needs `create` too, as on a real server; an apply to a
            // subresource (status) never creates (404 when the object is gone), so it needs no `create`: asking
            // for it made a status write racing a delete count as a use of `create` on `kanaries/status`
            if !existed && !status {
                let create = Attributes { verb: "create".into(), ..request };
                state.rbac.authorize(&inner, user, &create)?;
            }
            inner
                .server_side_apply(rt, ns, &name, &parsed, status, &opts)
                .map(|o| (if existed { StatusCode::OK } else { StatusCode::CREATED }, o))
        }
        "patch" => {
            let body = PatchBody { content_type: &content_type, body: &parsed };
            inner.patch(rt, ns, &name, body, status, &opts).map(|o| (StatusCode::OK, o))
        }
        "delete" => {
            let opts = delete_options(&q, &parsed);
            let r = inner.delete(rt, ns, &name, &opts).map(|o| (StatusCode::OK, o));
            state.gc.notify_one();
            r
        }
        "deletecollection" => {
            let opts = delete_options(&q, &parsed);
            let filter = Filter::from_query(&q)?;
            let names: Vec<(Option<String>, String)> = inner
                .store
                .list(&rt.bucket, ns)
                .filter(|o| filter.matches_stored(rt, o))
                .map(|o| {
                    (
                        o["metadata"]["namespace"].as_str().map(String::from),
                        o["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let mut items = vec![];
            for (n_ns, n) in names {
                items.push(inner.delete(rt, n_ns.as_deref(), &n, &opts)?);
            }
            state.gc.notify_one();
            Ok((
                StatusCode::OK,
                json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {}, "items": items}),
            ))
        }
        _ => unreachable!("verbs are matched above"),
    }?;
    Ok(json_response(result.0, &result.1))
}

/// The default field manager: the user agent's program name, as the real server derives it.
fn manager_from_user_agent(headers: &HeaderMap) -> String {
    headers
        .get("user-agent")
        .and_then(|u| u.to_str().ok())
        .and_then(|u| u.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body).map_err(|e| ApiError::bad_request(format!("body is not UTF-8: {e}")))?;
    serde_saphyr::from_str::<Value>(text).map_err(|e| ApiError::bad_request(format!("error decoding body: {e}")))
}

fn delete_options(q: &Query, body: &Value) -> DeleteOptions {
    DeleteOptions {
        propagation: q
            .get("propagationPolicy")
            .cloned()
            .or_else(|| body["propagationPolicy"].as_str().map(String::from)),
        precondition_uid: body.pointer("/preconditions/uid").and_then(Value::as_str).map(String::from),
        precondition_rv: body.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(String::from),
        dry_run: q.get("dryRun").is_some_and(|v| v == "All")
            || body["dryRun"].as_array().is_some_and(|d| d.iter().any(|x| x == "All")),
        grace_period: q
            .get("gracePeriodSeconds")
            .and_then(|g| g.parse().ok())
            .or_else(|| body["gracePeriodSeconds"].as_i64()),
    }
}

struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        Ok(Filter {
            labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or_default())
                .map_err(ApiError::bad_request)?,
            fields: FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or_default())
                .map_err(ApiError::bad_request)?,
        })
    }
    fn matches(&self, presented: &Value) -> bool {
        self.labels.matches(&presented["metadata"]["labels"]) && self.fields.matches(presented)
    }

    /// Matches a stored object, presenting it (a copy) only when a field selector needs its served form.
    fn matches_stored(&self, rt: &ResourceType, stored: &Value) -> bool {
        self.labels.matches(&stored["metadata"]["labels"])
            && (self.fields.is_empty() || self.fields.matches(&present(rt, stored)))
    }
}

fn list(
    inner: &crate::objects::Inner,
    rt: &ResourceType,
    ns: Option<&str>,
    q: &Query,
    shape: Shape,
) -> Result<Response, ApiError> {
    let filter = Filter::from_query(q)?;
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let after: Option<(String, String)> = q.get("continue").filter(|c| !c.is_empty()).map(|c| {
        let mut parts = c.splitn(2, '/');
        (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string())
    });
    let rv = inner.store.current_rv().to_string();
    let mut items = vec![];
    let mut next = None;
    for o in inner.store.list(&rt.bucket, ns) {
        let key = crate::store::key_of(o);
        if after.as_ref().is_some_and(|a| key <= *a) {
            continue;
        }
        if !filter.matches_stored(rt, o) {
            continue;
        }
        let p = present(rt, o);
        if items.len() == limit {
            let last: &Value = items.last().expect("limit > 0");
            let (lns, lname) = crate::store::key_of(last);
            next = Some(format!("{lns}/{lname}"));
            break;
        }
        items.push(p);
    }
    if shape == Shape::Table {
        return Ok(ok(&table::table(rt, &items, &rv, next.as_deref())));
    }
    let mut meta = json!({"resourceVersion": rv});
    if let Some(n) = next {
        meta["continue"] = json!(n);
    }
    if shape == Shape::Metadata {
        let items: Vec<Value> = items.iter().map(metadata_only).collect();
        return Ok(ok(
            &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items}),
        ));
    }
    Ok(ok(
        &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": items}),
    ))
}

/// How objects are served, from the Accept header: whole, as a Table, or metadata only
/// (`as=PartialObjectMetadata`, what metadata-only watches and lists ask for).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Object,
    Table,
    Metadata,
}

impl Shape {
    fn from_accept(accept: &str) -> Shape {
        if accept.contains("as=Table") {
            Shape::Table
        } else if accept.contains("as=PartialObjectMetadata") {
            Shape::Metadata
        } else {
            Shape::Object
        }
    }

    /// A watched object in this shape (Tables are not served on watches: whole objects are).
    fn of(self, object: Value) -> Value {
        match self {
            Shape::Metadata => metadata_only(&object),
            Shape::Object | Shape::Table => object,
        }
    }
}

fn metadata_only(object: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn expired_line(rv: &str) -> Bytes {
    let status = ApiError::gone(format!("too old resource version: {rv}")).status_body();
    watch_line("ERROR", &status)
}

/// A watch stream: replays history after the requested resourceVersion (or synthetic ADDED events for
/// all objects), then follows changes; ends on timeoutSeconds, on an injected drop, or with 410 Gone.
async fn watch(state: &Arc<State>, target: Target, q: &Query, shape: Shape) -> Result<Response, ApiError> {
    let filter = Filter::from_query(q)?;
    let rt = target.rt.clone();
    let ns = target.ns.clone();
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let send_initial = flag(q, "sendInitialEvents");
    let bookmarks = flag(q, "allowWatchBookmarks");
    let timeout = q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut epoch = state.watch_epoch.subscribe();
    let (initial, sub, current_rv) = {
        let inner = state.inner.lock().expect("lock");
        let current = inner.store.current_rv();
        let replay_all = rv_param.is_empty() || rv_param == "0" || send_initial;
        let since = if replay_all { current } else { rv_param.parse::<u64>().unwrap_or(0) };
        let initial: Vec<Value> = if replay_all {
            inner
                .store
                .list(&rt.bucket, ns.as_deref())
                .filter(|o| filter.matches_stored(&rt, o))
                .map(|o| present(&rt, o))
                .collect()
        } else {
            vec![]
        };
        (initial, inner.store.subscribe(since), current)
    };
    let Some((backlog, mut live)) = sub else {
        let body = Body::from(expired_line(&rv_param));
        return Ok((StatusCode::OK, [("content-type", "application/json")], body).into_response());
    };
    tokio::spawn(async move {
        let last_rv = std::sync::atomic::AtomicU64::new(current_rv);
        for o in initial {
            if tx.send(watch_line("ADDED", &shape.of(o))).await.is_err() {
                return;
            }
        }
        if send_initial {
            let bm = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": current_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            if tx.send(watch_line("BOOKMARK", &bm)).await.is_err() {
                return;
            }
        }
        let relevant = |c: &Change| c.bucket == rt.bucket && ns.as_deref().is_none_or(|n| n == c.namespace);
        let emit = |c: &Change| -> Option<Bytes> {
            // every change up to here has been considered: bookmarks carry it, as a real server's progress does
            last_rv.store(c.rv, std::sync::atomic::Ordering::Relaxed);
            if !relevant(c) {
                return None;
            }
            let new = present(&rt, &c.object);
            let now_matches = filter.matches(&new);
            let was = c.old.as_ref().is_some_and(|o| filter.matches_stored(&rt, o));
            // with selectors, an object that starts matching is ADDED and one that stops matching is DELETED
            let kind = match (c.kind, was, now_matches) {
                (ChangeType::Deleted, false, false) => return None,
                (ChangeType::Deleted, _, _) => "DELETED",
                (_, false, true) => "ADDED",
                (_, true, true) => "MODIFIED",
                (_, true, false) => "DELETED",
                (_, false, false) => return None,
            };
            Some(watch_line(kind, &shape.of(new)))
        };
        for c in backlog {
            if let Some(line) = emit(&c)
                && tx.send(line).await.is_err()
            {
                return;
            }
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut bookmark_timer = tokio::time::interval(BOOKMARK_INTERVAL);
        bookmark_timer.tick().await;
        loop {
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                change = live.recv() => match change {
                    Ok(c) => {
                        if let Some(line) = emit(&c)
                            && tx.send(line).await.is_err() { return; }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let _ = tx.send(expired_line(&last_rv.load(std::sync::atomic::Ordering::Relaxed).to_string())).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = bookmark_timer.tick(), if bookmarks => {
                    let bm = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": last_rv.load(std::sync::atomic::Ordering::Relaxed).to_string()}});
                    if tx.send(watch_line("BOOKMARK", &bm)).await.is_err() { return; }
                }
                _ = epoch.changed() => return,
                _ = until_deadline => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok((StatusCode::OK, [("content-type", "application/json")], Body::from_stream(stream)).into_response())
}
