//! The shape of `proxy/src`: modules by request stage, arrows pointing one way.
//!
//! Every `.rs` file under `proxy/src` is a module (`a/mod.rs` and `a.rs` are `a`, `a/b.rs` is
//! `a::b`). Its references to other modules of the crate (`crate::…`, `super::…`, `self::…`,
//! and paths through its own child modules, in `use` items, code and macro bodies alike, but
//! not in comments) are its dependencies. The tests check that:
//!
//! - no module depends on a module that depends on it, directly or through others (a module
//!   and its own submodules count as one: only references between separate modules count);
//! - no source file is over [`MAX_LINES`] lines;
//! - the file holding the `ProxyHttp` implementation is under [`MAX_SERVICE_LINES`] lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{Delimiter, TokenStream, TokenTree};

const MAX_LINES: usize = 700;
const MAX_SERVICE_LINES: usize = 400;

/// A module path inside the crate, as segments (`[]` is the crate root).
type ModPath = Vec<String>;

struct SourceFile {
    path: PathBuf,
    module: ModPath,
    text: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The library's source files with their module paths (`main.rs` is another crate).
fn library_files() -> Vec<SourceFile> {
    let src = src_dir();
    rust_files(&src)
        .into_iter()
        .filter(|p| p != &src.join("main.rs"))
        .map(|path| {
            let relative = path.strip_prefix(&src).unwrap().with_extension("");
            let mut module: ModPath = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            SourceFile { path, module, text }
        })
        .collect()
}

fn display(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

/// Collects the module paths a token stream refers to.
struct Scanner<'a> {
    /// Modules that are files, to resolve a reference to the file that holds it.
    children: &'a BTreeMap<ModPath, BTreeSet<String>>,
    found: BTreeSet<ModPath>,
}

impl Scanner<'_> {
    /// Scans `tokens`, written inside module `here` (a file's module, or an inline `mod`
    /// within it).
    fn scan(&mut self, tokens: TokenStream, here: &ModPath) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            // An inline module: its body is written inside it.
            if let (
                Some(TokenTree::Ident(kw)),
                Some(TokenTree::Ident(name)),
                Some(TokenTree::Group(body)),
            ) = (tokens.get(i), tokens.get(i + 1), tokens.get(i + 2))
            {
                if kw == "mod" && body.delimiter() == Delimiter::Brace {
                    let mut inner = here.clone();
                    inner.push(name.to_string());
                    self.scan(body.stream(), &inner);
                    i += 3;
                    continue;
                }
            }
            match &tokens[i] {
                TokenTree::Group(g) => {
                    self.scan(g.stream(), here);
                    i += 1;
                }
                TokenTree::Ident(_) => {
                    // Not the tail of another path (`a::crate` is no such thing, but `x::super`
                    // would be).
                    let after_colons = i >= 2
                        && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == ':')
                        && matches!(&tokens[i - 2], TokenTree::Punct(p) if p.as_char() == ':');
                    if after_colons {
                        i += 1;
                        continue;
                    }
                    i = self.path(&tokens, i, here, Vec::new());
                }
                _ => i += 1,
            }
        }
    }

    /// Reads a path starting at `tokens[start]` (prefixed by `prefix`, for `use` groups) and
    /// records where it points; returns the index after it.
    fn path(
        &mut self,
        tokens: &[TokenTree],
        start: usize,
        here: &ModPath,
        prefix: Vec<String>,
    ) -> usize {
        let mut segments = prefix;
        let mut i = start;
        loop {
            match tokens.get(i) {
                Some(TokenTree::Ident(id)) => segments.push(id.to_string()),
                Some(TokenTree::Group(g))
                    if g.delimiter() == Delimiter::Brace && !segments.is_empty() =>
                {
                    // `use a::{b, c::d}`: each item continues the path.
                    let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                    let mut j = 0;
                    while j < inner.len() {
                        if matches!(&inner[j], TokenTree::Ident(_) | TokenTree::Group(_)) {
                            j = self.path(&inner, j, here, segments.clone());
                        } else {
                            j += 1;
                        }
                    }
                    self.record(&segments, here);
                    return i + 1;
                }
                _ => break,
            }
            let colons = matches!(tokens.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == ':')
                && matches!(tokens.get(i + 2), Some(TokenTree::Punct(p)) if p.as_char() == ':');
            if !colons {
                i += 1;
                break;
            }
            i += 3;
        }
        self.record(&segments, here);
        i.max(start + 1)
    }

    /// Records the module `segments` lead to, written inside `here`.
    fn record(&mut self, segments: &[String], here: &ModPath) {
        let Some(first) = segments.first() else {
            return;
        };
        let mut target: ModPath = match first.as_str() {
            "crate" => Vec::new(),
            "self" => here.clone(),
            "super" => {
                let mut m = here.clone();
                let mut rest = segments;
                while rest.first().map(String::as_str) == Some("super") {
                    m.pop();
                    rest = &rest[1..];
                }
                m.extend(rest.iter().cloned());
                self.found.insert(m);
                return;
            }
            // A path through one of this module's own child modules (`child::item`; a bare
            // name is a `mod child;` declaration, or not a module at all).
            name if segments.len() > 1
                && self.children.get(here).is_some_and(|c| c.contains(name)) =>
            {
                here.clone()
            }
            _ => return,
        };
        let rest = if first == "crate" || first == "self" {
            &segments[1..]
        } else {
            segments
        };
        target.extend(rest.iter().cloned());
        self.found.insert(target);
    }
}

/// The file module that holds `path` (its longest prefix that is a file).
fn holder(path: &[String], files: &BTreeSet<ModPath>) -> Option<ModPath> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| files.contains(p))
}

/// Each file module and the file modules it refers to (not itself).
fn dependencies(files: &[SourceFile]) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let modules: BTreeSet<ModPath> = files.iter().map(|f| f.module.clone()).collect();
    let mut children: BTreeMap<ModPath, BTreeSet<String>> = BTreeMap::new();
    for m in &modules {
        if let Some((last, parent)) = m.split_last() {
            children
                .entry(parent.to_vec())
                .or_default()
                .insert(last.clone());
        }
    }
    let mut graph = BTreeMap::new();
    for f in files {
        let tokens: TokenStream = f
            .text
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e:?}", f.path.display()));
        let mut scanner = Scanner {
            children: &children,
            found: BTreeSet::new(),
        };
        scanner.scan(tokens, &f.module);
        let deps: BTreeSet<ModPath> = scanner
            .found
            .iter()
            .filter_map(|p| holder(p, &modules))
            // The crate root only declares modules; a path through it names one of them. A
            // module and its own submodules are one unit (children `use super::…` their
            // parent's types, the parent calls into its children).
            .filter(|p| !p.is_empty() && !p.starts_with(&f.module) && !f.module.starts_with(p))
            .collect();
        graph.insert(f.module.clone(), deps);
    }
    graph
}

/// One cycle of `graph`, as the modules along it (the first repeated at the end).
fn find_cycle(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Option<Vec<ModPath>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &ModPath,
        graph: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        marks: &mut BTreeMap<ModPath, Mark>,
        stack: &mut Vec<ModPath>,
    ) -> Option<Vec<ModPath>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn no_module_depends_on_a_module_that_depends_on_it() {
    let graph = dependencies(&library_files());
    if let Some(cycle) = find_cycle(&graph) {
        let path: Vec<String> = cycle.iter().map(|m| display(m)).collect();
        panic!("import cycle: {}", path.join(" -> "));
    }
}

#[test]
fn no_source_file_is_over_the_limit() {
    let long: Vec<String> = rust_files(&src_dir())
        .into_iter()
        .filter_map(|p| {
            let lines = std::fs::read_to_string(&p).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", p.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines: {}",
        long.join(", ")
    );
}

#[test]
fn the_proxy_service_is_short() {
    let holders: Vec<(PathBuf, usize)> = rust_files(&src_dir())
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            text.contains("impl ProxyHttp for")
                .then(|| (p, text.lines().count()))
        })
        .collect();
    assert_eq!(
        holders.len(),
        1,
        "one file implements ProxyHttp: {holders:?}"
    );
    let (path, lines) = &holders[0];
    assert!(
        *lines < MAX_SERVICE_LINES,
        "{} holds the ProxyHttp implementation in {lines} lines (at most {})",
        path.display(),
        MAX_SERVICE_LINES - 1
    );
}

/// The scanner itself: it finds what the checks above rely on.
#[test]
fn references_are_found_in_uses_code_and_macros_but_not_comments() {
    let files = vec![
        SourceFile {
            path: "a.rs".into(),
            module: vec!["a".into()],
            text: "use crate::b::{X, c::Y};\n// crate::d::Z\nfn f() { tokio::spawn(async { crate::e::go() }); }\n#[cfg(test)] mod tests { use super::*; }".into(),
        },
        SourceFile {
            path: "b.rs".into(),
            module: vec!["b".into()],
            text: "mod c; use self::c::Y;".into(),
        },
        SourceFile {
            path: "b/c.rs".into(),
            module: vec!["b".into(), "c".into()],
            text: "use super::super::a::f;".into(),
        },
        SourceFile {
            path: "d.rs".into(),
            module: vec!["d".into()],
            text: String::new(),
        },
        SourceFile {
            path: "e.rs".into(),
            module: vec!["e".into()],
            text: String::new(),
        },
    ];
    let graph = dependencies(&files);
    let deps = |m: &[&str]| -> Vec<String> {
        let m: ModPath = m.iter().map(|s| s.to_string()).collect();
        graph[&m].iter().map(|d| display(d)).collect()
    };
    assert_eq!(deps(&["a"]), ["b", "b::c", "e"]);
    assert!(
        deps(&["b"]).is_empty(),
        "a parent's own submodules are part of it"
    );
    assert_eq!(deps(&["b", "c"]), ["a"]);
    let cycle: Vec<String> = find_cycle(&graph)
        .unwrap()
        .iter()
        .map(|m| display(m))
        .collect();
    assert_eq!(cycle, ["a", "b::c", "a"]);
}
