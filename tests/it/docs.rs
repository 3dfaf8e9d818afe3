//! The documentation's links: every relative link in README.md, docs/*.md and infra/README.md
//! names a file or folder that exists, and every `#anchor` one of its target's headings, as
//! GitHub renders them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files whose links are checked.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md"), root().join("infra/README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The text outside fenced code blocks, with code spans blanked: links and headings in code
/// are examples, not links.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if !fenced {
            out.push_str(line);
        }
        out.push('\n');
    }
    let spans = regex::Regex::new(r"`[^`]*`").unwrap();
    spans.replace_all(&out, "``").into_owned()
}

/// A heading's anchor as GitHub makes it: lower case, punctuation other than `-` and `_`
/// dropped, spaces made hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a Markdown file's headings give, a repeated one suffixed `-1`, `-2`, … as GitHub
/// does.
fn anchors(text: &str) -> Vec<String> {
    let link = regex::Regex::new(r"\[([^\]]*)\]\([^)]*\)").unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if fenced || !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&link.replace_all(&line[hashes..], "$1"));
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// What is wrong with one link of `doc`, if anything.
fn broken(doc: &Path, target: &str) -> Option<String> {
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let file = if path.is_empty() { doc.to_path_buf() } else { doc.parent().unwrap().join(path) };
    if !file.exists() {
        return Some(format!("{} does not exist", file.display()));
    }
    let anchor = anchor?;
    if file.extension().is_none_or(|e| e != "md") {
        // Anchors into other files (a source line, say) are GitHub's to resolve.
        return None;
    }
    let have = anchors(&std::fs::read_to_string(&file).unwrap());
    (!have.iter().any(|a| a == anchor))
        .then(|| format!("{} has no heading for #{anchor} (it has {have:?})", file.display()))
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let link = regex::Regex::new(r"!?\[[^\]]*\]\(([^)\s]+)\)").unwrap();
    let mut checked = 0;
    let mut problems = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for target in link.captures_iter(&prose(&text)).map(|c| c[1].to_string()) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            if let Some(why) = broken(&doc, &target) {
                let rel = doc.strip_prefix(root()).unwrap().display().to_string();
                problems.push(format!("{rel}: ({target}): {why}"));
            }
        }
    }
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
    // The docs hold well over a hundred relative links; far fewer means the scan went wrong.
    assert!(checked > 100, "only {checked} links found");
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    let doc = "# Title\n## `predict`: classify images\n```\n# not a heading\n```\n\
               ## Multi-host: one process, two ranks\n## Logs\n## Logs\n#hashtag\n\
               ## [Linked](x.md) heading — here\n";
    assert_eq!(
        anchors(doc),
        [
            "title",
            "predict-classify-images",
            "multi-host-one-process-two-ranks",
            "logs",
            "logs-1",
            "linked-heading--here"
        ]
    );
}
