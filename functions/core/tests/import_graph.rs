//! No import circle in `functions/core/src`: each module names the modules it uses (its
//! `use crate::…` and `super::…` lines, and paths such as `crate::caps::cap` in its code), and
//! those names must form a graph without a cycle, so that each module can be read, tested and
//! moved knowing only what is below it. The small types many modules share (`market`, `caps`)
//! sit on the ground floor and import nothing of the crate.
//!
//! Run it with `cargo test -p ephemera-core --test import_graph`. A failure names the circle,
//! `a -> b -> a`, and the lines that make each step.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the modules it names, each with the first line that names it.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

#[test]
fn the_core_has_no_import_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = read_graph(&src);
    assert!(
        graph.len() > 20,
        "read only {} modules from {}",
        graph.len(),
        src.display()
    );
    if let Some(circle) = find_cycle(&graph) {
        let steps: Vec<String> = circle
            .windows(2)
            .map(|w| format!("  {} -> {}: {}", w[0], w[1], graph[&w[0]][&w[1]]))
            .collect();
        panic!(
            "import circle in functions/core/src: {}\n{}\nmove what both sides need to a module below them both",
            circle.join(" -> "),
            steps.join("\n")
        );
    }
}

#[test]
fn a_circle_is_found_and_named() {
    let graph = graph_of(&[
        ("runspec", &["catalog", "market"]),
        ("catalog", &["runspec"]),
        ("market", &[]),
    ]);
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["catalog".into(), "runspec".into(), "catalog".into()])
    );
    // A longer one, behind a module that is not in it.
    let graph = graph_of(&[
        ("budget", &["rundoc"]),
        ("rundoc", &["verify"]),
        ("verify", &["payload"]),
        ("payload", &["rundoc"]),
    ]);
    assert_eq!(
        find_cycle(&graph),
        Some(vec![
            "rundoc".into(),
            "verify".into(),
            "payload".into(),
            "rundoc".into()
        ])
    );
    // A diamond is no circle.
    let graph = graph_of(&[
        ("report", &["verify", "rundoc"]),
        ("verify", &["rundoc"]),
        ("rundoc", &["caps"]),
        ("caps", &[]),
    ]);
    assert_eq!(find_cycle(&graph), None);
}

#[test]
fn the_names_a_module_uses_are_read_from_its_code_not_its_comments_or_tests() {
    let known: BTreeSet<String> = ["caps", "market", "rundoc", "runspec", "verify", "payload"]
        .map(String::from)
        .into();
    let text = r#"
//! Reads [`crate::payload`] in a comment only.
use crate::market::Market;
use crate::{caps, rundoc::CaughtError};
use crate::{
    // a group over several lines, as rustfmt writes a long one
    payload::bound,
};
use super::runspec::RunSpec;
fn f() -> usize { crate::verify::LIMIT }
#[cfg(test)]
mod tests {
    use crate::payload::bound;
}
"#;
    let named: Vec<String> = uses_of("report", text, &known).into_keys().collect();
    assert_eq!(
        named,
        ["caps", "market", "payload", "rundoc", "runspec", "verify"]
    );
}

fn graph_of(edges: &[(&str, &[&str])]) -> Graph {
    edges
        .iter()
        .map(|(m, to)| {
            let to = to.iter().map(|t| (t.to_string(), String::new())).collect();
            (m.to_string(), to)
        })
        .collect()
}

/// Every top-level module of `src` (a file `x.rs` or a folder `x/`) and the modules it names.
fn read_graph(src: &Path) -> Graph {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("functions/core/src") {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if name == "lib" || name == "main" {
            continue;
        }
        let text = match path.is_dir() {
            true => read_tree(&path),
            false if path.extension().is_some_and(|e| e == "rs") => {
                std::fs::read_to_string(&path).expect("a module's source")
            }
            false => continue,
        };
        files.insert(name.to_string(), text);
    }
    let known: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(m, text)| (m.clone(), uses_of(m, text, &known)))
        .collect()
}

/// A folder module's files, one after the other.
fn read_tree(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).expect("a module folder") {
        let path = entry.expect("a directory entry").path();
        match path.is_dir() {
            true => text.push_str(&read_tree(&path)),
            false => text.push_str(&std::fs::read_to_string(&path).expect("a module's source")),
        }
        text.push('\n');
    }
    text
}

/// The crate's modules that `text` (module `me`) names outside comments and its test module:
/// `crate::x`, `super::x` (the crate root, from a top-level module) and each name of a group,
/// `use crate::{x, y::Z}`.
fn uses_of(me: &str, text: &str, known: &BTreeSet<String>) -> BTreeMap<String, String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut named = BTreeMap::new();
    for line in joined_groups(code) {
        let line = line.as_str();
        for root in ["crate::", "super::"] {
            for (at, _) in line.match_indices(root) {
                let rest = &line[at + root.len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split(['}', ','])
                        .map(|item| item.trim().split("::").next().unwrap_or_default())
                        .collect(),
                    None => vec![rest],
                };
                for name in names {
                    let name: String = name
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if name != me && known.contains(&name) {
                        named.entry(name).or_insert_with(|| line.to_string());
                    }
                }
            }
        }
    }
    named
}

/// The code's lines, trimmed, without comments, each `crate::{` or `super::{` group that spans
/// several lines joined into one (rustfmt breaks a long group, one name a line).
fn joined_groups(code: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    let mut open = false;
    for line in code.lines().map(str::trim) {
        if line.starts_with("//") {
            continue;
        }
        match open {
            true => {
                let last = out.last_mut().expect("an open group's first line");
                last.push(' ');
                last.push_str(line);
            }
            false => out.push(line.to_string()),
        }
        let last = out.last().map(String::as_str).unwrap_or_default();
        let opens = last.contains("crate::{") || last.contains("super::{");
        open = opens && last.matches('{').count() > last.matches('}').count();
    }
    out
}

/// A circle of `graph`, as the modules along it with the first repeated at the end; None when
/// there is none. Depth-first, in name order, so the same graph names the same circle.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        m: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(m) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|p| p == m).unwrap_or(0);
                let mut circle = path[from..].to_vec();
                circle.push(m.to_string());
                return Some(circle);
            }
            None => {}
        }
        marks.insert(m.to_string(), Mark::Open);
        path.push(m.to_string());
        for next in graph.get(m).into_iter().flat_map(|to| to.keys()) {
            if let Some(circle) = visit(next, graph, marks, path) {
                return Some(circle);
            }
        }
        path.pop();
        marks.insert(m.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for m in graph.keys() {
        if let Some(circle) = visit(m, graph, &mut marks, &mut vec![]) {
            return Some(circle);
        }
    }
    None
}
