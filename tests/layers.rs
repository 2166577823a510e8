//! The layering rule, checked from the source: every `crate::…` path in `src/` is an edge
//! between two modules. The check fails, naming the edge or the circle, when
//! - a module uses a module of a higher layer (ARCHITECTURE.md: `cli` → `stage` →
//!   `imds`, `sync`, `aws` → `state` → `base`), or
//! - modules use each other in a circle, inside one layer or across several.
//!
//! A module is a file (`src/stage/hooks.rs` is `stage::hooks`, `src/imds/mod.rs` is
//! `imds`); an edge goes to the longest module path that a `crate::` path starts with.
//! Comments are ignored; a `mod` declaration is not an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layers from the top; a module's layer is that of its first path segment.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["stage"],
    &[
        "imds",
        "sync",
        "secrets",
        "settings",
        "orchestrator",
        "events",
        "aws",
        "report",
    ],
    &["state"],
    &["base"],
];

fn layer(module: &str) -> usize {
    let first = module.split("::").next().unwrap_or_default();
    LAYERS
        .iter()
        .position(|l| l.contains(&first))
        .unwrap_or_else(|| panic!("module {module} is in no layer: add its folder to LAYERS"))
}

fn module_name(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments (line comments, doc comments, block comments).
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Every module path a file names after `crate::`, groups (`crate::{a, b::c}`) expanded.
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let item = item.trim();
                let path: String = item.chars().take_while(|&c| ident(c)).collect();
                if !path.is_empty() {
                    out.push(path);
                }
            }
        } else {
            let path: String = rest.chars().take_while(|&c| ident(c)).collect();
            out.push(path.trim_end_matches(':').to_string());
        }
    }
    out
}

fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| !f.ends_with("main.rs") && !f.ends_with("lib.rs"));
    let modules: BTreeSet<String> = files.iter().map(|f| module_name(&src, f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let from = module_name(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        let mut to = BTreeSet::new();
        for path in crate_paths(&code(&text)) {
            let segments: Vec<&str> = path.split("::").collect();
            let target = (1..=segments.len())
                .rev()
                .map(|n| segments[..n].join("::"))
                .find(|m| modules.contains(m));
            match target {
                Some(t) if t != from => {
                    to.insert(t);
                }
                Some(_) => {}
                None => panic!("{from}: crate::{path} names no module of src/"),
            }
        }
        graph.insert(from, to);
    }
    graph
}

/// One circle in the graph, if there is any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node).unwrap();
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn no_module_uses_a_higher_layer() {
    let upward: Vec<String> = edges()
        .iter()
        .flat_map(|(from, to)| to.iter().map(move |t| (from, t)))
        .filter(|(from, to)| layer(to) < layer(from))
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    assert!(
        upward.is_empty(),
        "imports from a lower layer up to a higher one:\n  {}",
        upward.join("\n  ")
    );
}

#[test]
fn no_import_circles() {
    if let Some(cycle) = find_cycle(&edges()) {
        panic!(
            "modules import each other in a circle: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_check_sees_edges_groups_and_circles() {
    let text = "use crate::a::b;\n// crate::commented\nuse crate::{c, d::e};\nlet x = crate::f::g();\nmy_crate::no;";
    assert_eq!(crate_paths(&code(text)), ["a::b", "c", "d::e", "f::g"]);
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("x", vec!["y"]),
        ("y", vec!["z"]),
        ("z", vec!["x"]),
        ("w", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(find_cycle(&graph).unwrap(), ["x", "y", "z", "x"]);
}
