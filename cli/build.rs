//! Embeds `template/` into the `stead` binary, so `stead new` needs no download and no
//! checkout: every file becomes an `include_bytes!` entry of `$OUT_DIR/template.rs`.
//! Build output (`target/`, `dist/`, `Cargo.lock`) is left out, should the template have
//! been built in place.

use std::{env, fs, path::Path};

const SKIP: &[&str] = &["target", "dist", "Cargo.lock"];

fn main() {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let template = Path::new(&manifest_dir).join("../template");
    let template = template.canonicalize().expect("template/ is next to cli/");
    let mut files = Vec::new();
    walk(&template, &template, &mut files);
    files.sort();
    let mut out = String::from("/// Every file of `template/`: path (with `/`) and bytes.\npub const FILES: &[(&str, &[u8])] = &[\n");
    for rel in &files {
        let abs = template.join(rel);
        out.push_str(&format!("    ({rel:?}, include_bytes!({:?})),\n", abs.display().to_string()));
    }
    out.push_str("];\n");
    let dest = Path::new(&env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("template.rs");
    fs::write(dest, out).expect("OUT_DIR is writable");
    println!("cargo:rerun-if-changed={}", template.display());
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = fs::read_dir(dir).expect("template/ is readable").filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if SKIP.contains(&name.as_str()) && dir == root {
            continue;
        }
        let path = entry.path();
        // Directories trigger a rerun only for their own entries: list every one.
        println!("cargo:rerun-if-changed={}", path.display());
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).expect("under the template").to_string_lossy().replace('\\', "/");
            out.push(rel);
        }
    }
}
