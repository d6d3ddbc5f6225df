//! The crate's module graph, read from its sources: no import circle, and the arrows point one way (the
//! runtime and the data plane name no controller; the proxy agent imports no controller). A module is a file
//! of `src/`; it imports another when its code (tests and comments apart) names a path into it, through
//! `crate::` or `super::`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of `src/` (`canary::reconcile`, `runtime`, ...) and its source.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            found.insert(parts.join("::"), std::fs::read_to_string(&path).unwrap());
        }
    }
    found
}

/// The code of a module without its tests and comments.
fn code(source: &str) -> String {
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    source.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The paths a module's code names from `prefix` on (`crate::`, `super::`), with `{a, b::c}` groups expanded.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut paths = vec![];
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{')).unwrap_or(rest.len());
        let head = &rest[..end];
        match head.find('{') {
            Some(open) => {
                let group_end = matching_brace(&rest[open..]).map_or(rest.len(), |e| open + e);
                let stem = &head[..open];
                for item in split_top(&rest[open + 1..group_end]) {
                    paths.extend(paths_after(&format!(" {prefix}{stem}{item}"), prefix));
                }
            }
            None => paths.push(head.trim_end_matches(':').to_string()),
        }
    }
    paths
}

fn matching_brace(text: &str) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The items of a `use` group, split at its top-level commas.
fn split_top(group: &str) -> Vec<String> {
    let (mut items, mut depth, mut current) = (vec![], 0, String::new());
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
        .into_iter()
        .map(|i| i.split_whitespace().next().unwrap_or_default().to_string())
        .filter(|i| !i.is_empty())
        .collect()
}

/// The module a path names: its longest prefix that is a module.
fn module_of(path: &[&str], modules: &BTreeMap<String, String>) -> Option<String> {
    (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| modules.contains_key(m))
}

/// Each module's imports of other modules.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut graph = BTreeMap::new();
    for (name, source) in &modules {
        let code = code(source);
        // `super::` of `a::b` (a/b.rs or a/b/mod.rs) is `a`
        let mut parent: Vec<&str> = name.split("::").collect();
        parent.pop();
        let mut imports = BTreeSet::new();
        for path in paths_after(&code, "crate::") {
            let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty() && *p != "self").collect();
            imports.extend(module_of(&parts, &modules));
        }
        for path in paths_after(&code, "super::") {
            let mut parts = parent.clone();
            parts.extend(path.split("::").filter(|p| !p.is_empty() && *p != "self"));
            imports.extend(module_of(&parts, &modules));
        }
        imports.remove(name);
        graph.insert(name.clone(), imports);
    }
    graph
}

/// The import circles of `graph` (its strongly connected components of more than one module).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // every module that reaches `from` and is reached by it is in its circle
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let mut circles: Vec<Vec<String>> = vec![];
    for module in graph.keys() {
        let circle: Vec<String> = reach(module).into_iter().filter(|m| reach(m).contains(module)).collect();
        if circle.len() > 1 && !circles.contains(&circle) {
            circles.push(circle);
        }
    }
    circles
}

#[test]
fn the_modules_import_one_another_in_no_circle() {
    let graph = graph();
    assert!(graph.contains_key("canary::reconcile") && graph["canary::reconcile"].contains("canary::validate"));
    let circles = circles(&graph);
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}

#[test]
fn the_runtime_the_data_plane_and_the_agent_name_no_controller() {
    let graph = graph();
    let controllers = ["canary", "kanary", "operator", "agent"];
    let mut upward = vec![];
    for (module, imports) in &graph {
        let layer = module.split("::").next().unwrap_or_default();
        let forbidden: &[&str] = match layer {
            "runtime" | "dataplane" | "names" | "report" | "conditions" | "api" => &controllers,
            "agent" => &["canary", "kanary", "operator"],
            _ => &[],
        };
        for import in imports {
            if forbidden.contains(&import.split("::").next().unwrap_or_default()) {
                upward.push(format!("{module} -> {import}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports against the layers: {upward:#?}");
}

#[test]
fn the_check_sees_a_circle_when_there_is_one() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), ["b".to_string()].into()),
        ("b".to_string(), ["c".to_string()].into()),
        ("c".to_string(), ["a".to_string()].into()),
        ("d".to_string(), ["a".to_string()].into()),
    ]
    .into();
    assert_eq!(circles(&graph), vec![vec!["a".to_string(), "b".to_string(), "c".to_string()]]);
    let modules: BTreeMap<String, String> =
        [("x".to_string(), String::new()), ("x::y".to_string(), String::new())].into();
    let paths = paths_after("use crate::x::{y::Z, W};\nlet v = crate::x::y::f();", "crate::");
    assert_eq!(paths, ["x::y::Z", "x::W", "x::y::f"]);
    assert_eq!(module_of(&["x", "y", "Z"], &modules).as_deref(), Some("x::y"));
}
