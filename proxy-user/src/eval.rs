//! `rasp-proxy eval`: runs the inspection pipeline in-process over request corpora (JSONL, one request per
//! line, the format of `shared/corpora/README.md`) and reports, per file and per category, how many attacks
//! were caught, how many benign requests were wrongly flagged, and the inspector's throughput.
//!
//! Each line becomes a [`RequestView`] exactly as the proxy builds one, and goes through the same
//! [`inspect`]; only the time spent in [`inspect`] counts towards requests/s.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use base64::Engine as _;
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use serde::{Deserialize, Serialize};

use crate::{
    Error,
    inspect::{Policy, RequestView, inspect, inspect_exhaustive},
};

/// Arguments of `rasp-proxy eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Corpus files (JSONL).
    #[arg(long, num_args = 1.., required = true)]
    pub corpus: Vec<PathBuf>,
    /// Print the results as one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Paranoia level (1-4) to evaluate at; the default policy's otherwise.
    #[arg(long)]
    pub paranoia: Option<u8>,
    /// Print up to N wrongly classified requests per file (missed attacks and flagged benign requests) with
    /// the rules involved, to stderr.
    #[arg(long, default_value_t = 0)]
    pub explain: usize,
    /// Write every request's full verdict (score, rules, locations, excerpts) to this file, one JSON line per
    /// request: diffing two such files shows exactly which requests a change to the inspector affected, where
    /// the per-category counts only show that something did.
    #[arg(long, value_name = "FILE")]
    pub verdicts: Option<PathBuf>,
    /// Also inspect every request without the prefilter and fail if any verdict differs: the prefilter must
    /// only ever skip work that cannot change a verdict. Only the prefiltered `inspect()` is timed.
    #[arg(long)]
    pub check_prefilter: bool,
}

/// One corpus line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CorpusRequest {
    #[serde(rename = "id")]
    _id: String,
    label: Label,
    category: String,
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_b64: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Label {
    Attack,
    Benign,
}

/// Counts for one category (or a whole file).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    pub attacks: u64,
    pub attacks_detected: u64,
    pub benign: u64,
    pub benign_flagged: u64,
}

impl Counts {
    fn add(&mut self, label: Label, flagged: bool) {
        match label {
            Label::Attack => {
                self.attacks += 1;
                self.attacks_detected += u64::from(flagged);
            }
            Label::Benign => {
                self.benign += 1;
                self.benign_flagged += u64::from(flagged);
            }
        }
    }
}

/// Results for one corpus file.
#[derive(Debug, Serialize)]
pub struct FileReport {
    pub file: String,
    pub requests: u64,
    pub bad_lines: u64,
    pub total: Counts,
    pub categories: BTreeMap<String, Counts>,
    /// Requests per second through `inspect()` alone, one core.
    pub requests_per_sec: f64,
}

/// Runs the command.
pub fn run(args: &EvalArgs) -> Result<(), Error> {
    let mut policy = Policy::default();
    if let Some(p) = args.paranoia {
        policy.paranoia = p;
    }
    let mut verdicts = match &args.verdicts {
        Some(p) => Some(std::io::BufWriter::new(File::create(p).map_err(|e| {
            Error::io(format!("creating the verdicts file {}", p.display()), e)
        })?)),
        None => None,
    };
    let mut reports = Vec::new();
    for path in &args.corpus {
        let sink = verdicts.as_mut().map(|w| w as &mut dyn std::io::Write);
        reports.push(eval_file(
            path,
            &policy,
            args.explain,
            sink,
            args.check_prefilter,
        )?);
    }
    if let (Some(w), Some(p)) = (verdicts.as_mut(), &args.verdicts) {
        w.flush()
            .map_err(|e| Error::io(format!("writing the verdicts file {}", p.display()), e))?;
    }
    let out = if args.json {
        let mut json = serde_json::to_string_pretty(&reports)
            .map_err(|e| Error::Other(format!("cannot serialise the eval report: {e}")))?;
        json.push('\n');
        json
    } else {
        reports.iter().map(render_report).collect()
    };
    // A closed pipe (`| head`) ends the output quietly instead of panicking in `println!`.
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("writing the eval report", e)),
        _ => Ok(()),
    }
}

/// One line of the `--verdicts` file.
#[derive(Serialize)]
struct VerdictLine<'a> {
    file: &'a str,
    line: usize,
    #[serde(flatten)]
    verdict: &'a crate::inspect::Verdict,
}

fn eval_file(
    path: &Path,
    policy: &Policy,
    explain: usize,
    mut verdicts: Option<&mut dyn std::io::Write>,
    check_prefilter: bool,
) -> Result<FileReport, Error> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening corpus {}", path.display()), e))?;
    let mut report = FileReport {
        file: path.display().to_string(),
        requests: 0,
        bad_lines: 0,
        total: Counts::default(),
        categories: BTreeMap::new(),
        requests_per_sec: 0.0,
    };
    let mut spent = Duration::ZERO;
    let mut explained = 0;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| Error::io(format!("reading {} line {line_no}", path.display()), e))?;
        if line.trim().is_empty() {
            continue;
        }
        let req = match parse_line(&line) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}:{line_no}: skipped: {e}", path.display());
                report.bad_lines += 1;
                continue;
            }
        };
        let (ref parsed, ref body) = req;
        let headers: Vec<(&str, &[u8])> = parsed
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let truncated = body.len() > policy.max_body_bytes();
        let view = RequestView {
            method: &parsed.method,
            target: &parsed.uri,
            headers: &headers,
            body: &body[..body.len().min(policy.max_body_bytes())],
            body_truncated: truncated,
        };
        let start = Instant::now();
        let verdict = inspect(&view, policy);
        spent += start.elapsed();
        if check_prefilter && inspect_exhaustive(&view, policy) != verdict {
            return Err(Error::Other(format!(
                "{}:{line_no}: the prefiltered verdict differs from the exhaustive one: the prefilter in \
                 inspect/detect/mod.rs skips a detector that fires here",
                path.display()
            )));
        }
        if let Some(w) = verdicts.as_mut() {
            let line = VerdictLine {
                file: &report.file,
                line: line_no,
                verdict: &verdict,
            };
            serde_json::to_writer(&mut *w, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| w.write_all(b"\n"))
                .map_err(|e| Error::io("writing the verdicts file", e))?;
        }
        let flagged = verdict.over_threshold;
        report.requests += 1;
        report.total.add(parsed.label, flagged);
        report
            .categories
            .entry(parsed.category.clone())
            .or_default()
            .add(parsed.label, flagged);
        let wrong = (parsed.label == Label::Attack) != flagged;
        if wrong && explained < explain {
            explained += 1;
            explain_miss(&format!("{}:{line_no}", path.display()), parsed, body, &verdict);
        }
    }
    let secs = spent.as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "a request count fits an f64 mantissa")]
    let rps = if secs > 0.0 {
        report.requests as f64 / secs
    } else {
        0.0
    };
    report.requests_per_sec = rps;
    Ok(report)
}

/// One wrongly classified request, with the rules involved, to stderr.
fn explain_miss(at: &str, req: &CorpusRequest, body: &[u8], verdict: &crate::inspect::Verdict) {
    let rules: Vec<String> = verdict
        .findings
        .iter()
        .map(|f| {
            format!(
                "{}@{} {:?}",
                f.evidence.rule_id, f.evidence.location, f.evidence.excerpt
            )
        })
        .collect();
    let body_head: String = String::from_utf8_lossy(&body[..body.len().min(160)]).into_owned();
    eprintln!(
        "{at}: {} {} {} {} body={body_head:?} score={} rules={rules:?}",
        if verdict.over_threshold {
            "FLAGGED-BENIGN"
        } else {
            "MISSED"
        },
        req.category,
        req.method,
        truncate(&req.uri, 200),
        verdict.score
    );
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn parse_line(line: &str) -> Result<(CorpusRequest, Vec<u8>), String> {
    let req: CorpusRequest = serde_json::from_str(line).map_err(|e| format!("not a corpus request: {e}"))?;
    let body = match (&req.body, &req.body_b64) {
        (Some(_), Some(_)) => return Err("both `body` and `body_b64`".to_owned()),
        (Some(b), None) => b.as_bytes().to_vec(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("`body_b64` is not base64: {e}"))?,
        (None, None) => Vec::new(),
    };
    Ok((req, body))
}

fn pct(n: u64, d: u64) -> String {
    if d == 0 {
        "—".to_owned()
    } else {
        #[expect(clippy::cast_precision_loss, reason = "counts fit an f64 mantissa")]
        let p = n as f64 * 100.0 / d as f64;
        format!("{p:.2}%")
    }
}

/// One file's results as a header line and a table.
fn render_report(r: &FileReport) -> String {
    let mut out = format!(
        "{}: {} requests ({} bad lines), {:.0} requests/s through inspect()",
        r.file, r.requests, r.bad_lines, r.requests_per_sec
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "category",
        "attacks",
        "detected",
        "detected %",
        "benign",
        "flagged",
        "flagged %",
    ]);
    let rows = r
        .categories
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain(std::iter::once(("TOTAL", &r.total)));
    for (name, c) in rows {
        t.add_row(vec![
            Cell::new(name),
            Cell::new(c.attacks).set_alignment(CellAlignment::Right),
            Cell::new(c.attacks_detected).set_alignment(CellAlignment::Right),
            Cell::new(pct(c.attacks_detected, c.attacks)).set_alignment(CellAlignment::Right),
            Cell::new(c.benign).set_alignment(CellAlignment::Right),
            Cell::new(c.benign_flagged).set_alignment(CellAlignment::Right),
            Cell::new(pct(c.benign_flagged, c.benign)).set_alignment(CellAlignment::Right),
        ]);
    }
    let _ = write!(out, "\n{t}\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_lines_parse_including_base64_bodies() {
        let (r, body) = parse_line(
            r#"{"id":"x:1","label":"attack","category":"sqli","method":"POST","uri":"/a","headers":[["Host","h"]],"body_b64":"/wA="}"#,
        )
        .unwrap();
        assert_eq!(r.label, Label::Attack);
        assert_eq!(body, vec![0xFF, 0x00]);
        assert!(parse_line(r#"{"id":"x","label":"maybe"}"#).is_err());
        assert!(parse_line("not json").is_err());
    }

    #[test]
    fn eval_counts_and_survives_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"id":"a","label":"attack","category":"sqli","method":"GET","uri":"/s?q=1%27%20OR%20%271%27%3D%271","headers":[],"body":""}"#,
                "\n{broken\n",
                r#"{"id":"b","label":"benign","category":"benign","method":"GET","uri":"/s?q=O%27Brien","headers":[],"body":""}"#,
                "\n"
            ),
        )
        .unwrap();
        let r = eval_file(&path, &Policy::default(), 0, None, true).unwrap();
        assert_eq!(r.requests, 2);
        assert_eq!(r.bad_lines, 1);
        assert_eq!(r.total.attacks_detected, 1);
        assert_eq!(r.total.benign_flagged, 0);
    }
}
