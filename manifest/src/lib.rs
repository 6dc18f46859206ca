//! Everything that makes a Stead app installable, from its `Stead.toml`.
//!
//! - [`config`]: `Stead.toml`, typed; unknown fields are refused by name and every error
//!   names its field, points at it and says how to fix it;
//! - [`web`]: the Web App Manifest, typed, generated from the config, and the `<head>`
//!   links a page needs;
//! - [`icons`]: every icon (192, 512, maskable, apple-touch-icon, favicon) rendered from
//!   one SVG or PNG;
//! - [`validate`]: Chromium's installability rules and PWABuilder's required and
//!   recommended fields, each problem naming the field and the fix;
//! - [`write_app_files`]: all of it written into a built app's folder.
//!
//! **API boundary:** no process, no network: this crate reads the files the config names
//! and writes into the folder it is given, nothing else.

pub mod config;
pub mod icons;
pub mod validate;
pub mod web;

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use config::AppConfig;
use web::WebManifest;

/// The copy of the app's schema the build puts in the bundle.
pub const SCHEMA_FILE: &str = "stead-schema.json";

/// What went wrong writing the app's files, with the file and the config field involved.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Icon { path: PathBuf, source: icons::IconError },
    #[error("{}: not JSON: {message}", path.display())]
    Schema { path: PathBuf, message: String },
    #[error("{} has no </head>, so the manifest and icons cannot be linked", path.display())]
    NoHead { path: PathBuf },
    #[error("screenshot `{src}` is neither in the app's folder nor in the build")]
    Screenshot { src: String },
}

impl WriteError {
    /// The `Stead.toml` field the problem comes from, if any.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            WriteError::Icon { .. } => Some("icon"),
            WriteError::Schema { .. } => Some("schema"),
            WriteError::Screenshot { .. } => Some("screenshots"),
            WriteError::Io { .. } | WriteError::NoHead { .. } => None,
        }
    }

    pub fn hint(&self) -> String {
        match self {
            WriteError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                "check the path in Stead.toml: it is relative to the folder holding Stead.toml".into()
            }
            WriteError::Io { .. } => "check the file's permissions and the disk".into(),
            WriteError::Icon { source, .. } => source.hint().into(),
            WriteError::Schema { .. } => "the schema is JSON: {\"version\": 1, \"collections\": {…}} (see sw/PAGE-API.md)".into(),
            WriteError::NoHead { .. } => "keep a <head> … </head> in the app's index.html".into(),
            WriteError::Screenshot { .. } => "put the image in the app's folder (the path is relative to Stead.toml); the build copies it".into(),
        }
    }
}

/// What [`write_app_files`] produced.
#[derive(Debug, Clone)]
pub struct Written {
    pub manifest: WebManifest,
    /// Paths written, relative to the folder.
    pub files: Vec<String>,
    /// Installability errors and warnings, and notes on the icon source.
    pub problems: Vec<validate::Problem>,
    pub icon_warnings: Vec<String>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError::Io { path: path.to_path_buf(), source }
}

/// Writes the manifest, the icons and the schema of the app at `app_dir` into the built
/// folder `dist`, and links them from `dist/index.html`.
pub fn write_app_files(config: &AppConfig, app_dir: &Path, dist: &Path) -> Result<Written, WriteError> {
    let manifest = WebManifest::from_config(config);
    let mut files = Vec::new();

    let icon_path = app_dir.join(&config.icon);
    let bytes = fs::read(&icon_path).map_err(io_err(&icon_path))?;
    let source = icons::Source::decode(&icon_path, &bytes).map_err(|source| WriteError::Icon { path: icon_path.clone(), source })?;
    let background = config.background_color.as_deref().and_then(icons::parse_colour).unwrap_or([255, 255, 255]);
    let rendered = icons::render(&source, background).map_err(|source| WriteError::Icon { path: icon_path.clone(), source })?;
    let icon_dir = dist.join(web::ICON_DIR);
    fs::create_dir_all(&icon_dir).map_err(io_err(&icon_dir))?;
    for (name, bytes) in &rendered.files {
        let path = icon_dir.join(name);
        fs::write(&path, bytes).map_err(io_err(&path))?;
        files.push(format!("{}/{name}", web::ICON_DIR));
    }

    if let Some(schema) = &config.schema {
        let path = app_dir.join(schema);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
            return Err(WriteError::Schema { path, message: e.to_string() });
        }
        let out = dist.join(SCHEMA_FILE);
        fs::write(&out, text).map_err(io_err(&out))?;
        files.push(SCHEMA_FILE.into());
    }

    // Screenshots are files of the app's folder, copied to the same place in the build
    // (or files the build already has, or URLs elsewhere).
    for shot in &config.screenshots {
        if shot.src.contains("://") || dist.join(&shot.src).is_file() {
            continue;
        }
        let rel = Path::new(&shot.src);
        let from = app_dir.join(rel);
        let clean = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !clean || !from.is_file() {
            return Err(WriteError::Screenshot { src: shot.src.clone() });
        }
        let to = dist.join(rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::copy(&from, &to).map_err(io_err(&from))?;
        files.push(shot.src.clone());
    }

    let path = dist.join(web::FILE);
    fs::write(&path, manifest.to_json()).map_err(io_err(&path))?;
    files.push(web::FILE.into());

    let index = dist.join("index.html");
    let html = fs::read_to_string(&index).map_err(io_err(&index))?;
    let linked = web::add_head_links(&html, &manifest).ok_or_else(|| WriteError::NoHead { path: index.clone() })?;
    fs::write(&index, linked).map_err(io_err(&index))?;

    let problems = validate::validate(&manifest);
    Ok(Written { manifest, files, problems, icon_warnings: rendered.warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_manifest_icons_schema_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().to_path_buf();
        let dist = app.join("dist");
        fs::create_dir_all(&dist).unwrap();
        fs::write(app.join("icon.svg"), r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><circle cx="5" cy="5" r="4" fill="#123"/></svg>"##).unwrap();
        fs::write(app.join("schema.json"), r#"{"version": 1, "collections": {}}"#).unwrap();
        fs::write(dist.join("index.html"), "<html><head><title>t</title></head><body></body></html>").unwrap();
        let config = AppConfig::parse("id = \"x\"\nname = \"Notes\"\nicon = \"icon.svg\"\nschema = \"schema.json\"\n").unwrap();
        let w = write_app_files(&config, &app, &dist).unwrap();
        for f in &w.files {
            assert!(dist.join(f).is_file(), "{f}");
        }
        assert!(w.files.contains(&"icons/maskable-512.png".to_owned()));
        assert!(fs::read_to_string(dist.join("index.html")).unwrap().contains("rel=\"manifest\""));
        assert!(w.problems.iter().all(|p| p.severity == validate::Severity::Warning), "{:?}", w.problems);

        let shot = "[[screenshots]]\nsrc = \"shots/wide.png\"\nsizes = \"1280x720\"\nform_factor = \"wide\"\n";
        let with_shot = AppConfig::parse(&format!("id = \"x\"\nname = \"Notes\"\nicon = \"icon.svg\"\n{shot}")).unwrap();
        let e = write_app_files(&with_shot, &app, &dist).unwrap_err();
        assert_eq!(e.field(), Some("screenshots"));
        fs::create_dir_all(app.join("shots")).unwrap();
        fs::write(app.join("shots/wide.png"), b"png").unwrap();
        let w = write_app_files(&with_shot, &app, &dist).unwrap();
        assert!(w.files.contains(&"shots/wide.png".to_owned()) && dist.join("shots/wide.png").is_file());

        fs::write(app.join("schema.json"), "{").unwrap();
        let e = write_app_files(&config, &app, &dist).unwrap_err();
        assert_eq!(e.field(), Some("schema"));
        let config = AppConfig::parse("id = \"x\"\nname = \"Notes\"\nicon = \"missing.svg\"\n").unwrap();
        let e = write_app_files(&config, &app, &dist).unwrap_err();
        assert!(e.to_string().contains("missing.svg"), "{e}");
        assert!(e.hint().contains("relative to the folder holding Stead.toml"));
    }
}
