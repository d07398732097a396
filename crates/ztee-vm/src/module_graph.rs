//! The guard on ztee-vm's layering: builds the crate's module graph from its own source (every
//! `crate::`, `super::`, `self::` and child-module path, in `use` items and in code) and checks
//! that it has no cycle, and that the lower layers never reach the engine or a sandbox. An import
//! cycle once tied seven modules together so that no backend could change alone; these tests keep
//! a new one from creeping back in. `docs/execution.md` ("Backends") shows the layers.
//!
//! Nodes are files (`backend::qemu`, `jail`), plus each file's `#[cfg(test)] mod` block as a node
//! of its own (`egress::tests`), since test code may reach across layers without forming a cycle
//! in the code that ships. A re-export (`pub use`, at the crate root or in a `mod.rs`) adds no
//! edge: a path through it (`crate::Engine`, `crate::jail::Spawner`) is an edge to the module
//! that defines the item. The root's own items (`crate::hex`) form the node `crate`. What the
//! parse cannot see: names a module uses unqualified through its own `pub use`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every module file under `src`, by module path (`crate` for `lib.rs`).
fn module_files(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut files = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = relative
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().map(String::as_str) == Some("mod") {
                parts.pop();
            }
            let name = if parts == ["lib"] {
                "crate".to_string()
            } else {
                parts.join("::")
            };
            files.insert(name, path);
        }
    }
    files
}

/// The source without comments (a `//` up to the end of its line), line by line.
fn code_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => line[..at].to_string(),
            None => line.to_string(),
        })
        .collect()
}

/// One leaf of a `use` tree: its path, and the name it brings into scope.
struct Leaf {
    path: Vec<String>,
    name: String,
}

/// A `use` tree (`a::{b, c::{d, self}, e as f}`) expanded into its leaves.
fn expand_use(tree: &str) -> Vec<Leaf> {
    fn split_top(list: &str) -> Vec<&str> {
        let (mut depth, mut start, mut parts) = (0usize, 0usize, Vec::new());
        for (i, c) in list.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    parts.push(&list[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&list[start..]);
        parts
    }
    fn walk(prefix: &[String], tree: &str, out: &mut Vec<Leaf>) {
        let tree = tree.trim();
        if tree.is_empty() {
            return;
        }
        if let Some(open) = tree.find('{') {
            let mut base = prefix.to_vec();
            base.extend(
                tree[..open]
                    .split("::")
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            for part in split_top(inner) {
                walk(&base, part, out);
            }
            return;
        }
        let (tree, alias) = match tree.split_once(" as ") {
            Some((tree, alias)) => (tree, Some(alias.trim().to_string())),
            None => (tree, None),
        };
        let mut path = prefix.to_vec();
        for segment in tree.split("::").map(str::trim) {
            // `{self, ..}` and `*` name the path they stand in.
            if (segment != "self" || path.is_empty()) && segment != "*" {
                path.push(segment.to_string());
            }
        }
        let name = alias.unwrap_or_else(|| path.last().cloned().unwrap_or_default());
        out.push(Leaf { path, name });
    }
    let mut out = Vec::new();
    walk(&[], tree, &mut out);
    out
}

/// Paths written in code (not in `use` items) that start with `crate::`, `super::`, `self::`
/// or one of `children::`.
fn inline_paths(line: &str, children: &[&str]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let bytes = line.as_bytes();
    let roots = ["crate", "super", "self"]
        .iter()
        .chain(children)
        .map(|root| format!("{root}::"));
    for root in roots {
        let mut from = 0;
        while let Some(found) = line[from..].find(&root) {
            let start = from + found;
            from = start + root.len();
            let preceded_by_ident = start > 0
                && (bytes[start - 1].is_ascii_alphanumeric()
                    || bytes[start - 1] == b'_'
                    || bytes[start - 1] == b':');
            if preceded_by_ident {
                continue;
            }
            let rest = &line[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let path: Vec<String> = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            paths.push(path);
        }
    }
    paths
}

/// `module`'s parent module path (`crate` for a top-level module).
fn parent(module: &str) -> String {
    match module.rfind("::") {
        Some(at) => module[..at].to_string(),
        None => "crate".to_string(),
    }
}

fn join(base: &str, segment: &str) -> String {
    if base == "crate" {
        segment.to_string()
    } else {
        format!("{base}::{segment}")
    }
}

/// A re-export: the module that wrote it, and the path it names.
type Reexport = (String, Vec<String>);

struct Resolver<'a> {
    modules: &'a BTreeSet<String>,
    /// `pub use` items, by (module, name they are known by there).
    reexports: BTreeMap<(String, String), Reexport>,
}

impl Resolver<'_> {
    /// The module that defines what `path`, written in file module `file`, names: through
    /// re-exports to the module that defines the item. `None` for paths into other crates.
    fn resolve(&self, file: &str, in_test: bool, path: &[String]) -> Option<String> {
        self.resolve_within(file, in_test, path, 0)
    }

    fn resolve_within(
        &self,
        file: &str,
        in_test: bool,
        path: &[String],
        depth: usize,
    ) -> Option<String> {
        let (first, tail) = path.split_first()?;
        let (mut base, mut rest) = match first.as_str() {
            "crate" => ("crate".to_string(), tail),
            // In a `mod tests` block, `super` is the file's module itself.
            "super" if in_test => (file.to_string(), tail),
            "super" => (parent(file), tail),
            "self" => (file.to_string(), tail),
            child if self.modules.contains(&join(file, child)) => (file.to_string(), path),
            _ => return None,
        };
        while let Some((next, after)) = rest.split_first() {
            if next != "super" {
                break;
            }
            base = parent(&base);
            rest = after;
        }
        let mut module = base;
        let mut remaining = rest;
        while let Some((segment, after)) = remaining.split_first() {
            let next = join(&module, segment);
            if !self.modules.contains(&next) {
                break;
            }
            module = next;
            remaining = after;
        }
        if let Some(name) = remaining.first() {
            if let Some((origin, target)) = self.reexports.get(&(module.clone(), name.clone())) {
                if depth < 8 {
                    return self.resolve_within(origin, false, target, depth + 1);
                }
            }
        }
        Some(module)
    }
}

/// The `use` items of a file, each joined into one string, with the line each starts on and
/// whether it is a re-export (`pub use`, `pub(crate) use`).
fn use_items(lines: &[String]) -> Vec<(usize, String, bool)> {
    let mut items = Vec::new();
    let mut current: Option<(usize, String, bool)> = None;
    for (number, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if current.is_none() {
            for prefix in ["use ", "pub use ", "pub(crate) use ", "pub(super) use "] {
                if let Some(body) = trimmed.strip_prefix(prefix) {
                    current = Some((number, body.to_string(), prefix != "use "));
                    break;
                }
            }
        } else if let Some((_, text, _)) = current.as_mut() {
            text.push(' ');
            text.push_str(trimmed);
        }
        let done = current
            .as_ref()
            .is_some_and(|(_, text, _)| text.trim_end().ends_with(';'));
        if done {
            if let Some((start, text, reexport)) = current.take() {
                let text = text.trim_end().trim_end_matches(';').to_string();
                items.push((start, text, reexport));
            }
        }
    }
    items
}

/// For each line, the name of the `#[cfg(test)] mod NAME { .. }` block it is in, if any.
fn test_blocks(lines: &[String]) -> Vec<Option<String>> {
    let mut inside = vec![None; lines.len()];
    let mut number = 0;
    while number < lines.len() {
        let is_cfg_test = lines[number].trim() == "#[cfg(test)]";
        let declaration = lines.get(number + 1).map(|l| l.trim()).unwrap_or("");
        let name = declaration
            .strip_prefix("mod ")
            .and_then(|rest| rest.strip_suffix('{'))
            .map(|name| name.trim().to_string());
        if let (true, Some(name)) = (is_cfg_test, name) {
            let mut depth = 0i64;
            let mut line = number + 1;
            while line < lines.len() {
                inside[line] = Some(name.clone());
                depth += lines[line].matches('{').count() as i64;
                depth -= lines[line].matches('}').count() as i64;
                if depth <= 0 {
                    break;
                }
                line += 1;
            }
            number = line + 1;
        } else {
            number += 1;
        }
    }
    inside
}

/// ztee-vm's module graph, read from `src`. A re-export (`pub use`) is how a module names
/// another's item, not a use of it: it adds no edge, and a path through it leads to the module
/// that defines the item.
fn module_graph(src: &Path) -> Graph {
    let mut files = module_files(src);
    // This file's test data is full of paths; they are not its imports.
    files.remove("module_graph");
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut parsed = BTreeMap::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", file.display()));
        let lines = code_lines(&text);
        let tests = test_blocks(&lines);
        let items = use_items(&lines);
        parsed.insert(module.clone(), (lines, tests, items));
    }
    let mut reexports = BTreeMap::new();
    for (module, (_, tests, items)) in &parsed {
        for (start, item, reexport) in items {
            if !reexport || tests[*start].is_some() {
                continue;
            }
            for leaf in expand_use(item) {
                if leaf.name != "*" {
                    reexports.insert((module.clone(), leaf.name), (module.clone(), leaf.path));
                }
            }
        }
    }
    let resolver = Resolver {
        modules: &modules,
        reexports,
    };
    let mut graph = Graph::new();
    for (module, (lines, tests, items)) in &parsed {
        let node = |line: usize| match &tests[line] {
            Some(name) => format!("{module}::{name}"),
            None => module.clone(),
        };
        graph.entry(module.clone()).or_default();
        let mut in_use_item = vec![false; lines.len()];
        for (start, item, reexport) in items {
            let end = (*start..lines.len())
                .find(|&l| lines[l].contains(';'))
                .unwrap_or(*start);
            in_use_item[*start..=end].iter_mut().for_each(|f| *f = true);
            if *reexport {
                continue;
            }
            for leaf in expand_use(item) {
                if let Some(target) = resolver.resolve(module, tests[*start].is_some(), &leaf.path)
                {
                    graph.entry(node(*start)).or_default().insert(target);
                }
            }
        }
        let prefix = join(module, "");
        let children: Vec<&str> = modules
            .iter()
            .filter_map(|m| m.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty() && !rest.contains("::"))
            .collect();
        for (number, line) in lines.iter().enumerate() {
            if in_use_item[number] {
                continue;
            }
            for path in inline_paths(line, &children) {
                if let Some(target) = resolver.resolve(module, tests[number].is_some(), &path) {
                    graph.entry(node(number)).or_default().insert(target);
                }
            }
        }
    }
    for (from, targets) in graph.iter_mut() {
        targets.remove(from);
    }
    graph
}

/// A cycle in `graph` (its nodes in order, the first repeated at the end), if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'a>(
        graph: &'a Graph,
        node: &'a str,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle: Vec<String> = path[from..].iter().map(|n| n.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node, Mark::Open);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(graph, next, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        let mut path = Vec::new();
        if let Some(cycle) = visit(graph, node, &mut marks, &mut path) {
            return Some(cycle);
        }
    }
    None
}

/// Every module `from` reaches, following edges.
fn reachable(graph: &Graph, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(node) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    seen
}

fn this_crate() -> Graph {
    module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

fn render(graph: &Graph) -> String {
    graph
        .iter()
        .filter(|(_, targets)| !targets.is_empty())
        .map(|(from, targets)| {
            let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
            format!("{from} -> {}\n", targets.join(", "))
        })
        .collect()
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = this_crate();
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle in ztee-vm: {}\n\nthe module graph:\n{}",
            cycle.join(" -> "),
            render(&graph)
        );
    }
}

#[test]
fn lower_layers_never_reach_the_engine_or_a_sandbox() {
    let graph = this_crate();
    let upper = ["engine", "sandbox", "pool", "select"];
    let lower = [
        "channel", "qmp", "jail", "assets", "config", "runtime", "error", "snapshot", "backend",
    ];
    let mut lower: Vec<String> = lower.iter().map(|m| m.to_string()).collect();
    lower.extend(
        graph
            .keys()
            .filter(|m| m.starts_with("backend::") && !m.ends_with("::tests"))
            .cloned(),
    );
    for module in &lower {
        let reached = reachable(&graph, module);
        for top in upper {
            assert!(
                !reached.contains(top),
                "{module} reaches {top}; the module graph:\n{}",
                render(&graph)
            );
        }
    }
}

#[test]
fn the_engine_pool_and_sandbox_use_no_concrete_backend() {
    let graph = this_crate();
    for module in ["engine", "pool", "sandbox"] {
        let concrete: Vec<&String> = graph[module]
            .iter()
            .filter(|m| m.starts_with("backend::qemu") || m.starts_with("backend::firecracker"))
            .collect();
        assert!(
            concrete.is_empty(),
            "{module} uses {concrete:?}; it should go through the Backend trait"
        );
    }
}

#[test]
fn the_graph_sees_real_edges() {
    // Guards the guard: a parser that saw no edges would find no cycle either.
    let graph = this_crate();
    assert!(graph["engine"].contains("sandbox"), "{}", render(&graph));
    assert!(
        graph["backend::qemu"].contains("jail"),
        "{}",
        render(&graph)
    );
    assert!(
        graph["egress::tests"].contains("fake_guest"),
        "{}",
        render(&graph)
    );
    // A root re-export counts as its defining module: `config` names `GuestAssets` only through
    // `crate::GuestAssets`.
    assert!(graph["config"].contains("assets"), "{}", render(&graph));
    // The command line's sandbox supervisor lives in the `ztee` binary, not in the engine.
    assert!(
        !graph
            .keys()
            .any(|m| m == "local" || m.starts_with("local::")),
        "{}",
        render(&graph)
    );
}

#[test]
fn a_cycle_is_found_and_named() {
    let mut graph = Graph::new();
    let mut edge = |a: &str, b: &str| {
        graph.entry(a.into()).or_default().insert(b.into());
        graph.entry(b.into()).or_default();
    };
    edge("engine", "pool");
    edge("pool", "runtime");
    edge("runtime", "engine");
    edge("engine", "channel");
    let cycle = find_cycle(&graph).expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    for module in ["engine", "pool", "runtime"] {
        assert!(cycle.iter().any(|m| m == module), "{cycle:?}");
    }
    if let Some(targets) = graph.get_mut("runtime") {
        targets.remove("engine");
    }
    assert_eq!(find_cycle(&graph), None);
}

#[test]
fn use_trees_expand_to_their_leaves() {
    let leaves = expand_use("crate::backend::firecracker::{self, jailer, ApiClient as Api}");
    let leaves: Vec<(String, &str)> = leaves
        .iter()
        .map(|leaf| (leaf.path.join("::"), leaf.name.as_str()))
        .collect();
    assert_eq!(
        leaves,
        [
            ("crate::backend::firecracker".to_string(), "firecracker"),
            ("crate::backend::firecracker::jailer".to_string(), "jailer"),
            ("crate::backend::firecracker::ApiClient".to_string(), "Api"),
        ]
    );
    let inline = inline_paths(
        "let x = crate::snapshot::file_identity(&p)?; vsock::connect(super::version(b))",
        &["vsock"],
    );
    assert_eq!(
        inline,
        [
            vec!["crate", "snapshot", "file_identity"],
            vec!["super", "version"],
            vec!["vsock", "connect"],
        ]
    );
}

/// Prints the graph: `cargo test -p ztee-vm --lib module_graph::print -- --ignored --nocapture`,
/// of another copy of the source with `ZTEE_VM_SRC=<dir>` (an older revision, say), and the
/// first cycle in it if there is one.
#[test]
#[ignore]
fn print() {
    let graph = match std::env::var_os("ZTEE_VM_SRC") {
        Some(src) => module_graph(Path::new(&src)),
        None => this_crate(),
    };
    print!("{}", render(&graph));
    if let Some(cycle) = find_cycle(&graph) {
        println!("cycle: {}", cycle.join(" -> "));
    }
}
