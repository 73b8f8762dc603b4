//! The import-cycle check of the tidy test: within each crate, no source file imports a file
//! that imports it back (directly or through a longer loop). A file's imports are the paths
//! it names that start with `crate::`, `super::` or `self::` (in `use` trees and inline),
//! resolved to the module file they name; a file's own descendants (its `mod foo;` children,
//! reached by `self::` or otherwise) and `#[cfg(test)] mod … { … }` blocks do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// One token of Rust source, comments and literals already dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    text: String,
    line: usize,
}

/// Splits `src` into identifiers, `::` and single punctuation characters, dropping comments,
/// string, byte-string, raw-string and char literals, lifetimes and numbers.
fn tokens(src: &str) -> Vec<Token> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let n = chars.len();
    let count_lines = |from: usize, to: usize| {
        chars[from..to.min(n)]
            .iter()
            .filter(|c| **c == '\n')
            .count()
    };
    while i < n {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < n && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            // Block comments nest.
            let start = i;
            let mut depth = 0;
            while i < n {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            line += count_lines(start, i);
        } else if let Some(end) = raw_string_end(&chars, i) {
            line += count_lines(i, end);
            i = end;
        } else if c == '"' || (c == 'b' && chars.get(i + 1) == Some(&'"')) {
            let start = i;
            i += if c == 'b' { 2 } else { 1 };
            while i < n && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            line += count_lines(start, i);
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the literal is
            // skipped as a whole.
            if chars.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < n && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < n && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < n && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            if !c.is_ascii_digit() {
                out.push(Token {
                    text: chars[start..i].iter().collect(),
                    line,
                });
            }
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

/// Where a raw (byte) string starting at `i` ends (`r"…"`, `r#"…"#`, `br#"…"#`), if one
/// starts there.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    // Not the tail of an identifier such as `bar"`.
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if chars.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < chars.len() {
        if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(chars.len())
}

/// `tokens` without the bodies of `#[cfg(test)] mod name { … }` blocks.
fn without_test_modules(toks: Vec<Token>) -> Vec<Token> {
    let is = |toks: &[Token], at: usize, s: &str| toks.get(at).is_some_and(|t| t.text == s);
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let cfg_test = ["#", "[", "cfg", "(", "test", ")", "]"]
            .iter()
            .enumerate()
            .all(|(k, s)| is(&toks, i + k, s));
        if cfg_test {
            // Further attributes and a visibility may follow before `mod name {`.
            let mut j = i + 7;
            while is(&toks, j, "#") {
                let mut depth = 0;
                j += 1;
                while j < toks.len() {
                    match toks[j].text.as_str() {
                        "[" => depth += 1,
                        "]" => {
                            depth -= 1;
                            if depth == 0 {
                                j += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
            }
            if is(&toks, j, "pub") {
                j += 1;
                if is(&toks, j, "(") {
                    while j < toks.len() && toks[j].text != ")" {
                        j += 1;
                    }
                    j += 1;
                }
            }
            if is(&toks, j, "mod") && is(&toks, j + 2, "{") {
                let mut depth = 0;
                let mut k = j + 2;
                while k < toks.len() {
                    match toks[k].text.as_str() {
                        "{" => depth += 1,
                        "}" => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    k += 1;
                }
                i = k + 1;
                continue;
            }
        }
        out.push(toks[i].clone());
        i += 1;
    }
    out
}

/// What one file names: its `mod name;` children and the `crate::`/`super::`/`self::` paths
/// it uses (segments, line).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileRefs {
    /// Out-of-line child modules (`mod name;`).
    pub children: Vec<String>,
    /// Paths starting with `crate`, `super` or `self`, each with the line it is on.
    pub paths: Vec<(Vec<String>, usize)>,
}

fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Parses one source file.
pub fn file_refs(src: &str) -> FileRefs {
    let toks = without_test_modules(tokens(src));
    let mut refs = FileRefs::default();
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].text.as_str();
        let after_path_sep = i > 0 && toks[i - 1].text == "::";
        if t == "use" && !after_path_sep {
            let end = toks[i..]
                .iter()
                .position(|t| t.text == ";")
                .map_or(toks.len(), |p| i + p);
            let mut tree = &toks[i + 1..end];
            if tree.first().is_some_and(|t| t.text == "::") {
                tree = &tree[1..];
            }
            let mut paths = Vec::new();
            expand_use_tree(tree, &[], &mut paths);
            let line = toks[i].line;
            refs.paths.extend(
                paths
                    .into_iter()
                    .filter(|p| p.first().is_some_and(|s| is_root_segment(s)))
                    .map(|p| (p, line)),
            );
            i = end + 1;
        } else if t == "mod"
            && toks.get(i + 1).is_some_and(|t| is_ident(&t.text))
            && toks.get(i + 2).is_some_and(|t| t.text == ";")
        {
            refs.children.push(toks[i + 1].text.clone());
            i += 3;
        } else if is_root_segment(t)
            && !after_path_sep
            && toks.get(i + 1).is_some_and(|t| t.text == "::")
        {
            let line = toks[i].line;
            let mut path = vec![t.to_string()];
            let mut j = i + 1;
            while toks.get(j).is_some_and(|t| t.text == "::")
                && toks.get(j + 1).is_some_and(|t| is_ident(&t.text))
            {
                path.push(toks[j + 1].text.clone());
                j += 2;
            }
            refs.paths.push((path, line));
            i = j;
        } else {
            i += 1;
        }
    }
    refs
}

fn is_root_segment(s: &str) -> bool {
    matches!(s, "crate" | "super" | "self")
}

/// Expands one use tree (`a::b::{c, d::{self, e}}`, `a::*`, `a as b`) into full paths.
fn expand_use_tree(tree: &[Token], prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    let mut i = 0;
    while i < tree.len() {
        let t = tree[i].text.as_str();
        match t {
            "{" => {
                // Split the group at top-level commas.
                let mut depth = 0;
                let mut start = i + 1;
                let mut j = i + 1;
                while j < tree.len() {
                    match tree[j].text.as_str() {
                        "{" => depth += 1,
                        "}" if depth == 0 => {
                            expand_use_tree(&tree[start..j], &path, out);
                            return;
                        }
                        "}" => depth -= 1,
                        "," if depth == 0 => {
                            expand_use_tree(&tree[start..j], &path, out);
                            start = j + 1;
                        }
                        _ => {}
                    }
                    j += 1;
                }
                expand_use_tree(&tree[start..j], &path, out);
                return;
            }
            "as" | "*" => break,
            "::" => {}
            // `self` inside a group names the group's own prefix.
            "self" if !path.is_empty() => {}
            _ if is_ident(t) => path.push(t.to_string()),
            _ => break,
        }
        i += 1;
    }
    // An empty tree is the tail after a trailing comma in a group.
    if !tree.is_empty() && !path.is_empty() {
        out.push(path);
    }
}

/// The module path a `crate`/`super`/`self` path leads to from module `current`, as the
/// longest prefix that is a known module (`None` when `super` climbs past the root).
fn resolve(
    path: &[String],
    current: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let mut base: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("self") | Some("super") => current.to_vec(),
        _ => return None,
    };
    let mut rest = &path[1..];
    if path[0] == "super" {
        base.pop()?;
        while rest.first().is_some_and(|s| s == "super") {
            base.pop()?;
            rest = &rest[1..];
        }
    }
    for seg in rest {
        let mut next = base.clone();
        next.push(seg.clone());
        if !modules.contains(&next) {
            break;
        }
        base = next;
    }
    Some(base)
}

/// A crate's module tree: module path → (file, what it names).
type Tree = BTreeMap<Vec<String>, (PathBuf, FileRefs)>;

/// Reads the module tree under `root_file` (a `lib.rs`, `main.rs` or `src/bin/*.rs`).
fn module_tree(root_file: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut todo = vec![(Vec::<String>::new(), root_file.to_path_buf(), true)];
    while let Some((module, file, is_dir_owner)) = todo.pop() {
        let Ok(src) = fs::read_to_string(&file) else {
            continue;
        };
        let refs = file_refs(&src);
        let dir = match (is_dir_owner, file.parent()) {
            (true, Some(p)) => p.to_path_buf(),
            (false, Some(p)) => p.join(file.file_stem().unwrap_or_default()),
            (_, None) => PathBuf::from("."),
        };
        for child in &refs.children {
            let mut path = module.clone();
            path.push(child.clone());
            let flat = dir.join(format!("{child}.rs"));
            if flat.exists() {
                todo.push((path, flat, false));
            } else {
                todo.push((path, dir.join(child).join("mod.rs"), true));
            }
        }
        tree.insert(module, (file, refs));
    }
    tree
}

/// Why one module imports another: the first line naming it and the path written there.
type Reason = (usize, String);

/// Every import cycle between the files of the crate rooted at `root_file`, each as
/// `a.rs <-> b.rs` (or `a.rs -> b.rs -> c.rs -> a.rs`) with the lines that make it, paths
/// relative to `base`.
fn cycles_in(root_file: &Path, base: &Path) -> Vec<String> {
    let tree = module_tree(root_file);
    let modules: BTreeSet<Vec<String>> = tree.keys().cloned().collect();
    // Edges between modules: from → (to → first line and path naming it).
    let mut edges: BTreeMap<Vec<String>, BTreeMap<Vec<String>, Reason>> = BTreeMap::new();
    for (module, (_, refs)) in &tree {
        for (path, line) in &refs.paths {
            let Some(target) = resolve(path, module, &modules) else {
                continue;
            };
            // Itself and its own descendants are not imports of another file.
            if target.starts_with(module) {
                continue;
            }
            edges
                .entry(module.clone())
                .or_default()
                .entry(target)
                .or_insert((*line, path.join("::")));
        }
    }
    let show = |m: &Vec<String>| {
        tree.get(m).map_or_else(
            || m.join("::"),
            |(f, _)| f.strip_prefix(base).unwrap_or(f).display().to_string(),
        )
    };
    let graph: BTreeMap<Vec<String>, Vec<Vec<String>>> = edges
        .iter()
        .map(|(from, to)| (from.clone(), to.keys().cloned().collect()))
        .collect();
    let why = |cycle: &[Vec<String>]| -> String {
        cycle
            .iter()
            .zip(cycle.iter().cycle().skip(1))
            .filter_map(|(a, b)| {
                let (line, path) = edges.get(a)?.get(b)?;
                Some(format!("{}:{line} uses {path}", show(a)))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut out = Vec::new();
    // Every pair of files that import each other...
    for (a, b) in mutual_pairs(&graph) {
        let pair = [a, b];
        out.push(format!(
            "{} <-> {} ({})",
            show(&pair[0]),
            show(&pair[1]),
            why(&pair)
        ));
    }
    // ...and every longer loop that remains without those pairs' edges.
    let mut rest = graph.clone();
    for (a, b) in mutual_pairs(&graph) {
        rest.entry(a.clone()).or_default().retain(|n| *n != b);
        rest.entry(b).or_default().retain(|n| *n != a);
    }
    for cycle in elementary_cycles(&rest) {
        let mut text = cycle.iter().map(show).collect::<Vec<_>>();
        text.push(text[0].clone());
        out.push(format!("{} ({})", text.join(" -> "), why(&cycle)));
    }
    out
}

/// Every `(a, b)` with `a < b` where `a` imports `b` and `b` imports `a`.
fn mutual_pairs<N: Ord + Clone>(graph: &BTreeMap<N, Vec<N>>) -> Vec<(N, N)> {
    let mut out = Vec::new();
    for (a, targets) in graph {
        for b in targets.iter().filter(|b| *b > a) {
            if graph.get(b).is_some_and(|back| back.contains(a)) {
                out.push((a.clone(), b.clone()));
            }
        }
    }
    out
}

/// One cycle per strongly connected component of more than one node (the shortest cycle
/// through its smallest node), so every tangle is reported once.
fn elementary_cycles<N: Ord + Clone>(graph: &BTreeMap<N, Vec<N>>) -> Vec<Vec<N>> {
    let next = |n: &N| graph.get(n).cloned().unwrap_or_default();
    // Reachability by breadth-first search; the graphs are a few dozen files.
    let reach = |from: &N| -> BTreeSet<N> {
        let mut seen = BTreeSet::new();
        let mut queue = vec![from.clone()];
        while let Some(n) = queue.pop() {
            for m in next(&n) {
                if seen.insert(m.clone()) {
                    queue.push(m);
                }
            }
        }
        seen
    };
    let nodes: BTreeSet<N> = graph
        .iter()
        .flat_map(|(k, v)| std::iter::once(k.clone()).chain(v.iter().cloned()))
        .collect();
    let reaches: BTreeMap<N, BTreeSet<N>> = nodes.iter().map(|n| (n.clone(), reach(n))).collect();
    let mut done: BTreeSet<N> = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(n) {
            continue;
        }
        let component: BTreeSet<N> = reaches[n]
            .iter()
            .filter(|m| *m != n && reaches[*m].contains(n))
            .cloned()
            .chain(std::iter::once(n.clone()))
            .collect();
        done.extend(component.iter().cloned());
        if component.len() < 2 {
            continue;
        }
        // Shortest path from n back to n inside the component.
        let mut parent: BTreeMap<N, N> = BTreeMap::new();
        let mut frontier = vec![n.clone()];
        let mut found = None;
        'search: while !frontier.is_empty() {
            let mut later = Vec::new();
            for a in &frontier {
                for b in next(a).into_iter().filter(|b| component.contains(b)) {
                    if &b == n {
                        found = Some(a.clone());
                        break 'search;
                    }
                    if !parent.contains_key(&b) {
                        parent.insert(b.clone(), a.clone());
                        later.push(b);
                    }
                }
            }
            frontier = later;
        }
        let mut cycle = Vec::new();
        let mut at = found;
        while let Some(a) = at {
            cycle.push(a.clone());
            at = if &a == n {
                None
            } else {
                parent.get(&a).cloned()
            };
        }
        cycle.reverse();
        out.push(cycle);
    }
    out
}

/// The crate roots of the workspace: every `src/lib.rs`, `src/main.rs` and `src/bin/*.rs`
/// of the packages under `crates/`, `xtask`, `tests` and `benches`.
fn crate_roots(root: &Path) -> Vec<PathBuf> {
    let mut packages: Vec<PathBuf> = ["xtask", "tests", "benches"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    if let Ok(entries) = fs::read_dir(root.join("crates")) {
        packages.extend(entries.flatten().map(|e| e.path()));
    }
    packages.sort();
    let mut roots = Vec::new();
    for package in packages {
        let src = package.join("src");
        for name in ["lib.rs", "main.rs"] {
            if src.join(name).exists() {
                roots.push(src.join(name));
            }
        }
        if let Ok(bins) = fs::read_dir(src.join("bin")) {
            let mut bins: Vec<PathBuf> = bins
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "rs"))
                .collect();
            bins.sort();
            roots.extend(bins);
        }
    }
    roots
}

/// Every import cycle between source files in the workspace under `root`.
pub fn import_cycles(root: &Path) -> Vec<String> {
    crate_roots(root)
        .iter()
        .flat_map(|r| cycles_in(r, root))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(src: &str) -> Vec<String> {
        file_refs(src)
            .paths
            .into_iter()
            .map(|(p, _)| p.join("::"))
            .collect()
    }

    #[test]
    fn use_trees_expand_to_full_paths() {
        assert_eq!(
            paths("use crate::{a::B, c::{self, d::E as F}, g::*};\nuse std::fmt;"),
            ["crate::a::B", "crate::c", "crate::c::d::E", "crate::g"]
        );
        assert_eq!(paths("pub(crate) use super::x::Y;"), ["super::x::Y"]);
        assert_eq!(paths("use super::*;"), ["super"]);
        assert_eq!(paths("use ::std::fmt;"), Vec::<String>::new());
    }

    #[test]
    fn inline_paths_count_and_visibility_does_not() {
        assert_eq!(
            paths("pub(crate) fn f() { let x = crate::a::b(); super::super::c::D::new() }"),
            ["crate::a::b", "super::super::c::D::new"]
        );
        // `Self::`, `self.x`, `pub(super)` and paths after `::` are not module paths.
        assert_eq!(
            paths("pub(super) fn g(&self) { Self::h(); self.x; other::crate_x::y(); }"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn comments_strings_and_chars_are_not_code() {
        let src = r##"
            // use crate::a::B;
            /// [`crate::docs::X`]
            /* use crate::c; /* nested */ use crate::d; */
            let s = "crate::e::F"; let r = r#"crate::g"#; let c = '{'; let l: &'a str = "";
            use crate::real::Thing;
        "##;
        let refs = file_refs(src);
        assert_eq!(
            refs.paths,
            [(vec!["crate".into(), "real".into(), "Thing".into()], 6)]
        );
    }

    #[test]
    fn test_modules_and_child_declarations() {
        let src = "mod child;\npub mod other;\nmod inline { }\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::x::Y;\n    fn f() { let _ = '}'; }\n}\nuse crate::after::Z;\n";
        let refs = file_refs(src);
        assert_eq!(refs.children, ["child", "other"]);
        assert_eq!(
            refs.paths,
            [(vec!["crate".into(), "after".into(), "Z".into()], 10)]
        );
    }

    fn module(path: &str) -> Vec<String> {
        path.split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn paths_resolve_to_the_longest_known_module() {
        let modules: BTreeSet<Vec<String>> =
            ["", "a", "a::b", "c"].iter().map(|m| module(m)).collect();
        let r = |p: &str, from: &str| resolve(&module(p), &module(from), &modules);
        assert_eq!(r("crate::a::b::Item", "c"), Some(module("a::b")));
        assert_eq!(r("crate::Item", "c"), Some(module("")));
        assert_eq!(r("super::Item", "a::b"), Some(module("a")));
        assert_eq!(r("super::super::c::f", "a::b"), Some(module("c")));
        assert_eq!(r("self::b::X", "a"), Some(module("a::b")));
        assert_eq!(r("super::x", ""), None);
    }

    #[test]
    fn mutual_pairs_are_each_listed() {
        let g: BTreeMap<&str, Vec<&str>> = [
            ("a", vec!["b", "c"]),
            ("b", vec!["a"]),
            ("c", vec!["a", "d"]),
            ("d", vec![]),
        ]
        .into_iter()
        .collect();
        assert_eq!(mutual_pairs(&g), [("a", "b"), ("a", "c")]);
    }

    #[test]
    fn cycles_are_found_once_per_tangle() {
        let g: BTreeMap<&str, Vec<&str>> = [
            ("a", vec!["b"]),
            ("b", vec!["a", "c"]),
            ("c", vec!["d"]),
            ("d", vec!["e"]),
            ("e", vec!["c"]),
            ("f", vec!["a"]),
        ]
        .into_iter()
        .collect();
        assert_eq!(elementary_cycles(&g), [vec!["a", "b"], vec!["c", "d", "e"]]);
        let acyclic: BTreeMap<&str, Vec<&str>> =
            [("a", vec!["b"]), ("b", vec!["c"])].into_iter().collect();
        assert!(elementary_cycles(&acyclic).is_empty());
    }

    #[test]
    fn a_pair_of_files_importing_each_other_is_reported_and_children_are_not() {
        let dir = std::env::temp_dir().join(format!("xtask-imports-{}", std::process::id()));
        let src = dir.join("src");
        fs::create_dir_all(src.join("parent")).unwrap();
        fs::write(
            src.join("lib.rs"),
            "//! root\nmod a;\nmod b;\nmod parent;\n",
        )
        .unwrap();
        fs::write(src.join("a.rs"), "//! a\nuse crate::b::B;\npub struct A;\n").unwrap();
        fs::write(
            src.join("b.rs"),
            "//! b\npub struct B;\nfn f() { crate::a::A; }\n",
        )
        .unwrap();
        fs::write(
            src.join("parent.rs"),
            "//! p\nmod kid;\nuse self::kid::K;\npub struct P;\n",
        )
        .unwrap();
        fs::write(
            src.join("parent/kid.rs"),
            "//! k\nuse super::P;\npub struct K;\n",
        )
        .unwrap();
        let found = cycles_in(&src.join("lib.rs"), &dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            ["src/a.rs <-> src/b.rs (src/a.rs:2 uses crate::b::B; src/b.rs:3 uses crate::a::A)"]
        );
    }
}
