//! The module graph, read from the source as an outsider would: which top-level module of
//! `src/` names which other (`crate::<module>` in its code, not its comments or its unit
//! tests). The graph must have no cycle, so that each port, stage and adapter can be read,
//! tested and replaced from the bottom up (ARCHITECTURE.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// `crate::<name>` references in code lines, up to the first `#[cfg(test)]`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut names = BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// Module → the other top-level modules it names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib"
            || name == "main"
            || (path.is_file() && path.extension().is_none_or(|e| e != "rs"))
        {
            continue;
        }
        modules.insert(name, path);
    }
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, path)| {
            let mut files = Vec::new();
            rust_files(path, &mut files);
            let named = files
                .iter()
                .flat_map(|f| named_modules(&std::fs::read_to_string(f).unwrap()))
                .filter(|n| n != name && known.contains(n))
                .collect();
            (name.clone(), named)
        })
        .collect()
}

/// A cycle through `start`, if there is one: the modules along it.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in graph.get(&at).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_string());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn the_top_level_modules_depend_on_each_other_without_a_cycle() {
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.len() > 10, "the source tree was not read: {graph:?}");
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_from(&graph, m))
        .map(|c| c.join(" → "))
        .collect();
    assert!(cycles.is_empty(), "module cycles: {cycles:#?}");
}

#[test]
fn a_cycle_is_found_when_two_modules_name_each_other() {
    let graph = BTreeMap::from([
        ("keys".to_string(), BTreeSet::from(["stores".to_string()])),
        (
            "stores".to_string(),
            BTreeSet::from(["crypto".to_string(), "keys".to_string()]),
        ),
        ("crypto".to_string(), BTreeSet::new()),
    ]);
    assert_eq!(
        cycle_from(&graph, "keys"),
        Some(vec!["keys".into(), "stores".into(), "keys".into()])
    );
    assert_eq!(cycle_from(&graph, "crypto"), None);
    assert_eq!(
        named_modules(
            "use crate::keys::WrappedUserKey;\n// crate::runtime\n#[cfg(test)]\nuse crate::cli;"
        ),
        BTreeSet::from(["keys".to_string()])
    );
}

#[test]
fn ports_and_their_adapters_name_no_stage_and_no_runtime() {
    // A port owns the types it is called with, so an adapter can be written, read and tested
    // without the stages, the pipeline or the runtime that call it.
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let callers = ["stages", "pipeline", "runtime", "privacy", "cli", "serve"];
    for port in [
        "sources",
        "keys",
        "stores",
        "indexes",
        "dead_letter",
        "segment_changes",
    ] {
        let named = graph
            .get(port)
            .unwrap_or_else(|| panic!("no module {port}"));
        let above: Vec<&String> = named
            .iter()
            .filter(|n| callers.contains(&n.as_str()))
            .collect();
        assert!(above.is_empty(), "the {port} port names {above:?}");
    }
}
