//! The layering of docs/architecture.md holds: a module imports only modules on a lower floor
//! (`api → jwk → policy → keys → decide → contract/plumbing → gateway/controller → local → cli`),
//! so that what decides stays pure and below what moves data. `testkit` and test modules are
//! test support and may reach anything.

use std::collections::BTreeSet;
use std::path::Path;

const FLOORS: &[(&str, u8)] = &[
    ("api", 0),
    ("jwk", 1),
    ("policy", 2),
    ("keys", 3),
    ("decide", 4),
    ("contract", 5),
    ("plumbing", 5),
    ("gateway", 6),
    ("controller", 6),
    ("local", 7),
    ("cli", 8),
];

fn floor(module: &str) -> Option<u8> {
    FLOORS.iter().find(|(m, _)| *m == module).map(|(_, f)| *f)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source text names through `crate::`, also inside `use crate::{…}`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(inner.split(',').filter_map(|item| item.trim().split("::").next()).filter(|m| !m.is_empty()).map(str::to_owned));
        } else {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            out.insert(name);
        }
    }
    out
}

#[test]
fn no_module_imports_one_on_its_own_floor_or_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        let Some(own) = floor(&top) else { continue };
        checked += 1;
        // Test code may reach across floors (a gateway test builds what the controller
        // publishes): `*_tests.rs` files and the inline test module at a file's end are skipped.
        let name = file.file_name().unwrap().to_string_lossy();
        if name.ends_with("_tests.rs") || name == "tests.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests {").next().unwrap();
        for import in imports(text) {
            if import == top || import == "testkit" {
                continue;
            }
            match floor(&import) {
                Some(f) if f < own => {}
                Some(_) => violations.push(format!("{} imports crate::{import}", relative.display())),
                None => violations.push(format!("{} imports crate::{import}, which has no floor here", relative.display())),
            }
        }
    }
    assert!(checked > 50, "only {checked} files checked");
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_import_scanner_sees_grouped_and_plain_imports() {
    let found = imports("use crate::{api::X, policy};\nlet y = crate::decide::Engine::build();");
    assert_eq!(found.into_iter().collect::<Vec<_>>(), ["api", "decide", "policy"]);
}
