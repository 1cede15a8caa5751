//! The documentation's internal links resolve: every relative link in the
//! README, SECURITY.md, BENCHMARKS.md, deploy/README.md and docs/*.md names a
//! file that exists, and every `#anchor` names a heading of its target file,
//! spelled the way GitHub spells heading anchors. Sections move between files;
//! this is what catches the links they leave behind.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documents whose links are checked.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = [
        "README.md",
        "SECURITY.md",
        "BENCHMARKS.md",
        "deploy/README.md",
    ]
    .iter()
    .map(|p| root().join(p))
    .collect();
    let mut in_docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ is missing")
        .map(|e| e.expect("cannot read docs/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    in_docs.sort();
    docs.extend(in_docs);
    docs
}

/// The lines of a Markdown file that are not inside a fenced code block.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        match fence {
            Some(f) if t.starts_with(f) => fence = None,
            Some(_) => {}
            None if t.starts_with("```") => fence = Some("```"),
            None if t.starts_with("~~~") => fence = Some("~~~"),
            None => out.push((i + 1, line)),
        }
    }
    out
}

/// A line with its inline code spans removed (`[x](y)` inside backticks is
/// not a link).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-`
/// and `_` dropped, spaces turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a Markdown file offers: its headings' slugs, with GitHub's
/// `-1`, `-2` … suffixes for repeated headings.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let mut candidate = base.clone();
        let mut n = 0;
        while seen.contains(&candidate) {
            n += 1;
            candidate = format!("{base}-{n}");
        }
        seen.insert(candidate);
    }
    seen
}

/// The targets of the inline links `[text](target)` in a file, with line
/// numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            // `[text](target "title")`: the target ends at the first space.
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((n, target.to_owned()));
            rest = &after[end..];
        }
    }
    out
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

/// What is wrong with one link of `doc`, if anything.
fn check_link(doc: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("empty link".into());
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        doc.to_path_buf()
    } else {
        doc.parent().unwrap_or(Path::new(".")).join(path)
    };
    if !file.exists() {
        return Some(format!("{} does not exist", file.display()));
    }
    let anchor = anchor?;
    if file.extension().is_none_or(|e| e != "md") {
        return Some(format!("#{anchor} points into a file that is not Markdown"));
    }
    let text = std::fs::read_to_string(&file).ok()?;
    if anchors(&text).contains(anchor) {
        None
    } else {
        Some(format!(
            "no heading in {} has the anchor #{anchor}",
            file.display()
        ))
    }
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", doc.display()));
        for (line, target) in links(&text) {
            if is_external(&target) {
                continue;
            }
            checked += 1;
            if let Some(why) = check_link(&doc, &target) {
                broken.push(format!("{}:{line}: ({target}): {why}", doc.display()));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the link parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_knows_github_anchors_and_broken_links() {
    assert_eq!(
        slug("A fleet: shared cache and purge"),
        "a-fleet-shared-cache-and-purge"
    );
    assert_eq!(
        slug("`[cache.shared]` and forward_auth"),
        "cacheshared-and-forward_auth"
    );
    let text = "# Title\n\n## Limits\n\n```text\n# not a heading\n```\n\n## Limits\n";
    let a = anchors(text);
    assert!(a.contains("limits") && a.contains("limits-1"));
    assert!(!a.contains("not-a-heading"));
    let l = links("see [a](x.md#y) and `[b](not-a-link)`\n```\n[c](in-code)\n```\n");
    assert_eq!(l, vec![(1, "x.md#y".to_owned())]);

    let readme = root().join("README.md");
    assert!(check_link(&readme, "docs/configuration.md#routes").is_none());
    assert!(check_link(&readme, "docs/no-such-file.md").is_some());
    assert!(check_link(&readme, "docs/configuration.md#no-such-heading").is_some());
    assert!(check_link(&readme, "#no-such-heading").is_some());
}
