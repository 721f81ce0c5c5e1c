//! The node's dependency direction, checked over its source: every `crate::<module>` a file
//! names must be in a lower layer than the file's own top-level module (or the same module),
//! and the top-level modules must import each other without a cycle. The layers are the ones
//! ARCHITECTURE.md draws; a new module must be placed here before it builds green.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, bottom first.
const LAYERS: &[&[&str]] = &[
    &[
        "clock",
        "codec",
        "config",
        "metrics",
        "budget",
        "disk",
        "rate_limit",
        "workers",
        "tls",
    ],
    &["chunk_store", "raft", "peer"],
    &["blocks"],
    &["tiering"],
    &["reads"],
    &["service", "actors", "auth", "error"],
    &["server", "http"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (None for lib.rs and binaries).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_owned()),
    }
}

/// Every top-level module a file names as `crate::m` or in `crate::{m, ...}`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `strata_crate::`
        }
        let rest = &text[i + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            // The top-level names of the brace list, up to its matching `}`.
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in list.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.insert(ident(list[start..j].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(list[start..j].trim()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

#[test]
fn modules_import_only_downwards_and_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(mine) = layer_of(&module) else {
            wrong.push(format!(
                "module `{module}` is in no layer: add it to LAYERS in node/tests/layers.rs (and ARCHITECTURE.md)"
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        for used in crate_refs(&text) {
            if used == module {
                continue;
            }
            let Some(theirs) = layer_of(&used) else {
                continue; // a macro or an item of lib.rs
            };
            graph
                .entry(module.clone())
                .or_default()
                .insert(used.clone());
            if theirs > mine {
                wrong.push(format!(
                    "{} (layer {mine}, `{module}`) uses `crate::{used}` (layer {theirs}): dependencies must point down",
                    file.strip_prefix(&src).unwrap_or(file).display()
                ));
            }
        }
    }
    // Cycles among modules of the same layer (a depth-first search for a back edge).
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(pos) = stack.iter().position(|s| s == m) {
            cycles.push(format!(
                "import cycle: {} -> {m}",
                stack[pos..].join(" -> ")
            ));
            return;
        }
        if !done.insert(m.to_owned()) {
            return;
        }
        stack.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            visit(next, graph, stack, done, cycles);
        }
        stack.pop();
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done, &mut wrong);
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    assert!(
        graph
            .get("blocks")
            .is_some_and(|d| d.contains("chunk_store")),
        "the checker found no imports at all: it is not reading the sources"
    );
}

#[test]
fn the_reference_finder_sees_both_forms() {
    let refs = crate_refs("use crate::a::B;\nuse crate::{c, d::{E, F}, g};\nfoo_crate::x");
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        vec!["a", "c", "d", "g"]
    );
}
