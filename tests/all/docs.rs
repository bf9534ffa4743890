//! `docs/secrets-management.md` stays true:
//!
//! - every ```` ```console ```` block is run against the real binary, in a fresh data directory
//!   per block ([`Host`]), from the repository root, and its output compared;
//! - the Troubleshooting section names every message the host's sources can print (scanned from
//!   `host/src`, so a new message fails here until it is documented), and every `error:` line
//!   the examples show;
//! - the CLI reference holds the `--help` of every command and subcommand `--help` lists;
//! - every Rust/Python snippet (and any block marked `<!-- from PATH -->`) is a verbatim
//!   excerpt of the example file it names.
//!
//! Console block convention (also explained at the top of the document):
//! - `$ attune-wasm ARGS`, optionally `echo 'TEXT' | …` (stdin `TEXT\n`) and `NAME=VALUE`
//!   assignments before `attune-wasm`; `$ export NAME=VALUE` and `$ unset NAME` change the
//!   environment of the rest of the block; `$ echo $?` prints the previous exit status.
//! - The lines after a command are its stdout and stderr lines, interleaved in any way that
//!   keeps each stream's own order. `[..]` matches any
//!   text within a line, `[DATA_DIR]` the data directory, a line `...` any number of lines.
//! - Without `$ echo $?` after it, a command must succeed exactly when its expected output has
//!   no line starting with `error:`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::{self, text, Host, Target};

const DOC: &str = "docs/secrets-management.md";

/// Messages the source scan cannot find (built by code that is not a message literal).
const UNSCANNED: &[&str] = &[
    // cli/mod.rs `panic_line`.
    "error: internal error at {}:{} (details withheld: they could contain secret data); please report it",
    "error: internal error (details withheld); please report it",
];

/// Scanned literals that are not messages of their own (they wrap one that is documented).
const NOT_MESSAGES: &[&str] = &[
    // cli/mod.rs: the line every error is printed as.
    "error: {}",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

fn doc() -> String {
    std::fs::read_to_string(root().join(DOC)).expect("read the document")
}

/// A fenced code block: info string, first line number (1-based), lines, and the source named
/// by a `<!-- from PATH -->` line right before the fence.
struct Block {
    info: String,
    line: usize,
    lines: Vec<String>,
    from: Option<String>,
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    let mut previous = "";
    for (i, line) in doc.lines().enumerate() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => {
                let from = previous
                    .trim()
                    .strip_prefix("<!-- from ")
                    .and_then(|r| r.strip_suffix("-->"))
                    .map(|p| p.trim().to_owned());
                current = Some(Block {
                    info: info.trim().to_owned(),
                    line: i + 1,
                    lines: Vec::new(),
                    from,
                });
            }
            (Some(_), Some("")) => out.extend(current.take()),
            (Some(block), _) => block.lines.push(line.to_owned()),
            (None, None) => {}
        }
        previous = line;
    }
    assert!(current.is_none(), "unclosed code block");
    out
}

/// The text of section `## title` (up to the next `## `).
fn section<'a>(doc: &'a str, title: &str) -> &'a str {
    let start = doc
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("no section ## {title}"));
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    &rest[..end]
}

// ----- running console blocks -------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Pipe,
}

/// Splits a command line like a POSIX shell would for the forms the document uses: single and
/// double quotes, backslash escapes outside quotes, and `|`.
fn tokens(line: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => out.extend(word.take().map(Token::Word)),
            '|' if word.is_none() => out.push(Token::Pipe),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(word.map(Token::Word));
    out
}

fn assignment(word: &str) -> Option<(String, String)> {
    let (name, value) = word.split_once('=')?;
    (!name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
    .then(|| (name.to_owned(), value.to_owned()))
}

/// One `attune-wasm` invocation: environment assignments, arguments, stdin.
struct Invocation {
    env: Vec<(String, String)>,
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
}

fn invocation(command: &str) -> Invocation {
    let tokens = tokens(command);
    let (stdin, rest) = match tokens.iter().position(|t| *t == Token::Pipe) {
        Some(p) => {
            let words: Vec<&str> = tokens[..p]
                .iter()
                .map(|t| match t {
                    Token::Word(w) => w.as_str(),
                    Token::Pipe => unreachable!("the first pipe"),
                })
                .collect();
            assert_eq!(
                words.first(),
                Some(&"echo"),
                "only `echo … |` may feed stdin: {command}"
            );
            (
                Some(format!("{}\n", words[1..].join(" ")).into_bytes()),
                &tokens[p + 1..],
            )
        }
        None => (None, &tokens[..]),
    };
    let mut words = rest.iter().map(|t| match t {
        Token::Word(w) => w.clone(),
        Token::Pipe => panic!("one pipe at most: {command}"),
    });
    let mut env = Vec::new();
    loop {
        let word = words
            .next()
            .unwrap_or_else(|| panic!("no attune-wasm in: {command}"));
        if word == "attune-wasm" {
            break;
        }
        env.push(assignment(&word).unwrap_or_else(|| panic!("unsupported command: {command}")));
    }
    Invocation {
        env,
        args: words.collect(),
        stdin,
    }
}

/// `text` matches `pattern` where `[..]` stands for any text.
fn line_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split("[..]").collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// `expected` is an interleaving of `out` and `err` (each stream in its order), where a line
/// `...` stands for any number of lines of either stream.
fn lines_match(expected: &[String], out: &[String], err: &[String]) -> bool {
    match expected.split_first() {
        None => out.is_empty() && err.is_empty(),
        Some((first, rest)) if first == "..." => (0..=out.len())
            .any(|o| (0..=err.len()).any(|e| lines_match(rest, &out[o..], &err[e..]))),
        Some((first, rest)) => {
            (!out.is_empty() && line_matches(first, &out[0]) && lines_match(rest, &out[1..], err))
                || (!err.is_empty()
                    && line_matches(first, &err[0])
                    && lines_match(rest, out, &err[1..]))
        }
    }
}

fn output_lines(bytes: &[u8]) -> Vec<String> {
    text(bytes)
        .lines()
        .map(|l| l.trim_end().to_owned())
        .collect()
}

/// Runs one console block; returns each command whose output or exit status differs from the
/// document's (and goes on, so that one run shows every difference).
fn run_block(block: &Block) -> Vec<String> {
    let mut failures = Vec::new();
    let host = Host::new();
    let data_dir = host.dir.path().join("data");
    let data_dir = data_dir.to_str().expect("UTF-8 temp dir");
    if block.lines.iter().any(|l| l.contains("examples/target/")) {
        // Builds every example for both targets (once per test process).
        support::wasm("deploy-component", Target::P2);
    }
    let mut env: Vec<(String, Option<String>)> = Vec::new();
    let mut last: Option<Output> = None;
    let mut i = 0;
    while i < block.lines.len() {
        let line = &block.lines[i];
        let at = block.line + 1 + i;
        let command = line
            .strip_prefix("$ ")
            .unwrap_or_else(|| panic!("{DOC}:{at}: expected a `$ ` command, got {line:?}"));
        let end = block.lines[i + 1..]
            .iter()
            .position(|l| l.starts_with("$ "))
            .map_or(block.lines.len(), |p| i + 1 + p);
        let expected: Vec<String> = block.lines[i + 1..end]
            .iter()
            .map(|l| l.replace("[DATA_DIR]", data_dir).trim_end().to_owned())
            .collect();
        i = end;
        if command == "echo $?" {
            let status = last.as_ref().and_then(|o| o.status.code());
            let status = status.map_or("none".to_owned(), |c| c.to_string());
            if expected != [status.clone()] {
                failures.push(format!(
                    "{DOC}:{at}: exit status {status}, expected {expected:?}"
                ));
            }
            continue;
        }
        if let Some(set) = command.strip_prefix("export ") {
            let words = tokens(set);
            let [Token::Word(word)] = &words[..] else {
                panic!("{DOC}:{at}: export one NAME=VALUE");
            };
            let (k, v) =
                assignment(word).unwrap_or_else(|| panic!("{DOC}:{at}: export NAME=VALUE"));
            env.retain(|(n, _)| *n != k);
            env.push((k, Some(v)));
            assert!(expected.is_empty(), "{DOC}:{at}: export prints nothing");
            continue;
        }
        if let Some(name) = command.strip_prefix("unset ") {
            env.retain(|(n, _)| n != name);
            env.push((name.to_owned(), None));
            assert!(expected.is_empty(), "{DOC}:{at}: unset prints nothing");
            continue;
        }
        let inv = invocation(command);
        let mut cmd = host.cmd();
        cmd.current_dir(root());
        for (k, v) in env
            .iter()
            .map(|(k, v)| (k, v.as_ref()))
            .chain(inv.env.iter().map(|(k, v)| (k, Some(v))))
        {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.args(&inv.args);
        let out = support::run_cmd(&mut cmd, inv.stdin.as_deref());
        support::assert_no_panic(&out);
        let (stdout, stderr) = (output_lines(&out.stdout), output_lines(&out.stderr));
        if !lines_match(&expected, &stdout, &stderr) {
            failures.push(format!(
                "{DOC}:{at}: `{command}` printed\n{}\n--- on stderr\n{}\n--- expected\n{}",
                stdout.join("\n"),
                stderr.join("\n"),
                expected.join("\n")
            ));
        }
        let checked_later = block.lines.get(end).is_some_and(|l| l == "$ echo $?");
        if !checked_later {
            let fails = expected.iter().any(|l| l.starts_with("error:"));
            if out.status.success() == fails {
                failures.push(format!(
                    "{DOC}:{at}: `{command}` exited with {:?}",
                    out.status.code()
                ));
            }
        }
        last = Some(out);
    }
    failures
}

#[test]
fn console_examples_are_true() {
    let doc = doc();
    let console: Vec<Block> = blocks(&doc)
        .into_iter()
        .filter(|b| b.info == "console")
        .collect();
    assert!(console.len() >= 10, "the document has its examples");
    let failures: Vec<String> = console.iter().flat_map(run_block).collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

// ----- troubleshooting --------------------------------------------------------------------

/// Replaces every `{…}` placeholder by `{}`.
fn normalize(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut depth = 0;
    for c in template.chars() {
        match c {
            '{' => {
                if depth == 0 {
                    out.push_str("{}");
                }
                depth += 1;
            }
            '}' if depth > 0 => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The Rust string literal starting at `s[start]` (`"`): its value and the index after it.
fn literal(s: &str, start: usize) -> (String, usize) {
    let bytes = s.as_bytes();
    let mut out = String::new();
    let mut i = start + 1;
    while bytes[i] != b'"' {
        if bytes[i] == b'\\' {
            match bytes[i + 1] {
                b'\n' => {
                    i += 2;
                    while bytes[i].is_ascii_whitespace() {
                        i += 1;
                    }
                    continue;
                }
                b'n' => out.push('\n'),
                b't' => out.push('\t'),
                b'0' => out.push('\0'),
                other => out.push(char::from(other)),
            }
            i += 2;
        } else {
            let c = s[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    (out, i + 1)
}

/// Markers of message literals in `host/src`: after each, the first string literal inside the
/// call's parentheses (or right after a marker not ending in `(`) that has a letter outside its
/// placeholders.
const MARKERS: &[&str] = &[
    "#[error(",
    "bail!(",
    "anyhow!(",
    ".context(",
    ".with_context(",
    "eprintln!(",
    "warn!(",
    "InvalidFormat(",
    "Err(format!(",
    ".ok_or(",
    "|| format!(",
    "|_| format!(",
    "corrupt(format!(",
    "Host(format!(",
    "reason: format!(",
    "reason: ",
    "fail(",
];

/// Markers used only in one file (too common elsewhere).
const FILE_MARKERS: &[(&str, &str)] = &[("names.rs", "err("), ("executor.rs", "Some(")];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every message template the host's sources can print, normalized, with where it is.
fn source_messages() -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&root().join("host/src"), &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let full = std::fs::read_to_string(&file).expect("read source");
        let code = full
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or(&full);
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let markers = MARKERS.iter().copied().chain(
            FILE_MARKERS
                .iter()
                .filter(|(f, _)| *f == name)
                .map(|(_, m)| *m),
        );
        for marker in markers {
            for (at, _) in code.match_indices(marker) {
                let start = at + marker.len();
                let found = if marker.ends_with('(') {
                    first_message_in_call(code, start)
                } else if code[start..].starts_with('"') {
                    Some(literal(code, start).0).filter(|l| is_message(l))
                } else {
                    None
                };
                if let Some(message) = found {
                    let line = code[..at].lines().count();
                    let shown = file.strip_prefix(root()).unwrap_or(&file).display();
                    out.push((normalize(&message), format!("{shown}:{line}")));
                }
            }
        }
    }
    out
}

fn is_message(literal: &str) -> bool {
    normalize(literal)
        .replace("{}", "")
        .chars()
        .any(|c| c.is_ascii_alphabetic())
}

fn first_message_in_call(code: &str, start: usize) -> Option<String> {
    let bytes = code.as_bytes();
    let mut depth = 1;
    let mut i = start;
    while depth > 0 && i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let (lit, next) = literal(code, i);
                if is_message(&lit) {
                    return Some(lit);
                }
                i = next;
                continue;
            }
            b'(' => depth += 1,
            b')' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The inline-code spans of a text, normalized (a line break inside a span, with the next
/// line's indentation, is one space, as CommonMark renders it).
fn code_spans(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|span| {
            let joined: Vec<&str> = span.split('\n').map(str::trim_start).collect();
            normalize(&joined.join(" "))
        })
        .collect()
}

#[test]
fn troubleshooting_names_every_message() {
    let doc = doc();
    let documented = code_spans(section(&doc, "Troubleshooting"));
    let sources = source_messages();
    assert!(
        sources.len() > 60,
        "the scan finds the messages ({})",
        sources.len()
    );
    let missing: Vec<String> = sources
        .iter()
        .filter(|(m, _)| !NOT_MESSAGES.contains(&m.as_str()))
        .filter(|(m, _)| !documented.contains(m))
        .map(|(m, at)| format!("{at}: `{m}`"))
        .chain(
            UNSCANNED
                .iter()
                .map(|m| normalize(m))
                .filter(|m| !documented.contains(m))
                .map(|m| format!("(unscanned): `{m}`")),
        )
        .collect();
    assert!(
        missing.is_empty(),
        "messages missing from the Troubleshooting section of {DOC} (as inline code, \
         placeholders in {{braces}}):\n{}",
        missing.join("\n")
    );
}

#[test]
fn troubleshooting_explains_every_error_the_examples_show() {
    let doc = doc();
    // Templates with enough fixed text to identify a message.
    let patterns: Vec<String> = code_spans(section(&doc, "Troubleshooting"))
        .into_iter()
        .filter(|t| t.replace("{}", "").len() >= 12)
        .map(|t| format!("[..]{}[..]", t.replace("{}", "[..]")))
        .collect();
    let mut shown = 0;
    for block in blocks(&doc).iter().filter(|b| b.info == "console") {
        for (i, line) in block.lines.iter().enumerate() {
            let message = line
                .strip_prefix("error: ")
                .or_else(|| line.split_once(" WARN ").map(|(_, m)| m));
            if let Some(message) = message {
                shown += 1;
                assert!(
                    patterns.iter().any(|p| line_matches(p, message)),
                    "{DOC}:{}: not explained in Troubleshooting: {line}",
                    block.line + 1 + i
                );
            }
        }
    }
    assert!(
        shown >= 10,
        "the examples show errors and warnings ({shown})"
    );
}

// ----- CLI reference ----------------------------------------------------------------------

/// The subcommands a `--help` text lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.split_once("\nCommands:\n")
        .map(|(_, rest)| rest)
        .into_iter()
        .flat_map(|rest| rest.lines().take_while(|l| l.starts_with("  ")))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

fn help(path: &[String]) -> String {
    let host = Host::new();
    let out = host.exec(
        &path
            .iter()
            .map(String::as_str)
            .chain(["--help"])
            .collect::<Vec<_>>(),
        None,
    );
    assert!(out.status.success(), "{path:?} --help");
    text(&out.stdout)
}

#[test]
fn cli_reference_has_the_help_of_every_command() {
    let doc = doc();
    let reference = section(&doc, "CLI reference");
    let top = help(&[]);
    assert!(subcommands(&top).len() >= 5, "{top}");
    let mut queue = vec![Vec::<String>::new()];
    let mut seen = 0;
    while let Some(path) = queue.pop() {
        let text = help(&path);
        let shown = if path.is_empty() {
            "$ attune-wasm --help".to_owned()
        } else {
            format!("$ attune-wasm {} --help", path.join(" "))
        };
        assert!(
            reference.lines().any(|l| l == shown),
            "the CLI reference of {DOC} lacks a console block with `{shown}`"
        );
        // The block's output is compared by `console_examples_are_true`; here, every flag and
        // subcommand must be spelled out (not elided by `...`).
        for flag in text.split_whitespace().filter(|w| w.starts_with("--")) {
            let flag = flag.trim_end_matches([',', '.']);
            let flag = flag.split(['=', '<', ' ']).next().unwrap_or(flag);
            if flag == "--" {
                continue;
            }
            assert!(
                reference.contains(flag),
                "{shown}: {flag} is not in the reference"
            );
        }
        for sub in subcommands(&text) {
            let mut next = path.clone();
            next.push(sub);
            queue.push(next);
        }
        seen += 1;
    }
    assert!(seen >= 12, "{seen} commands");
}

// ----- snippets -----------------------------------------------------------------------------

#[test]
fn snippets_are_excerpts_of_the_example_files() {
    let doc = doc();
    let mut checked = 0;
    for block in blocks(&doc) {
        // Rust and Python blocks must name their source; any block that names one is checked.
        if !matches!(block.info.as_str(), "rust" | "python") && block.from.is_none() {
            continue;
        }
        let from = block.from.as_deref().unwrap_or_else(|| {
            panic!(
                "{DOC}:{}: a {} block needs `<!-- from PATH -->` before it",
                block.line, block.info
            )
        });
        let file = std::fs::read_to_string(root().join(from))
            .unwrap_or_else(|e| panic!("{DOC}:{}: {from}: {e}", block.line));
        let snippet = block.lines.join("\n");
        assert!(
            file.contains(&snippet),
            "{DOC}:{}: the snippet is not in {from} as it stands",
            block.line
        );
        checked += 1;
    }
    assert!(checked >= 5, "{checked} snippets");
}

#[test]
fn the_console_convention_works() {
    assert!(line_matches("a [..] c", "a b c"));
    assert!(!line_matches("a [..] c", "a b d"));
    assert!(line_matches("[..]x[..]", "yyxyy"));
    let lines = |s: &str| s.lines().map(str::to_owned).collect::<Vec<_>>();
    let none = Vec::new();
    assert!(lines_match(
        &lines("a\n...\nd"),
        &lines("a\nb\nc\nd"),
        &none
    ));
    assert!(lines_match(&lines("a\n...\nd"), &lines("a\nd"), &none));
    assert!(!lines_match(&lines("a\nd"), &lines("a\nb\nd"), &none));
    // Interleaved streams, each in its own order.
    assert!(lines_match(
        &lines("w\no1\ne1\no2"),
        &lines("o1\no2"),
        &lines("w\ne1")
    ));
    assert!(!lines_match(&lines("o2\no1"), &lines("o1\no2"), &none));
    assert!(!lines_match(&lines("o1"), &lines("o1"), &lines("e1")));
    let inv = invocation("echo '{\"a\": 1}' | K=v attune-wasm secret set 'x y' --pack p");
    assert_eq!(inv.stdin.as_deref(), Some(&b"{\"a\": 1}\n"[..]));
    assert_eq!(inv.env, [("K".to_owned(), "v".to_owned())]);
    assert_eq!(inv.args, ["secret", "set", "x y", "--pack", "p"]);
    assert_eq!(normalize("a {b:?} c {}"), "a {} c {}");
}
