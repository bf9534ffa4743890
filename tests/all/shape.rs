//! The library's shape (issue 11), checked so that it stays: at most six public modules at the
//! root of `host/src/lib.rs`, every module named in its data-flow diagram, and no library file
//! over 500 lines of non-test code.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The library's files: `host/src` without the binary (`main.rs`, `cli/`).
fn library_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "cli") {
                library_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("main.rs") {
            out.push(path);
        }
    }
}

/// Lines before the file's `#[cfg(test)]` module (or all of them); a `tests.rs` file is all
/// test code.
fn code_lines(path: &Path) -> usize {
    if path.ends_with("tests.rs") {
        return 0;
    }
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .count()
}

#[test]
fn no_library_file_has_more_than_500_lines_of_code() {
    let mut files = Vec::new();
    library_files(&src(), &mut files);
    assert!(files.len() > 20, "{files:?}");
    let long: Vec<_> = files
        .iter()
        .map(|f| (code_lines(f), f))
        .filter(|(n, _)| *n > 500)
        .collect();
    assert!(
        long.is_empty(),
        "files over 500 lines of non-test code: {long:?}"
    );
}

#[test]
fn at_most_six_public_modules_at_the_root_each_in_the_diagram() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let public: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(!public.is_empty() && public.len() <= 6, "{public:?}");
    assert!(
        !lib.lines().any(|l| l.starts_with("mod ")),
        "a private root module: re-export or nest it"
    );
    let diagram: String = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    // Every module directory and file of the library, as `parent::name` or `name`.
    let mut files = Vec::new();
    library_files(&src(), &mut files);
    for file in files {
        let rel = file.strip_prefix(src()).unwrap();
        let mut parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        if parts == ["lib"] || parts.last().is_some_and(|p| p == "tests") {
            continue;
        }
        // Top-level modules and their public children are in lib.rs's diagram; the files
        // inside a module are in that module's own diagram.
        let (doc, name) = if parts.len() == 1 {
            (diagram.clone(), parts[0].clone())
        } else {
            let parent = src().join(parts[..parts.len() - 1].join("/"));
            let parent_doc = std::fs::read_to_string(parent.join("mod.rs"))
                .unwrap_or_else(|_| std::fs::read_to_string(parent.with_extension("rs")).unwrap());
            let text: String = parent_doc
                .lines()
                .filter_map(|l| l.strip_prefix("//!"))
                .collect::<Vec<_>>()
                .join("\n");
            (text, parts.last().unwrap().clone())
        };
        assert!(
            doc.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|w| w == name),
            "module {} is not named in its parent's diagram",
            parts.join("::")
        );
    }
}
