//! The operator documentation stays true to the binary: every `rasp-proxy ...` command line in README.md and
//! docs/*.md parses with the `rasp-proxy` just built, every relative link points at a file, and the path
//! picture is an SVG.

#![expect(clippy::unwrap_used, reason = "test helpers: a failure here is a failed test")]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const BIN: &str = env!("CARGO_BIN_EXE_rasp-proxy");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn documents() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 3, "operations.md, tuning.md and security-model.md");
    files.extend(docs);
    files
}

/// Shell lines of fenced `sh` blocks (comments cut) and inline code spans: where documents show commands.
fn code_snippets(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if let Some(lang) = trimmed.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(lang.trim().to_owned()),
            };
            continue;
        }
        match fence.as_deref() {
            Some("sh" | "bash") => out.push(line.split(" #").next().unwrap_or("").to_owned()),
            Some(_) => {}
            None => out.extend(line.split('`').skip(1).step_by(2).map(str::to_owned)),
        }
    }
    out
}

/// The argument lists of every `rasp-proxy SUBCOMMAND ...` in a snippet, with placeholders made concrete:
/// `[--json]` dropped, `a|b` reduced to `a`, quotes and shell variables replaced by a word.
fn invocations(snippet: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = snippet;
    while let Some(at) = rest.find("rasp-proxy ") {
        let before = &rest[..at];
        let tail = &rest[at + "rasp-proxy ".len()..];
        rest = tail;
        // `kubectl -n rasp-proxy ...` and `name=rasp-proxy` name the namespace or a label, not the binary.
        let boundary = before.is_empty() || before.ends_with([' ', '/', '(']);
        if !boundary || before.ends_with("-n ") {
            continue;
        }
        let mut args = Vec::new();
        let mut optional = false;
        for word in shell_words(tail) {
            if ["|", ">", "2>&1", "&&"].contains(&word.as_str()) || word.starts_with(['#', '>']) {
                break;
            }
            let (word, stop) = match word.split_once(';') {
                Some((w, _)) => (w.to_owned(), true),
                None => (word, false),
            };
            // `[--mode native|skb]`: optional parts are left out.
            if word.starts_with('[') {
                optional = true;
            }
            if !optional {
                let word = word.split('|').next().unwrap_or(&word);
                if word.starts_with('$') {
                    args.push("x".to_owned());
                } else if !word.is_empty() {
                    args.push(word.to_owned());
                }
            }
            if word.ends_with(']') {
                optional = false;
            }
            if stop {
                break;
            }
        }
        let is_subcommand = args
            .first()
            .is_some_and(|a| a.chars().all(|c| c.is_ascii_lowercase() || c == '-'));
        if is_subcommand {
            out.push(args);
        }
    }
    out
}

/// Whitespace-separated words, with `"..."` kept together and its quotes removed.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[test]
fn every_documented_command_line_parses() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for args in code_snippets(&text).iter().flat_map(|s| invocations(s)) {
            // `--help` after the arguments makes clap parse them all (values, enums, subcommands) and exit 0
            // without doing anything.
            let out = Command::new(BIN).args(&args).arg("--help").output().unwrap();
            checked += 1;
            if !out.status.success() {
                failures.push(format!(
                    "{}: `rasp-proxy {}`: {}",
                    doc.display(),
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("")
                ));
            }
        }
    }
    assert!(checked >= 30, "found only {checked} command lines in the docs");
    assert!(
        failures.is_empty(),
        "documented commands that do not parse:\n{}",
        failures.join("\n")
    );
}

#[test]
fn command_extraction_reads_markdown() {
    let md = "Run `rasp-proxy ban ADDR --ttl 10m --reason \"two words\"` or `kubectl -n rasp-proxy get pods`.\n\
              ```sh\nsudo target/release/rasp-proxy xdp attach --iface eth0 [--mode native|skb] --max-bans 8   # a comment\n\
              jq x | while read -r a; do rasp-proxy ban \"$a\" --ttl 1m; done\n```\n\
              ```text\nrasp-proxy: error: nothing\n```\n";
    let found: Vec<Vec<String>> = code_snippets(md).iter().flat_map(|s| invocations(s)).collect();
    assert_eq!(
        found,
        [
            vec!["ban", "ADDR", "--ttl", "10m", "--reason", "two words"],
            vec!["xdp", "attach", "--iface", "eth0", "--max-bans", "8"],
            vec!["ban", "x", "--ttl", "1m"],
        ]
    );
}

#[test]
fn relative_links_resolve_and_the_path_picture_is_svg() {
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let dir = doc.parent().unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let end = tail.find(')').unwrap_or(tail.len());
            let target = tail[..end].split('#').next().unwrap_or("");
            rest = &tail[end..];
            if target.is_empty() || target.contains("://") {
                continue;
            }
            assert!(
                dir.join(target).exists(),
                "{} links to {target}, which does not exist",
                doc.display()
            );
        }
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains("(docs/path.svg)"),
        "README shows the path picture"
    );
    let svg = std::fs::read_to_string(repo().join("docs/path.svg")).unwrap();
    assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.contains("<title>"),
        "the picture has a title for screen readers"
    );
}
