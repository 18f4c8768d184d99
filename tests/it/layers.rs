//! The shape cannot rot unnoticed: every module under `src/` imports only from
//! the layers below its own, in the order `docs/architecture.md` writes once (its
//! `layers` block: one line per layer, lowest first; modules on one line are
//! peers and do not import each other).

use std::collections::BTreeMap;
use std::path::Path;

/// The layer order, read from the map.
fn layers() -> BTreeMap<String, usize> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .unwrap();
    let block = doc
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/architecture.md has a ```layers block");
    let mut order = BTreeMap::new();
    for (i, line) in block.lines().enumerate() {
        for module in line.split_whitespace() {
            assert!(
                order.insert(module.to_owned(), i).is_none(),
                "{module} is named twice in the layers block"
            );
        }
    }
    order
}

/// `crate::<module>` paths in a file's code (comments and its test module left
/// out: intra-doc links and tests are not dependencies).
fn imports(source: &str) -> Vec<String> {
    let code = source
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let order = layers();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "main" || top == "lib" {
            continue;
        }
        let Some(&mine) = order.get(&top) else {
            wrong.push(format!(
                "src/{} belongs to module {top}, which the layers block does not place",
                rel.display()
            ));
            continue;
        };
        for import in imports(&std::fs::read_to_string(file).unwrap()) {
            if import == top {
                continue;
            }
            match order.get(&import) {
                None => wrong.push(format!(
                    "src/{} imports crate::{import}, which the layers block does not place",
                    rel.display()
                )),
                Some(&theirs) if theirs >= mine => wrong.push(format!(
                    "src/{} ({top}, layer {mine}) imports crate::{import} (layer {theirs}): {}",
                    rel.display(),
                    if theirs == mine {
                        "a peer"
                    } else {
                        "a layer above"
                    }
                )),
                Some(_) => {}
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports against the layer order:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    assert_eq!(
        imports("use crate::api::x; // crate::worker\nfn f() { crate::store::y() }"),
        ["api", "store"]
    );
    assert!(imports("#[cfg(test)]\nmod tests { use crate::api; }").is_empty());
}

/// A file's module path (`src/api/jobs/list.rs` → `api::jobs::list`,
/// `src/api/mod.rs` → `api`).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned()
        })
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The paths a file names through `crate::`, `super::` and `self::` (use trees
/// expanded), made absolute from the file's module `here`.
fn named_paths(source: &str, here: &[String]) -> Vec<Vec<String>> {
    let code: String = source
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default()
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let code = code.as_bytes();
    let parent: Vec<String> = here[..here.len().saturating_sub(1)].to_vec();
    let own: Vec<String> = here.to_vec();
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let at_word_start = i == 0
            || !(code[i - 1].is_ascii_alphanumeric() || code[i - 1] == b'_' || code[i - 1] == b':');
        let base = if !at_word_start {
            None
        } else if code[i..].starts_with(b"crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if code[i..].starts_with(b"super::") {
            Some((parent.clone(), "super::".len()))
        } else if code[i..].starts_with(b"self::") {
            Some((own.clone(), "self::".len()))
        } else {
            None
        };
        match base {
            Some((base, skip)) => {
                i = use_tree(code, i + skip, base, &mut out);
            }
            None => i += 1,
        }
    }
    out
}

/// Reads a path or use tree at `code[i..]`, pushing each full path onto `out`;
/// where it ends.
fn use_tree(code: &[u8], i: usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let skip_space = |mut i: usize| {
        while code.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
            i += 1;
        }
        i
    };
    let mut i = skip_space(i);
    if code.get(i) == Some(&b'{') {
        i += 1;
        loop {
            i = skip_space(i);
            match code.get(i) {
                None => return i,
                Some(b'}') => return i + 1,
                Some(b',') => i += 1,
                Some(_) => {
                    i = use_tree(code, i, prefix.clone(), out);
                    // What may follow an item before its separator: `as name`.
                    while code.get(i).is_some_and(|c| !matches!(c, b',' | b'}')) {
                        i += 1;
                    }
                }
            }
        }
    }
    let start = i;
    while code
        .get(i)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    {
        i += 1;
    }
    let word = String::from_utf8_lossy(&code[start..i]).into_owned();
    if !word.is_empty() && word != "self" {
        prefix.push(word);
    }
    if code[i..].starts_with(b"::") {
        use_tree(code, i + 2, prefix, out)
    } else {
        out.push(prefix);
        i
    }
}

#[test]
fn no_import_loops_between_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules: BTreeMap<Vec<String>, std::path::PathBuf> = BTreeMap::new();
    for file in &files {
        let module = module_of(file.strip_prefix(&src).unwrap());
        if module == ["main"] || module == ["lib"] {
            continue;
        }
        modules.insert(module, file.clone());
    }
    // Edges: a file to each file whose module it names, its own enclosing
    // modules left out (a `mod.rs` declares its files and lends them the types
    // they share: that knot is Rust's module tree, not an import).
    let mut edges: BTreeMap<Vec<String>, std::collections::BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, file) in &modules {
        let source = std::fs::read_to_string(file).unwrap();
        for path in named_paths(&source, module) {
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains_key(p));
            if let Some(target) = target
                && &target != module
                && !module.starts_with(&target)
            {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    // A loop is a file that reaches itself.
    let mut loops = Vec::new();
    for start in modules.keys() {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack: Vec<Vec<String>> = edges.get(start).into_iter().flatten().cloned().collect();
        while let Some(m) = stack.pop() {
            if &m == start {
                loops.push(start.join("::"));
                break;
            }
            if seen.insert(m.clone()) {
                stack.extend(edges.get(&m).into_iter().flatten().cloned());
            }
        }
    }
    assert!(loops.is_empty(), "files in an import loop: {loops:?}");
}

#[test]
fn the_loop_check_reads_use_trees_and_relative_paths() {
    let here = ["api".to_owned(), "events".to_owned()];
    let paths = named_paths(
        "use super::{AppState as S, access::{Access, Caller}, *};\nuse crate::limit::IpKey; // crate::worker\nfn f() { self::g(); x::crate::no() }",
        &here,
    );
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        [
            "api::AppState",
            "api::access::Access",
            "api::access::Caller",
            "api",
            "limit::IpKey",
            "api::events::g"
        ]
    );
    // In `src/api/mod.rs`, `super` is the crate.
    let root = named_paths("use super::x::Y;", &["api".to_owned()]);
    assert_eq!(root, [vec!["x".to_owned(), "Y".to_owned()]]);
}
