//! The library's layer map, kept by a test: every `crate::…` path in non-test code
//! must point to a module of a lower layer than its own, and no two top-level modules
//! may depend on each other. The table is read from ARCHITECTURE.md ("Layers"), so the
//! document and the code cannot drift apart.
//!
//! What counts is code: paths in comments, doc comments, string literals and
//! `#[cfg(test)]` items are ignored, and so are `tests.rs` files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// One import of another top-level module.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    file: PathBuf,
    line: usize,
    from: String,
    to: String,
}

/// Something the layer rules forbid.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Violation {
    /// A module missing from the table.
    Unlisted { module: String, file: PathBuf },
    /// An import of a module in the same or a higher layer.
    Upward {
        import: Import,
        from_layer: usize,
        to_layer: usize,
    },
    /// Top-level modules that import each other, with one import per edge.
    Cycle {
        modules: Vec<String>,
        edges: Vec<Import>,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Unlisted { module, file } => write!(
                f,
                "{}: module `{module}` has no layer in ARCHITECTURE.md's table",
                file.display()
            ),
            Violation::Upward {
                import,
                from_layer,
                to_layer,
            } => write!(
                f,
                "{}:{}: `{}` (layer {from_layer}) imports `{}` (layer {to_layer}); a module may import only from lower layers",
                import.file.display(),
                import.line,
                import.from,
                import.to
            ),
            Violation::Cycle { modules, edges } => {
                write!(f, "import cycle between {}:", modules.join(", "))?;
                for e in edges {
                    write!(
                        f,
                        "\n    {}:{}: `{}` imports `{}`",
                        e.file.display(),
                        e.line,
                        e.from,
                        e.to
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Reads the layer table: rows `| N | `a`, `b` | … |` under a heading that contains
/// "Layers". Returns module → layer.
fn parse_layer_table(markdown: &str) -> BTreeMap<String, usize> {
    let mut layers = BTreeMap::new();
    let mut in_section = false;
    for line in markdown.lines() {
        if line.starts_with('#') {
            in_section = line.contains("Layers");
            continue;
        }
        if !in_section {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // A row is `| layer | modules | … |`: cells[0] is empty before the first bar.
        let (Some(layer), Some(modules)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(layer) = layer.parse::<usize>() else {
            continue;
        };
        for name in modules.split('`').skip(1).step_by(2) {
            layers.insert(name.to_owned(), layer);
        }
    }
    layers
}

/// Blanks out comments, string and char literals, keeping line breaks so that line
/// numbers stay right.
fn strip_non_code(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match chars.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some(_) => j += 1,
                }
            }
            for ch in &chars[i..j.min(chars.len())] {
                out.push(blank(*ch));
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                let step = if chars[i] == '\\' { 2 } else { 1 };
                for ch in chars.iter().skip(i).take(step) {
                    out.push(blank(*ch));
                }
                i += step;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '"'); anything else is a lifetime.
            let len = match (next, chars.get(i + 2)) {
                (Some('\\'), _) => chars[i + 1..]
                    .iter()
                    .position(|&ch| ch == '\'')
                    .filter(|&p| p > 1)
                    .map(|p| p + 2),
                (Some(_), Some('\'')) => Some(3),
                _ => None,
            };
            match len {
                Some(n) => {
                    out.extend(std::iter::repeat_n(' ', n));
                    i += n;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0
        && chars
            .get(i - 1)
            .is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// Blanks out `#[cfg(test)]` items: a `mod x;` declaration or a braced block.
fn strip_test_items(code: &str) -> String {
    let mut out: Vec<char> = code.chars().collect();
    let marker: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i + marker.len() <= out.len() {
        if out[i..i + marker.len()] != marker[..] {
            i += 1;
            continue;
        }
        let mut j = i + marker.len();
        while j < out.len() && out[j] != '{' && out[j] != ';' {
            j += 1;
        }
        if j < out.len() && out[j] == '{' {
            let mut depth = 0usize;
            while j < out.len() {
                match out[j] {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        let end = (j + 1).min(out.len());
        for ch in &mut out[i..end] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        i = end;
    }
    out.into_iter().collect()
}

fn ident_at(chars: &[char], mut i: usize) -> (String, usize) {
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    let start = i;
    while chars
        .get(i)
        .is_some_and(|c| c.is_alphanumeric() || *c == '_')
    {
        i += 1;
    }
    (chars[start..i].iter().collect(), i)
}

/// The first segment of every entry of a `{a::b, c, d::{e}}` group starting at `i`.
fn group_heads(chars: &[char], i: usize) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut expect_head = true;
    let mut j = i;
    while j < chars.len() {
        match chars[j] {
            '{' => {
                depth += 1;
                expect_head = depth == 1;
                j += 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
                j += 1;
            }
            ',' => {
                expect_head = depth == 1;
                j += 1;
            }
            c if expect_head && depth == 1 && (c.is_alphanumeric() || c == '_') => {
                let (name, end) = ident_at(chars, j);
                heads.push(name);
                expect_head = false;
                j = end;
            }
            _ => j += 1,
        }
    }
    heads
}

/// The top-level modules a file's code refers to, with line numbers.
fn imports_of(code: &str, module_path: &[String]) -> Vec<(usize, String)> {
    let chars: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let at_word_start = !ident_before(&chars, i);
        let rest = |s: &str| {
            s.chars()
                .enumerate()
                .all(|(k, c)| chars.get(i + k) == Some(&c))
        };
        let (mut base, mut j): (Vec<String>, usize) = if at_word_start && rest("crate::") {
            (Vec::new(), i + "crate::".len())
        } else if at_word_start && rest("super::") {
            let mut base = module_path.to_vec();
            let mut j = i;
            while "super::"
                .chars()
                .enumerate()
                .all(|(k, c)| chars.get(j + k) == Some(&c))
            {
                base.pop();
                j += "super::".len();
            }
            (base, j)
        } else {
            i += 1;
            continue;
        };
        let line = chars[..i].iter().filter(|&&c| c == '\n').count() + 1;
        if let Some(top) = base.first() {
            found.push((line, top.clone()));
        } else if chars.get(j) == Some(&'{') {
            for head in group_heads(&chars, j) {
                found.push((line, head));
            }
        } else {
            let (name, end) = ident_at(&chars, j);
            if !name.is_empty() {
                found.push((line, name));
            }
            j = end;
        }
        base.clear();
        i = j.max(i + 1);
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file below `src`: `api/anthropic/mod.rs` → `[api, anthropic]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && stem != "lib" {
            parts.push(stem.to_owned());
        }
    }
    parts
}

/// Every cross-module import of the crate below `src`, with the modules found.
fn scan(src: &Path) -> (Vec<Import>, BTreeMap<String, PathBuf>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut imports = Vec::new();
    let mut modules = BTreeMap::new();
    for file in files {
        let path = module_path(src, &file);
        let Some(top) = path.first().cloned() else {
            continue; // lib.rs declares the modules; it imports nothing of its own.
        };
        modules.entry(top.clone()).or_insert_with(|| file.clone());
        if path.iter().any(|p| p == "tests") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let code = strip_test_items(&strip_non_code(&text));
        for (line, to) in imports_of(&code, &path) {
            if to != top && to != "self" && to != "super" {
                imports.push(Import {
                    file: file.clone(),
                    line,
                    from: top.clone(),
                    to,
                });
            }
        }
    }
    (imports, modules)
}

/// Strongly connected groups of more than one module (Tarjan's algorithm).
fn cycles(imports: &[Import]) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for i in imports {
        graph.entry(&i.from).or_default().insert(&i.to);
        graph.entry(&i.to).or_default();
    }
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        groups: Vec<Vec<String>>,
    }
    fn visit<'a>(v: &'a str, graph: &BTreeMap<&'a str, BTreeSet<&'a str>>, s: &mut State<'a>) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, graph, s);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                group.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                s.groups.push(group);
            }
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        groups: Vec::new(),
    };
    for &v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(v, &graph, &mut s);
        }
    }
    s.groups
}

fn check(src: &Path, layers: &BTreeMap<String, usize>) -> Vec<Violation> {
    let (imports, modules) = scan(src);
    let mut out = Vec::new();
    for (module, file) in &modules {
        if !layers.contains_key(module) {
            out.push(Violation::Unlisted {
                module: module.clone(),
                file: file.clone(),
            });
        }
    }
    for import in &imports {
        let (Some(&from_layer), Some(&to_layer)) =
            (layers.get(&import.from), layers.get(&import.to))
        else {
            continue; // unlisted modules are reported above; other names are not ours.
        };
        if to_layer >= from_layer {
            out.push(Violation::Upward {
                import: import.clone(),
                from_layer,
                to_layer,
            });
        }
    }
    let ours: Vec<Import> = imports
        .into_iter()
        .filter(|i| modules.contains_key(&i.to))
        .collect();
    for group in cycles(&ours) {
        let mut edges: Vec<Import> = Vec::new();
        for i in &ours {
            let inside = group.contains(&i.from) && group.contains(&i.to);
            if inside && !edges.iter().any(|e| e.from == i.from && e.to == i.to) {
                edges.push(i.clone());
            }
        }
        out.push(Violation::Cycle {
            modules: group,
            edges,
        });
    }
    out
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_library_keeps_the_layer_table_of_architecture_md() {
    let doc = manifest_dir().join("../../ARCHITECTURE.md");
    let markdown = std::fs::read_to_string(&doc).expect("ARCHITECTURE.md is readable");
    let layers = parse_layer_table(&markdown);
    assert!(
        layers.len() >= 10 && layers.get("types") == Some(&0),
        "the layer table in ARCHITECTURE.md was not found or is incomplete: {layers:?}"
    );
    let src = manifest_dir().join("src");
    let (imports, modules) = scan(&src);
    // The scan itself must see the tree, or the check below would pass on nothing.
    assert!(modules.contains_key("providers") && modules.contains_key("dispatch"));
    assert!(
        imports
            .iter()
            .any(|i| i.from == "dispatch" && i.to == "providers"),
        "the scan found none of the imports that are known to exist"
    );
    let violations = check(&src, &layers);
    let report: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(
        violations.is_empty(),
        "the module layers are broken:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_types_layer_imports_nothing_of_ours() {
    let src = manifest_dir().join("src");
    let (imports, _) = scan(&src);
    let from_types: Vec<&Import> = imports.iter().filter(|i| i.from == "types").collect();
    assert!(from_types.is_empty(), "types imports: {from_types:?}");
}

#[test]
fn providers_import_only_types_and_config() {
    let src = manifest_dir().join("src");
    let (imports, _) = scan(&src);
    let bad: Vec<&Import> = imports
        .iter()
        .filter(|i| i.from == "providers" && i.to != "types" && i.to != "config")
        .collect();
    assert!(bad.is_empty(), "providers import: {bad:?}");
}

const FIXTURE_TABLE: &str = "\
## Layers

| layer | modules | may import |
|---|---|---|
| 0 | `types` | nothing |
| 1 | `a`, `b` | types |
| 2 | `app` | everything below |
";

#[test]
fn the_checker_reports_an_upward_import_and_a_cycle_with_their_files() {
    let src = manifest_dir().join("tests/architecture-fixture/src");
    let layers = parse_layer_table(FIXTURE_TABLE);
    assert_eq!(layers.get("app"), Some(&2));
    assert_eq!(layers.get("b"), Some(&1));
    let violations = check(&src, &layers);
    let report: Vec<String> = violations.iter().map(ToString::to_string).collect();
    let text = report.join("\n");

    // types.rs names `crate::app` in code once (line 8), and in a comment, a doc
    // comment, a string and a test module, which do not count.
    let upward: Vec<&Violation> = violations
        .iter()
        .filter(|v| matches!(v, Violation::Upward { .. }))
        .collect();
    assert!(
        text.contains("types.rs:8: `types` (layer 0) imports `app` (layer 2)"),
        "{text}"
    );
    // a and b are siblings importing each other: two same-layer imports and a cycle.
    assert!(
        text.contains("a.rs:3: `a` (layer 1) imports `b` (layer 1)"),
        "{text}"
    );
    assert!(
        text.contains("b/mod.rs:4: `b` (layer 1) imports `a` (layer 1)"),
        "{text}"
    );
    assert_eq!(upward.len(), 3, "{text}");
    let cycles: Vec<&Violation> = violations
        .iter()
        .filter(|v| matches!(v, Violation::Cycle { .. }))
        .collect();
    assert_eq!(cycles.len(), 1, "{text}");
    assert!(text.contains("import cycle between a, b:"), "{text}");
    assert!(text.contains("b/mod.rs:4: `b` imports `a`"), "{text}");
    // A module the table does not list is reported with its file.
    assert!(
        text.contains("stray.rs: module `stray` has no layer"),
        "{text}"
    );
    // app imports everything below it, through `super::` and a `use crate::{…}` group
    // too, and that is allowed.
    assert!(!text.contains("`app` (layer 2) imports"), "{text}");
    assert_eq!(violations.len(), 5, "{text}");
}

#[test]
fn grouped_and_relative_paths_are_resolved_to_their_top_module() {
    let code = "use crate::{a::X, b::{c, d}};\nuse super::super::types::T;\n";
    let found = imports_of(code, &["app".into(), "x".into(), "y".into()]);
    // Two supers from app::x::y stay inside app, which is not a cross-module import.
    assert_eq!(
        found,
        vec![
            (1, "a".to_owned()),
            (1, "b".to_owned()),
            (2, "app".to_owned())
        ]
    );
    let top = imports_of("use super::types::T;", &["app".into()]);
    assert_eq!(top, vec![(1, "types".to_owned())]);
}
