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
