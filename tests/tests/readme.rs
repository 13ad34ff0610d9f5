//! The README's commands stay true: every `hailan-ingest`, `hailan-gateway`
//! and `hailan-sim` command line in its code blocks (and in OPERATIONS.md and
//! SCALING.md when present) is parsed by the real binary — run with `--help`
//! appended, which clap answers only after accepting every subcommand and
//! option before it; an unknown subcommand or a renamed flag fails here.
//! What the commands then do is run by the demo and the other tests.

use anyhow::{Context, Result, ensure};
use hailan_tests::gateway::workspace_binary;
use hailan_tests::repo_root;

/// Command lines in fenced code blocks, continuation lines joined, comments cut.
fn command_lines(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            pending.clear();
            continue;
        }
        if !in_code {
            continue;
        }
        let code = match line.find(" #") {
            Some(i) => &line[..i],
            None => line,
        };
        let code = code.trim_end();
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        out.push(std::mem::take(&mut pending).trim().to_owned());
    }
    out
}

/// Split like a shell would for these lines (quotes, no expansions).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A synopsis marks optional parts `[--seed N]`: leave them out.
fn without_optional(words: Vec<String>) -> Vec<String> {
    let mut depth = 0usize;
    let mut out = Vec::new();
    for w in words {
        let opens = w.matches('[').count();
        let closes = w.matches(']').count();
        if depth == 0 && opens == 0 {
            out.push(w);
        }
        depth = (depth + opens).saturating_sub(closes);
    }
    out
}

#[test]
fn every_documented_command_line_parses() -> Result<()> {
    let mut checked = 0;
    for doc in [
        "README.md",
        "OPERATIONS.md",
        "SCALING.md",
        "firmware-sim/README.md",
    ] {
        let Ok(text) = std::fs::read_to_string(repo_root().join(doc)) else {
            continue;
        };
        for line in command_lines(&text) {
            let w = without_optional(words(&line));
            // `sudo -u USER prog …` runs `prog …`.
            let i = match w.first().map(String::as_str) {
                Some("sudo") if w.get(1).map(String::as_str) == Some("-u") => 3,
                _ => 0,
            };
            let Some(program) = w.get(i) else { continue };
            let program = program.as_str();
            if !matches!(program, "hailan-ingest" | "hailan-gateway" | "hailan-sim") {
                continue;
            }
            let bin = workspace_binary(program)?;
            let out = std::process::Command::new(&bin)
                .args(&w[i + 1..])
                .arg("--help")
                .stdin(std::process::Stdio::null())
                .output()
                .with_context(|| format!("running {program}"))?;
            ensure!(
                out.status.success(),
                "{doc}: `{line}` is not accepted by {program}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} command lines found");
    Ok(())
}

#[test]
fn the_line_splitter_reads_what_the_docs_write() {
    let md = "text\n```sh\nhailan-ingest admin grant --patient a \\\n    --clinician b   # why\n```\n`hailan-x` outside\n";
    assert_eq!(
        command_lines(md),
        vec!["hailan-ingest admin grant --patient a      --clinician b"]
    );
    assert_eq!(
        words("hailan-ingest admin add-user did:x --name \"Dr Li\" --kind ''"),
        vec![
            "hailan-ingest",
            "admin",
            "add-user",
            "did:x",
            "--name",
            "Dr Li",
            "--kind",
            ""
        ]
    );
    assert_eq!(
        without_optional(words(
            "hailan-sim run --devices hr=1 [--seed N] [--bus A | --private-bus]"
        )),
        vec!["hailan-sim", "run", "--devices", "hr=1"]
    );
}
