//! The shape of `src/` as `src/lib.rs`'s module map promises it: layered
//! bottom to top, a file imports only from its own layer or the ones below,
//! and no two files import each other, directly or around a loop. Read from
//! the source text (the `crate::` and `super::` paths outside `#[cfg(test)]`
//! blocks), so a new import that breaks the layering fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → layer, as in `src/lib.rs`.
const LAYERS: &[(&str, u8)] = &[
    ("http", 1),
    ("resilience", 1),
    ("secret", 1),
    ("token", 1),
    ("policy", 2),
    ("introspection", 2),
    ("cache", 2),
    ("upstream", 2),
    ("ops", 3),
    ("config", 4),
    ("app", 5),
    ("pipeline", 6),
    ("listen", 7),
    ("admin", 7),
];

const MAX_TOP_LEVEL: usize = 14;
const MAX_NON_TEST_LINES: usize = 900;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/cache/fleet/mod.rs` → `["cache", "fleet"]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The code outside `#[cfg(test)]` items and comments: a unit-test module may
/// import whatever it tests with. Blank lines stand in for what is dropped.
fn non_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            // Skip the next item: to the matching closing brace, or one line.
            let mut depth = 0i32;
            let mut opened = false;
            for l in lines.by_ref() {
                depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                opened |= l.contains('{');
                if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        // Comments name modules of every layer ("see [`crate::admin`]").
        if !line.trim_start().starts_with("//") {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Every `crate::a::b` and `super::x` path in `code`, as an absolute module path.
fn imports(code: &str, me: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|seg| {
                seg.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|seg| !seg.is_empty())
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        found.push(ident(&code[i + "crate::".len()..]));
    }
    for (i, _) in code.match_indices("super::") {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        // In `a/b.rs` and in `a/b/mod.rs` (both module a::b), `super` is `a`.
        let mut base: Vec<String> = me[..me.len().saturating_sub(1)].to_vec();
        base.extend(ident(&code[i + "super::".len()..]));
        found.push(base);
    }
    found
}

/// The file a module path lives in: the longest prefix that is a file.
fn file_of(path: &[String], files: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| files.contains_key(p))
}

fn layer(top: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == top)
        .unwrap_or_else(|| {
            panic!("src/{top}: a top-level module missing from LAYERS (and from lib.rs's map?)")
        })
        .1
}

#[test]
fn src_is_layered_without_import_cycles() {
    let mut paths = Vec::new();
    rs_files(&src(), &mut paths);
    let mut files = BTreeMap::new();
    for p in &paths {
        let m = module_of(p);
        if m.is_empty() || m == ["main"] || m.iter().any(|l| l == "tests") {
            continue; // lib.rs, main.rs, test-only files
        }
        files.insert(m, p.clone());
    }

    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (me, path) in &files {
        let code = non_test_code(&std::fs::read_to_string(path).unwrap());
        for target in imports(&code, me) {
            let Some(to) = file_of(&target, &files) else {
                continue; // a lib.rs item (`crate::install_crypto_provider`)
            };
            if &to == me || to.starts_with(me) {
                continue; // itself, or its own submodule
            }
            if layer(&to[0]) > layer(&me[0]) {
                wrong.push(format!(
                    "{} (layer {}) imports {} (layer {})",
                    me.join("::"),
                    layer(&me[0]),
                    to.join("::"),
                    layer(&to[0])
                ));
            }
            edges.entry(me.clone()).or_default().insert(to);
        }
    }
    assert!(
        wrong.is_empty(),
        "imports from a layer above:\n{}",
        wrong.join("\n")
    );

    // A cycle: a depth-first walk that meets a file still on its stack.
    fn walk(
        at: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
        cycles: &mut Vec<String>,
    ) {
        if done.contains(at) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| s == at) {
            let mut ring: Vec<String> = stack[i..].iter().map(|m| m.join("::")).collect();
            ring.push(at.join("::"));
            cycles.push(ring.join(" → "));
            return;
        }
        stack.push(at.clone());
        for next in edges.get(at).into_iter().flatten() {
            walk(next, edges, stack, done, cycles);
        }
        stack.pop();
        done.insert(at.clone());
    }
    let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
    for f in files.keys() {
        walk(f, &edges, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));

    // And between top-level modules: two folders that import each other are
    // one layer in disguise, even when no two of their files do.
    let mut tops: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (from, tos) in &edges {
        for to in tos {
            if from[0] != to[0] {
                tops.entry(vec![from[0].clone()])
                    .or_default()
                    .insert(vec![to[0].clone()]);
            }
        }
    }
    let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
    for top in tops.keys() {
        walk(top, &tops, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(
        cycles.is_empty(),
        "import cycles between top-level modules:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn src_stays_small_enough_to_read() {
    let tops: Vec<_> = std::fs::read_dir(src())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lib.rs" && n != "main.rs")
        .collect();
    assert!(
        tops.len() <= MAX_TOP_LEVEL,
        "{} top-level modules in src/ (at most {MAX_TOP_LEVEL}): {tops:?}",
        tops.len()
    );
    for t in &tops {
        layer(t.trim_end_matches(".rs"));
    }

    let mut paths = Vec::new();
    rs_files(&src(), &mut paths);
    let long: Vec<String> = paths
        .iter()
        .filter(|p| {
            // Unit-test files: `tests.rs`, or anything in a `tests/` folder.
            let rel = p.strip_prefix(src()).unwrap_or(p);
            !rel.ends_with("tests.rs") && !rel.iter().any(|c| c == "tests")
        })
        .filter_map(|p| {
            let n = non_test_code(&std::fs::read_to_string(p).unwrap())
                .lines()
                .count();
            (n > MAX_NON_TEST_LINES).then(|| format!("{}: {n} lines", p.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_NON_TEST_LINES} lines of non-test code:\n{}",
        long.join("\n")
    );

    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let pub_mods = lib.lines().filter(|l| l.starts_with("pub mod ")).count();
    assert!(
        pub_mods <= 10,
        "{pub_mods} `pub mod`s in lib.rs (at most 10)"
    );
}
