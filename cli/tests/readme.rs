//! The front page and the docs say only what is there: every command the README shows exists
//! (its `make` targets in the Makefile, its `ephemera` verbs and flags in the CLI's own help),
//! every link of the README, ARCHITECTURE.md and `docs/` resolves (files and headings), and
//! `docs/runspec.md` documents every field of `runspec.schema.json` and no other, and every
//! RunSpec the pages show is valid.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The lines of the fenced code blocks (not ```json/```text: those show data and output), and
/// every inline code span: what a reader would type.
fn commands(markdown: &str) -> Vec<String> {
    let mut out = vec![];
    let mut fence: Option<bool> = None;
    for line in markdown.lines() {
        let t = line.trim_start();
        if let Some(lang) = t.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(matches!(lang.trim(), "" | "bash" | "sh" | "shell")),
            };
            continue;
        }
        match fence {
            Some(true) => out.push(t.split(" #").next().unwrap_or("").trim().to_string()),
            Some(false) => {}
            None => out.extend(
                line.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(|s| s.trim().to_string()),
            ),
        }
    }
    // A command is `make …` or `ephemera <verb> …` (not, say, an email's subject
    // `ephemera <run>: SUCCEEDED`).
    let verb = |c: &str| {
        c.split_whitespace()
            .nth(1)
            .is_some_and(|v| v.chars().all(|ch| ch.is_ascii_lowercase()))
    };
    out.retain(|c| {
        c.starts_with("make ") || c == "make" || (c.starts_with("ephemera ") && verb(c))
    });
    out
}

fn make_targets() -> BTreeSet<String> {
    read("Makefile")
        .lines()
        .filter_map(|l| l.split_once(':').map(|(t, _)| t))
        .filter(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(String::from)
        .collect()
}

fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ephemera"))
        .args(args)
        .arg("--help")
        .output()
        .expect("ephemera --help");
    assert!(out.status.success(), "ephemera {args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_command_the_front_page_shows_exists() {
    let readme = read("README.md");
    let shown = commands(&readme);
    let targets = make_targets();
    let mut checked = 0;
    for c in &shown {
        let words: Vec<&str> = c.split_whitespace().collect();
        match words[0] {
            "make" => {
                // `make demo SCENARIO=exec`: the target is the first word that sets nothing.
                let target = words[1..]
                    .iter()
                    .find(|w| !w.contains('='))
                    .copied()
                    .unwrap_or("all");
                assert!(
                    targets.contains(target) || target == "all",
                    "the README shows `{c}`, but the Makefile has no target '{target}'"
                );
            }
            _ => {
                let verb = words[1];
                let usage = help(&[verb]);
                for flag in words.iter().filter(|w| w.starts_with("--")) {
                    let flag = flag.split('=').next().unwrap();
                    assert!(
                        usage.contains(flag),
                        "the README shows `{c}`, but `ephemera {verb} --help` has no {flag}:\n{usage}"
                    );
                }
            }
        }
        checked += 1;
    }
    // The front page shows the demo, the deploy, the CLI's verbs and the tests.
    assert!(checked >= 15, "{shown:?}");
    for verb in ["validate", "plan", "run", "status", "logs", "report"] {
        assert!(
            shown
                .iter()
                .any(|c| c.starts_with(&format!("ephemera {verb}"))),
            "{verb}"
        );
    }
    assert!(root().join(".ci/run").exists());
    // Issue 36: the front page shows the plan of the example RunSpec before any run.
    let first = |prefix: &str| shown.iter().position(|c| c.starts_with(prefix));
    let plan =
        first("ephemera plan events/runspec.json").expect("`ephemera plan events/runspec.json`");
    assert!(
        first("ephemera run").is_none_or(|run| plan < run),
        "the README shows `ephemera run` before `ephemera plan`: {shown:?}"
    );
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// Every `[text](target)` outside code.
fn links(markdown: &str) -> Vec<String> {
    let mut out = vec![];
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_link_of_the_docs_resolves() {
    let mut pages = vec!["README.md".to_string(), "ARCHITECTURE.md".to_string()];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            pages.push(format!("docs/{name}"));
        }
    }
    let mut broken = vec![];
    let mut seen = 0;
    for page in &pages {
        let text = read(page);
        let dir = Path::new(page).parent().unwrap_or(Path::new(""));
        for link in links(&text) {
            if link.starts_with("http://")
                || link.starts_with("https://")
                || link.starts_with("mailto:")
            {
                continue;
            }
            seen += 1;
            let (file, anchor) = match link.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (link.as_str(), None),
            };
            let target = match file {
                "" => PathBuf::from(page),
                f => dir.join(f),
            };
            let on_disk = root().join(&target);
            if !on_disk.exists() {
                broken.push(format!("{page}: {link} (no {})", target.display()));
                continue;
            }
            if let Some(a) = anchor {
                let headings = anchors(&std::fs::read_to_string(&on_disk).unwrap());
                if !headings.contains(a) {
                    broken.push(format!("{page}: {link} (no heading #{a})"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(seen >= 20, "{seen} links");
}

/// Every field of the schema as `section.field` (or a top-level field without children).
fn schema_fields() -> BTreeSet<String> {
    let schema: serde_json::Value = serde_json::from_str(&read("runspec.schema.json")).unwrap();
    let defs = &schema["$defs"];
    let resolve = |v: &serde_json::Value| -> serde_json::Value {
        let mut v = v.clone();
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(alts) = v[key].as_array() {
                if let Some(r) = alts.iter().find(|a| a.get("$ref").is_some()) {
                    v = r.clone();
                }
            }
        }
        match v["$ref"].as_str() {
            Some(r) => defs[r.rsplit('/').next().unwrap()].clone(),
            None => v,
        }
    };
    let mut out = BTreeSet::new();
    for (name, prop) in schema["properties"].as_object().unwrap() {
        if name == "$schema" {
            continue;
        }
        match resolve(prop)["properties"].as_object() {
            Some(children) => out.extend(children.keys().map(|c| format!("{name}.{c}"))),
            None => {
                out.insert(name.clone());
            }
        }
    }
    out
}

#[test]
fn the_runspec_reference_documents_every_field_of_the_schema_and_no_other() {
    let doc = read("docs/runspec.md");
    let fields = schema_fields();
    assert!(fields.contains("worker.instance_types"), "{fields:?}");
    // The first cell of each table row: the fields it documents, in backticks.
    let mut documented = BTreeSet::new();
    for row in doc.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap();
        documented.extend(
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|f| f.split(' ').next().unwrap().to_string()),
        );
    }
    let covered = |f: &String| {
        documented.contains(f)
            || f.split_once('.')
                .is_some_and(|(s, _)| documented.contains(&format!("{s}.*")))
    };
    let missing: Vec<&String> = fields.iter().filter(|f| !covered(f)).collect();
    assert!(
        missing.is_empty(),
        "docs/runspec.md does not document {missing:?}"
    );
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|d| {
            !fields.contains(*d)
                && !d
                    .strip_suffix(".*")
                    .is_some_and(|s| fields.iter().any(|f| f.starts_with(&format!("{s}."))))
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/runspec.md documents fields the schema does not have: {unknown:?}"
    );
}

/// The ```json blocks of a Markdown page.
fn json_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = vec![];
    let mut block: Option<String> = None;
    for line in markdown.lines() {
        match (&mut block, line.trim_start()) {
            (None, l) if l.starts_with("```json") => block = Some(String::new()),
            (Some(b), l) if l.starts_with("```") => {
                blocks.push(std::mem::take(b));
                block = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// Every ```json block of the README and `docs/` is JSON (a fragment, `"key": …`, as the
/// members of an object), and every whole RunSpec among them (an object with `run_id`) passes
/// `ephemera validate`'s checks once its `<ArtifactBucket>`/`<ExportBucket>` are named: what
/// a reader copies is accepted.
#[test]
fn every_runspec_the_docs_show_is_valid() {
    let mut pages = vec!["README.md".to_string()];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            pages.push(format!("docs/{name}"));
        }
    }
    let mut whole = 0;
    for page in &pages {
        for block in json_blocks(&read(page)) {
            let text = block
                .replace("<ArtifactBucket>", "my-ephemera-artifacts")
                .replace("<ExportBucket>", "my-ephemera-exports");
            let trimmed = text.trim();
            let value: serde_json::Value =
                match trimmed.starts_with('{') || trimmed.starts_with('[') {
                    true => serde_json::from_str(trimmed),
                    // A fragment: an object's members, perhaps ending in a comma or "…".
                    false => serde_json::from_str(&format!(
                        "{{{}}}",
                        trimmed
                            .trim_end_matches(['…', ' ', ',', '}'])
                            .trim_end_matches(',')
                    )),
                }
                .unwrap_or_else(|e| panic!("{page}: a ```json block is not JSON ({e}):\n{block}"));
            if value.get("run_id").is_some() {
                whole += 1;
                if let Err(e) = ephemera_core::admission::parse(&value) {
                    panic!("{page}: the RunSpec it shows is refused: {e}\n{block}");
                }
            }
        }
    }
    assert!(whole >= 2, "the README's and docs/container.md's RunSpecs");
}
