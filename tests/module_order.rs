//! The module graph has no cycles: every top-level module of `src/` imports only from the
//! modules below it in [`ORDER`], and every file of the sandbox only from the ones below it in
//! [`SANDBOX_ORDER`]. Reads the `crate::…` paths of each file's code (comments and
//! `#[cfg(test)]` modules left out) and fails naming the file, the import and both places in the
//! order. A new top-level module must be given its place here.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// Bottom first. A module may use any module listed before it, never one after it.
const ORDER: &[&str] = &[
    // Plain building blocks: no imports from the crate but the one before (the send watch
    // wakes the connection's clock).
    "sched",
    "conn_clock",
    "send_watch",
    "stream_watch",
    "crypto",
    "body",
    "json",
    "routes",
    "request_id",
    "log_writer",
    "logging",
    // The audit log and TLS material stand on their own.
    "audit",
    "tls",
    // The embedded Ratepay sandbox uses only routes and crypto.
    "sandbox",
    // Configuration owns every section's settings type.
    "config",
    "limits",
    "error",
    "callers",
    "client",
    "context",
    "token",
    // Shared state in Redis: buckets, pauses and invalidations (no layer types).
    "cluster",
    "metrics",
    // Every layer of the request path.
    "middleware",
    "proxy",
    "recovery",
    "stack",
    "gateway",
    "edge",
    "reload",
    "server",
];

/// The sandbox's own files (`src/sandbox/<name>.rs` or `<name>/`), bottom first, by the same
/// rule: the operations import the shared types below them (`reply`, `call`, `state`), and only
/// `dispatch` and `http` above them reach the operations.
const SANDBOX_ORDER: &[&str] = &[
    "config",
    "reply",
    "call",
    "ledger",
    "sessions",
    "tokens",
    "faults",
    "stats",
    "idempotency",
    "state",
    // The operations.
    "oauth",
    "payment",
    "hpp",
    "control",
    // Operation → code, then the request flow.
    "dispatch",
    "http",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/a.rs` and `src/a/**` are `a`).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).expect("under src");
    let first = rel.components().next().expect("component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

/// The file's code: line comments (doc comments included) removed, and everything from a
/// `#[cfg(test)]` line on (test modules come last in this crate's files).
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let line = match line.find("//") {
            // Keep `//` inside string literals (URLs): only cut when no quote precedes it.
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Top-level module names used through `crate::`: `crate::a::…`, `crate::a` and each item of
/// `crate::{a::…, b, c::{…}}`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    refs_after(code, "crate::")
}

/// The first name of each path that starts with `prefix` (see [`crate_refs`]).
fn refs_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // e.g. `ratepay_gateway::crate::` never occurs; `mycrate::` is not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident_at(&group[j..]);
                        if !name.is_empty() && name != "self" {
                            refs.insert(name.to_owned());
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                refs.insert(name.to_owned());
            }
        }
    }
    refs
}

#[test]
fn no_module_imports_from_a_module_above_it() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let place = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut violations = Vec::new();
    for file in &files {
        let module = module_of(file);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(own) = place(&module) else {
            violations.push(format!(
                "{}: module `{module}` has no place in ORDER (tests/module_order.rs)",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(file).expect("read");
        for used in crate_refs(&code(&text)) {
            if used == module {
                continue;
            }
            match place(&used) {
                Some(p) if p < own => {}
                Some(p) => violations.push(format!(
                    "{}: `{module}` (place {own}) imports `crate::{used}` (place {p}), a module above it",
                    file.display()
                )),
                None => violations.push(format!(
                    "{}: imports `crate::{used}`, which has no place in ORDER",
                    file.display()
                )),
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn no_sandbox_file_imports_from_one_above_it() {
    let sandbox = src().join("sandbox");
    let mut files = Vec::new();
    rust_files(&sandbox, &mut files);
    files.sort();
    let place = |m: &str| SANDBOX_ORDER.iter().position(|o| *o == m);
    let mut violations = Vec::new();
    for file in &files {
        let rel: Vec<String> = file
            .strip_prefix(&sandbox)
            .expect("under src/sandbox")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let module = rel[0].trim_end_matches(".rs").to_owned();
        if module == "mod" {
            continue;
        }
        let Some(own) = place(&module) else {
            violations.push(format!(
                "{}: `sandbox::{module}` has no place in SANDBOX_ORDER (tests/module_order.rs)",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(file).expect("read");
        let code = code(&text);
        let mut used = refs_after(&code, "crate::sandbox::");
        // `super::` names a sibling in `sandbox/a.rs` and `sandbox/a/mod.rs`; deeper, it stays
        // inside `a`.
        if rel.len() == 1 || rel[1] == "mod.rs" {
            used.extend(refs_after(&code, "super::"));
        }
        for used in used {
            if used == module {
                continue;
            }
            match place(&used) {
                Some(p) if p < own => {}
                Some(p) => violations.push(format!(
                    "{}: `sandbox::{module}` (place {own}) imports `sandbox::{used}` (place {p}), a file above it",
                    file.display()
                )),
                None => violations.push(format!(
                    "{}: imports `sandbox::{used}`, which has no place in SANDBOX_ORDER",
                    file.display()
                )),
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn every_module_declared_in_lib_rs_has_a_place() {
    let lib = fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(declared.len() >= 10, "parsed lib.rs: {declared:?}");
    for m in &declared {
        assert!(
            ORDER.contains(m),
            "`{m}` is declared in lib.rs but has no place in ORDER"
        );
    }
    for m in ORDER {
        assert!(
            declared.contains(m),
            "ORDER names `{m}`, which lib.rs does not declare"
        );
    }
}

#[test]
fn the_reader_sees_every_form_of_crate_path() {
    let refs = crate_refs(&code(
        "use crate::{\n    a::{X, Y},\n    b,\n    self,\n};\nuse crate::c::D;\nlet x = crate::d::f();\n// crate::e::g\n",
    ));
    let names: Vec<&str> = refs.iter().map(String::as_str).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
}
