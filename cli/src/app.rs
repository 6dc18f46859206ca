//! An app on disk: the folder holding `Stead.toml`, and its parsed config.

use std::path::{Path, PathBuf};

use stead_manifest::config::{self, AppConfig};

use crate::diag::Problem;

#[derive(Debug, Clone)]
pub struct App {
    pub dir: PathBuf,
    pub config: AppConfig,
    /// `Stead.toml`'s text, for pointing at fields in later errors.
    pub text: String,
}

impl App {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(config::FILE)
    }

    /// Loads the app whose `Stead.toml` is in `start` or the nearest folder above it.
    pub fn find(start: &Path) -> Result<App, Problem> {
        let dir = start
            .ancestors()
            .find(|d| d.join(config::FILE).is_file())
            .ok_or_else(|| {
                Problem::new(format!("no {} in {} or any folder above it", config::FILE, start.display()))
                    .help("run this in an app's folder, or make an app with `stead new NAME`")
            })?
            .to_path_buf();
        App::load(&dir)
    }

    /// Loads the app in `dir`.
    pub fn load(dir: &Path) -> Result<App, Problem> {
        // Absolute: the tools run in other folders (trunk in the app's, cargo in Stead's).
        let dir = &std::path::absolute(dir).map_err(|e| Problem::new(format!("cannot resolve {}: {e}", dir.display())))?;
        let path = dir.join(config::FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Problem::new(format!("cannot read {}: {e}", path.display())).help("check that the file exists and is readable"))?;
        let config = AppConfig::parse(&text).map_err(|e| {
            let field = if e.field.is_empty() { String::new() } else { format!("`{}`: ", e.field) };
            let mut p = Problem::new(format!("{}: {field}{}", path.display(), e.message)).at(&path, &text, e.span.clone(), "here");
            p.help = e.hint.clone();
            p
        })?;
        Ok(App { dir: dir.to_path_buf(), config, text })
    }

    /// A problem about `field` of `Stead.toml`, pointing at it.
    pub fn problem_at(&self, field: &str, message: impl Into<String>, help: impl Into<String>) -> Problem {
        let path = self.config_path();
        Problem::new(message).at(&path, &self.text, config::key_span(&self.text, field), format!("`{field}`")).help(help)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_config_above_and_names_the_bad_field() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("src/deep");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(tmp.path().join("Stead.toml"), "id = \"x\"\nname = \"A\"\nicon = \"i.svg\"\n").unwrap();
        let app = App::find(&sub).unwrap();
        assert_eq!(app.dir, tmp.path());
        std::fs::write(tmp.path().join("Stead.toml"), "id = \"x\"\nname = \"A\"\nicon = \"i.svg\"\nthem_color = \"#fff\"\n").unwrap();
        let e = App::find(&sub).unwrap_err();
        assert!(e.message.contains("`them_color`: unknown field"), "{}", e.message);
        assert!(e.at.is_some() && e.help.is_some());
        let here = std::env::current_dir().unwrap();
        let rel = pathdiff(tmp.path(), &here);
        std::fs::write(tmp.path().join("Stead.toml"), "id = \"x\"\nname = \"A\"\nicon = \"i.svg\"\n").unwrap();
        assert!(App::load(&rel).unwrap().dir.is_absolute(), "a relative folder is made absolute");
        let e = App::find(Path::new("/")).unwrap_err();
        assert!(e.help.unwrap().contains("stead new"));
    }

    /// `to` as a path relative to `from` (both absolute).
    fn pathdiff(to: &Path, from: &Path) -> PathBuf {
        let up = from.components().count() - 1;
        let mut p: PathBuf = std::iter::repeat_n("..", up).collect();
        p.push(to.strip_prefix("/").unwrap());
        p
    }
}
