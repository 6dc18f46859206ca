//! `stead new`: writes a new app from the template embedded in the binary.
//!
//! The template (`template/` in Stead's repository) is a real crate that builds in place;
//! a new app is a copy with its names and a fresh app id filled in, its path dependencies
//! pointed at the Stead checkout this binary was built from, and that checkout's
//! `Cargo.lock` as its starting lockfile (so the app resolves to the crate versions Stead
//! is tested with, and builds offline from the same registry cache).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/template.rs"));
}

/// The variants `--template` takes; the first is the default.
pub const VARIANTS: &[&str] = &["todo", "blank"];
/// Files a variant replaces live under `variants/<name>/` in the template.
const VARIANT_DIR: &str = "variants/";

/// The template's own names, replaced in a new app.
const CRATE_NAME: &str = "stead-app";
const TITLE: &str = "Stead App";
const PLACEHOLDER_ID: &str = "00000000-0000-7000-8000-000000000000";
/// How the template's Cargo.toml points at Stead's crates (relative to `template/`).
const STEAD_PATH: &str = "\"../framework/";

#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error("`{0}` is not a valid app name")]
    Name(String),
    #[error("{} already exists and is not empty", .0.display())]
    Exists(PathBuf),
    #[error("there is no template `{0}`")]
    Variant(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl NewError {
    pub fn hint(&self) -> String {
        match self {
            NewError::Name(_) => "use lower-case letters, digits and `-`, starting with a letter, e.g. `field-notes`".into(),
            NewError::Exists(_) => "choose another name, or remove the folder first".into(),
            NewError::Variant(_) => format!("use one of: {}", VARIANTS.join(", ")),
            NewError::Io { .. } => "check that the folder is writable".into(),
        }
    }
}

/// What `stead new` needs to know.
#[derive(Debug, Clone)]
pub struct NewApp {
    /// The crate and folder name (`field-notes`).
    pub name: String,
    pub variant: String,
    /// Where to write the app (the folder is created).
    pub dir: PathBuf,
    /// The Stead checkout the app's path dependencies point at.
    pub stead_root: PathBuf,
    /// The app's id (a UUID).
    pub id: String,
}

/// Checks a name for an app: a crate name that is also a safe folder name.
pub fn check_name(name: &str) -> Result<(), NewError> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !name.ends_with(['-', '_'])
        // Names cargo refuses for a package.
        && !matches!(name, "test" | "core" | "std" | "alloc" | "proc_macro" | "self" | "crate" | "super");
    if ok { Ok(()) } else { Err(NewError::Name(name.to_owned())) }
}

/// `field-notes` → `Field Notes`.
pub fn title(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A home-screen label: the title if it fits 12 characters, else its first words that
/// do, else its first 12 characters.
pub fn short_name(title: &str) -> String {
    if title.chars().count() <= 12 {
        return title.to_owned();
    }
    let mut out = String::new();
    for word in title.split(' ') {
        let next = if out.is_empty() { word.to_owned() } else { format!("{out} {word}") };
        if next.chars().count() > 12 {
            break;
        }
        out = next;
    }
    if out.is_empty() { title.chars().take(12).collect() } else { out }
}

/// The files of the new app: relative path and contents, names and paths filled in.
pub fn files(app: &NewApp) -> Result<Vec<(String, Vec<u8>)>, NewError> {
    if !VARIANTS.contains(&app.variant.as_str()) {
        return Err(NewError::Variant(app.variant.clone()));
    }
    let overlay = format!("{VARIANT_DIR}{}/", app.variant);
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (path, bytes) in embedded::FILES {
        if path.starts_with(VARIANT_DIR) {
            continue;
        }
        let replaced = embedded::FILES.iter().find(|(p, _)| p.strip_prefix(overlay.as_str()) == Some(path));
        let bytes = replaced.map_or(*bytes, |(_, b)| *b);
        out.push(((*path).to_owned(), fill(path, bytes, app)));
    }
    // Files only a variant has.
    for (path, bytes) in embedded::FILES {
        if let Some(rel) = path.strip_prefix(overlay.as_str())
            && !out.iter().any(|(p, _)| p == rel)
        {
            out.push((rel.to_owned(), fill(rel, bytes, app)));
        }
    }
    Ok(out)
}

fn fill(path: &str, bytes: &[u8], app: &NewApp) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(bytes) else { return bytes.to_vec() };
    let title = title(&app.name);
    let text = match path {
        "Cargo.toml" => {
            // A TOML basic string: backslashes (Windows paths) are escaped.
            let root = app.stead_root.display().to_string().replace('\\', "/");
            text.replace(CRATE_NAME, &app.name).replace(STEAD_PATH, &format!("\"{root}/framework/"))
        }
        "Stead.toml" => text
            .lines()
            .map(|line| {
                if line.starts_with("name = ") {
                    format!("name = {:?}", title)
                } else if line.starts_with("short_name = ") {
                    format!("short_name = {:?}", short_name(&title))
                } else {
                    line.replace(PLACEHOLDER_ID, &app.id)
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
        "index.html" => text.replace(CRATE_NAME, &app.name).replace(TITLE, &title),
        p if p.ends_with(".rs") || p.ends_with(".md") => text.replace(TITLE, &title),
        _ => text.to_owned(),
    };
    text.into_bytes()
}

/// Writes the new app into `app.dir`, which must not exist or be empty, and seeds its
/// lockfile from the Stead checkout's.
pub fn write(app: &NewApp) -> Result<Vec<String>, NewError> {
    check_name(&app.name)?;
    let files = files(app)?;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NewError::Io { path, source }
    };
    if app.dir.exists() && fs::read_dir(&app.dir).map_err(io_err(&app.dir))?.next().is_some() {
        return Err(NewError::Exists(app.dir.clone()));
    }
    let mut written = Vec::new();
    for (rel, bytes) in &files {
        let path = app.dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::write(&path, bytes).map_err(io_err(&path))?;
        written.push(rel.clone());
    }
    // Without a lockfile cargo would resolve afresh, offline, from whatever the registry
    // cache holds; the checkout's lockfile is what Stead is tested with.
    let lock = app.stead_root.join("Cargo.lock");
    if let Ok(text) = fs::read(&lock) {
        let path = app.dir.join("Cargo.lock");
        fs::write(&path, text).map_err(io_err(&path))?;
        written.push("Cargo.lock".into());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(variant: &str) -> NewApp {
        NewApp {
            name: "field-notes".into(),
            variant: variant.into(),
            dir: PathBuf::from("/tmp/x"),
            stead_root: PathBuf::from("/opt/stead"),
            id: "0190a8d4-1111-7000-8000-000000000000".into(),
        }
    }

    fn text<'a>(files: &'a [(String, Vec<u8>)], path: &str) -> &'a str {
        std::str::from_utf8(&files.iter().find(|(p, _)| p == path).unwrap_or_else(|| panic!("{path}")).1).unwrap()
    }

    #[test]
    fn names() {
        for ok in ["notes", "field-notes", "app2", "a_b"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Notes", "2app", "-x", "x-", "a b", "../x", "test", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(title("field-notes"), "Field Notes");
        assert_eq!(title("a_b"), "A B");
        assert_eq!(short_name("Field Notes"), "Field Notes");
        assert_eq!(short_name("Field Notes Pro Max"), "Field Notes");
        assert_eq!(short_name("Supercalifragilistic"), "Supercalifra");
    }

    #[test]
    fn the_app_gets_its_names_id_and_stead_path() {
        let files = files(&app("todo")).unwrap();
        let cargo = text(&files, "Cargo.toml");
        assert!(cargo.contains("name = \"field-notes\""), "{cargo}");
        assert!(cargo.contains("path = \"/opt/stead/framework/yew\""), "{cargo}");
        assert!(!cargo.contains("stead-app"));
        let stead = text(&files, "Stead.toml");
        let config = stead_manifest::config::AppConfig::parse(stead).unwrap();
        assert_eq!(config.name, "Field Notes");
        assert_eq!(config.short_name.as_deref(), Some("Field Notes"));
        assert_eq!(config.id, "0190a8d4-1111-7000-8000-000000000000");
        let html = text(&files, "index.html");
        assert!(html.contains("data-bin=\"field-notes\"") && html.contains("<title>Field Notes</title>"), "{html}");
        assert!(text(&files, "src/main.rs").contains("<h1>{\"Field Notes\"}</h1>"));
        assert!(text(&files, "README.md").starts_with("# Field Notes\n"));
        assert!(files.iter().all(|(p, _)| !p.starts_with("variants/")));
    }

    #[test]
    fn a_variant_replaces_its_files() {
        let todo = files(&app("todo")).unwrap();
        let blank = files(&app("blank")).unwrap();
        assert_eq!(todo.len(), blank.len());
        // The todo template lists items; the blank one has no list.
        assert!(text(&todo, "src/main.rs").contains("use_query::<Item>(\"items\""));
        assert!(!text(&blank, "src/main.rs").contains("use_query::<"));
        assert!(matches!(files(&app("kanban")), Err(NewError::Variant(_))));
    }

    #[test]
    fn the_template_pins_the_workspace_tool_versions() {
        // trunk downloads nothing: its tool versions must be the ones Stead's own build uses.
        let files = files(&app("todo")).unwrap();
        let ours = include_str!("../../Trunk.toml");
        let tools = |t: &str| t.lines().filter(|l| l.starts_with("wasm_")).map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(tools(text(&files, "Trunk.toml")), tools(ours));
        let pin = |t: &str| t.lines().find(|l| l.starts_with("wasm-bindgen = ")).map(|l| l.split('"').nth(1).unwrap_or_default().to_owned());
        assert_eq!(pin(text(&files, "Cargo.toml")), pin(include_str!("../../Cargo.toml")));
    }

    #[test]
    fn writing_refuses_a_folder_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = app("todo");
        a.dir = tmp.path().join("field-notes");
        a.stead_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let written = write(&a).unwrap();
        assert!(written.contains(&"Cargo.lock".to_owned()));
        assert!(a.dir.join("src/main.rs").is_file());
        assert!(matches!(write(&a), Err(NewError::Exists(_))));
    }
}
