//! The `use crate::` / `use super::` graph of anycast-user has no cycle, between files and
//! between the top-level folders (nothing points back up).
//!
//! The graph is read from the sources, not from the compiler: every `crate::…` and
//! `super::…` path outside comments names the longest module prefix that is a file of the
//! crate, and that file depends on it. A module that reaches into its own folder is not an
//! edge between folders. The library (lib.rs and everything but cli/) and the binary
//! (main.rs and cli/) are separate crates and are checked separately.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

type Module = Vec<String>;
type Graph = BTreeMap<Module, BTreeSet<Module>>;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading the source tree") {
        let path = entry.expect("reading the source tree").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `owner/mod.rs` → `[owner]`, `datapath/maps.rs` → `[datapath, maps]`, the root → `[]`.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        name => parts.push(name.trim_end_matches(".rs").to_owned()),
    }
    parts
}

/// The source without comments (so that doc links and prose name no dependency).
fn code(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The paths a `use` tree or an inline path starting at `rest` (just after `crate::` or
/// `super::`) names, expanded over `{…}` groups: `{a::{b, c}, d}` → `a::b`, `a::c`, `d`.
fn expand(rest: &str) -> Vec<Vec<String>> {
    fn tree(s: &[u8], i: &mut usize) -> Vec<Vec<String>> {
        let ident = |s: &[u8], i: &mut usize| {
            let start = *i;
            while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == b'_') {
                *i += 1;
            }
            String::from_utf8_lossy(&s[start..*i]).into_owned()
        };
        let skip_ws = |s: &[u8], i: &mut usize| {
            while *i < s.len() && s[*i].is_ascii_whitespace() {
                *i += 1;
            }
        };
        skip_ws(s, i);
        if *i < s.len() && s[*i] == b'{' {
            *i += 1;
            let mut out = Vec::new();
            loop {
                skip_ws(s, i);
                if *i >= s.len() || s[*i] == b'}' {
                    *i += 1;
                    return out;
                }
                out.extend(tree(s, i));
                skip_ws(s, i);
                if *i < s.len() && s[*i] == b',' {
                    *i += 1;
                }
            }
        }
        let head = ident(s, i);
        if !head.is_empty() && s[*i..].starts_with(b"::") {
            *i += 2;
            return tree(s, i)
                .into_iter()
                .map(|mut p| {
                    p.insert(0, head.clone());
                    p
                })
                .collect();
        }
        // `x as y`, `*`, the end of a path: nothing more names a module.
        while *i < s.len() && !matches!(s[*i], b',' | b'}' | b';') {
            *i += 1;
        }
        vec![if head.is_empty() { vec![] } else { vec![head] }]
    }
    let mut i = 0;
    tree(rest.as_bytes(), &mut i)
}

/// The file modules of one crate and what each depends on.
fn graph(src: &Path, files: &[PathBuf]) -> Graph {
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(src, f)).collect();
    let mut graph = Graph::new();
    for file in files {
        let me = module_of(src, file);
        // `super` of a file module is its parent module.
        let parent: Module = me[..me.len().saturating_sub(1)].to_vec();
        let text = code(&std::fs::read_to_string(file).expect("reading a source file"));
        let deps = graph.entry(me.clone()).or_default();
        for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
            for (at, _) in text.match_indices(prefix) {
                let before = text[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue; // `foo::crate::` or `anycast_user::crate::`: not ours.
                }
                for path in expand(&text[at + prefix.len()..]) {
                    let mut full = base.clone();
                    full.extend(path);
                    // The longest prefix that is a module of this crate.
                    let target = (0..=full.len())
                        .rev()
                        .map(|n| full[..n].to_vec())
                        .find(|m| modules.contains(m))
                        .unwrap_or_default();
                    if target != me && !me.starts_with(&target) {
                        deps.insert(target);
                    }
                }
            }
        }
    }
    graph
}

/// The same graph between top-level modules (folders, or files at the root).
fn folders(graph: &Graph) -> Graph {
    let top = |m: &Module| m.first().cloned().into_iter().collect::<Module>();
    let mut out = Graph::new();
    for (from, deps) in graph {
        let entry = out.entry(top(from)).or_default();
        for to in deps {
            if top(to) != top(from) && !to.is_empty() {
                entry.insert(top(to));
            }
        }
    }
    out
}

/// A cycle, if there is one, as the modules along it.
fn cycle(graph: &Graph) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        graph: &Graph,
        m: &Module,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(m) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|s| s == m).unwrap_or(0);
                let mut c = stack[from..].to_vec();
                c.push(m.clone());
                return Some(c);
            }
            None => {}
        }
        marks.insert(m.clone(), Mark::Open);
        stack.push(m.clone());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(graph, next, marks, stack) {
                return Some(c);
            }
        }
        stack.pop();
        marks.insert(m.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph.keys().find_map(|m| visit(graph, m, &mut marks, &mut Vec::new()))
}

fn show(c: &[Module]) -> String {
    c.iter()
        .map(|m| if m.is_empty() { "crate".to_owned() } else { m.join("::") })
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// The library's and the binary's source files.
fn crates() -> (PathBuf, Vec<PathBuf>, Vec<PathBuf>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    sources(&src, &mut all);
    let (bin, lib): (Vec<PathBuf>, Vec<PathBuf>) = all.into_iter().partition(|f| {
        let m = module_of(&src, f);
        f.file_name().is_some_and(|n| n == "main.rs") && m.is_empty() || m.first().is_some_and(|t| t == "cli")
    });
    (src, lib, bin)
}

#[test]
fn no_cycle_between_files_or_folders() {
    let (src, lib, bin) = crates();
    for (name, files) in [("library", lib), ("binary", bin)] {
        let g = graph(&src, &files);
        if let Some(c) = cycle(&g) {
            panic!("{name}: import cycle between files: {}", show(&c));
        }
        if let Some(c) = cycle(&folders(&g)) {
            panic!("{name}: import cycle between folders: {}", show(&c));
        }
    }
}

#[test]
fn the_checker_sees_a_cycle_and_grouped_imports() {
    // `use crate::{a::{b, c as d}, e};` names a::b, a::c and e.
    assert_eq!(
        expand("{a::{b, c as d}, e};"),
        vec![vec!["a".to_owned(), "b".to_owned()], vec!["a".into(), "c".into()], vec!["e".into()]]
    );
    let m = |s: &str| s.split("::").map(str::to_owned).collect::<Module>();
    let g: Graph = [
        (m("a"), BTreeSet::from([m("b::x")])),
        (m("b::x"), BTreeSet::from([m("c")])),
        (m("c"), BTreeSet::from([m("a")])),
    ]
    .into();
    assert_eq!(show(&cycle(&g).expect("a cycle")), "a -> b::x -> c -> a");
    let f = folders(&g);
    assert!(cycle(&f).is_some());
    let dag: Graph = [(m("a"), BTreeSet::from([m("b")])), (m("b"), BTreeSet::new())].into();
    assert_eq!(cycle(&dag), None);
    // The real library has edges (the parser found its imports).
    let (src, lib, _) = crates();
    let g = graph(&src, &lib);
    assert!(g.get(&m("owner")).is_some_and(|d| d.contains(&m("reconcile"))), "{g:?}");
}
