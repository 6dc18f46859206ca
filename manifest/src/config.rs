//! `Stead.toml`: an app's own description, from which the build writes the Web App
//! Manifest and icons.
//!
//! Parsing is strict: an unknown field is refused by name (a typo such as `theme_colour`
//! would otherwise be silently ignored), and every error carries the field it is about,
//! where it is in the file, and how to fix it.

use std::path::PathBuf;

use serde::Deserialize;

/// The file name the CLI looks for.
pub const FILE: &str = "Stead.toml";

/// The contents of `Stead.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app's own id (a UUID written by `stead new`): it names the app to a Stead
    /// server and makes the manifest's `id`, so it must never change once the app is out.
    pub id: String,
    /// The full name, shown by install dialogs and app lists.
    pub name: String,
    /// A name short enough for a home screen label; `name` when absent.
    pub short_name: Option<String>,
    pub description: Option<String>,
    /// The browser's UI colour around the app (`#rrggbb`).
    pub theme_color: Option<String>,
    /// The splash screen colour and the background of the maskable icon (`#rrggbb`).
    pub background_color: Option<String>,
    /// One SVG or PNG every icon is rendered from, relative to `Stead.toml`.
    pub icon: PathBuf,
    #[serde(default = "dot_slash")]
    pub start_url: String,
    #[serde(default = "dot_slash")]
    pub scope: String,
    #[serde(default)]
    pub display: Display,
    #[serde(default)]
    pub display_override: Vec<Display>,
    pub orientation: Option<String>,
    pub lang: Option<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    /// The data schema the app declares to the worker (JSON), relative to `Stead.toml`.
    pub schema: Option<PathBuf>,
    #[serde(default)]
    pub screenshots: Vec<Screenshot>,
    #[serde(default)]
    pub shortcuts: Vec<Shortcut>,
    pub share_target: Option<ShareTarget>,
    pub launch_handler: Option<LaunchHandler>,
    #[serde(default)]
    pub server: Servers,
}

fn dot_slash() -> String {
    "./".to_owned()
}

/// How the installed app's window looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Display {
    Fullscreen,
    #[default]
    Standalone,
    MinimalUi,
    Browser,
    WindowControlsOverlay,
    Tabbed,
}

impl Display {
    /// Whether Chromium installs an app with this display mode as an app window.
    pub fn installable(self) -> bool {
        !matches!(self, Display::Browser)
    }
}

/// A screenshot for richer install dialogs: a file of the built app.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Screenshot {
    pub src: String,
    /// `WIDTHxHEIGHT`.
    pub sizes: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    /// `wide` (desktop) or `narrow` (mobile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub form_factor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// An entry of the installed app's context menu.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Shortcut {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub url: String,
}

/// Lets the installed app receive shares from other apps.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShareTarget {
    pub action: String,
    #[serde(default = "get")]
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enctype: Option<String>,
    pub params: ShareParams,
}

fn get() -> String {
    "GET".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShareParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Whether a launch opens a new window or reuses one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchHandler {
    /// `auto`, `navigate-new`, `navigate-existing` or `focus-existing`.
    pub client_mode: String,
}

/// Where the app's sync server is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Servers {
    /// The local server `stead serve` and `stead dev` run (`http://localhost:8080`).
    pub dev: Option<String>,
    /// Where the app is published (`https://…`).
    pub production: Option<String>,
}

impl Servers {
    /// The port of the dev server's URL, if it names one.
    pub fn dev_port(&self) -> Option<u16> {
        let url = self.dev.as_deref()?;
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let host_port = rest.split('/').next()?;
        host_port.rsplit_once(':')?.1.parse().ok()
    }
}

/// A problem with `Stead.toml`: what, where, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    /// The field, as a dotted path (`server.dev`, `shortcuts[0].url`); empty when the
    /// file as a whole is wrong (not TOML).
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
    /// Byte range in the file the problem is at, when known.
    pub span: Option<std::ops::Range<usize>>,
}

impl AppConfig {
    /// Parses and checks `Stead.toml`'s text.
    pub fn parse(text: &str) -> Result<AppConfig, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
            field: String::new(),
            message: format!("not valid TOML: {}", e.message()),
            hint: None,
            span: e.span(),
        })?;
        let config: AppConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            let inner = e.inner();
            let message = inner.message().to_owned();
            let hint = if message.starts_with("unknown field") {
                Some("remove it, or correct its spelling to one of the fields listed".to_owned())
            } else if message.starts_with("missing field") {
                Some("add it: `stead new` writes every required field".to_owned())
            } else if message.starts_with("unknown variant") {
                Some("use one of the values listed".to_owned())
            } else {
                None
            };
            let span = inner.span().or_else(|| key_span(text, &field));
            ConfigError { field, message, hint, span }
        })?;
        config.check(text)?;
        Ok(config)
    }

    /// What serde cannot say: formats of colours, URLs and names.
    fn check(&self, text: &str) -> Result<(), ConfigError> {
        let err = |field: &str, message: String, hint: &str| ConfigError {
            field: field.to_owned(),
            message,
            hint: Some(hint.to_owned()),
            span: key_span(text, field),
        };
        if self.name.trim().is_empty() {
            return Err(err("name", "the app's name is empty".into(), "give the name people will see, e.g. `name = \"Field Notes\"`"));
        }
        if self.id.trim().is_empty() {
            return Err(err("id", "the app's id is empty".into(), "keep the id `stead new` wrote; a new app can take any UUID"));
        }
        for (field, value) in [("theme_color", &self.theme_color), ("background_color", &self.background_color)] {
            if let Some(v) = value
                && !is_hex_colour(v)
            {
                return Err(err(field, format!("`{v}` is not a colour this build understands"), "write it as `#rrggbb`, e.g. `#2f6f4f`"));
            }
        }
        for (field, url) in [("server.dev", &self.server.dev), ("server.production", &self.server.production)] {
            if let Some(u) = url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return Err(err(field, format!("`{u}` is not an http(s) URL"), "write a full URL, e.g. `http://localhost:8080`"));
            }
        }
        if let Some(u) = &self.server.production
            && u.starts_with("http://")
        {
            return Err(err(
                "server.production",
                format!("`{u}` is not https: browsers install apps and run service workers only in secure contexts"),
                "serve the app over https, e.g. `https://notes.example.com`",
            ));
        }
        let ext = self.icon.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if !matches!(ext.as_deref(), Some("svg" | "png")) {
            return Err(err("icon", format!("`{}` is neither an SVG nor a PNG", self.icon.display()), "point `icon` at a square SVG (best) or a PNG of at least 512×512"));
        }
        Ok(())
    }
}

fn is_hex_colour(s: &str) -> bool {
    let Some(hex) = s.strip_prefix('#') else { return false };
    matches!(hex.len(), 3 | 6 | 8) && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// Where `field` (a dotted path; its last key) is written in `text`: the first line that
/// starts with the key, or the table header naming it.
pub fn key_span(text: &str, field: &str) -> Option<std::ops::Range<usize>> {
    let key = field.rsplit('.').next()?.split('[').next()?;
    if key.is_empty() {
        return None;
    }
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let start = offset + (line.len() - trimmed.len());
        let is_key = trimmed.strip_prefix(key).is_some_and(|r| r.trim_start().starts_with('='));
        let is_table = trimmed.trim_start_matches('[').starts_with(key) && trimmed.starts_with('[');
        if is_key || is_table {
            return Some(start..start + trimmed.trim_end().len());
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "id = \"0190a8d4-0000-7000-8000-000000000000\"\nname = \"Field Notes\"\nicon = \"icon.svg\"\n";

    #[test]
    fn a_minimal_file_gets_the_defaults() {
        let c = AppConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.name, "Field Notes");
        assert_eq!(c.start_url, "./");
        assert_eq!(c.scope, "./");
        assert_eq!(c.display, Display::Standalone);
        assert!(c.categories.is_empty());
        assert_eq!(c.server, Servers::default());
    }

    #[test]
    fn every_field_parses() {
        let text = format!(
            "{MINIMAL}short_name = \"Notes\"\ndescription = \"d\"\ntheme_color = \"#2f6f4f\"\nbackground_color = \"#fff\"\n\
             start_url = \"./?source=pwa\"\nscope = \"./\"\ndisplay = \"minimal-ui\"\ndisplay_override = [\"window-controls-overlay\"]\n\
             orientation = \"any\"\nlang = \"en\"\ncategories = [\"productivity\"]\nschema = \"schema.json\"\n\
             [server]\ndev = \"http://localhost:9000\"\nproduction = \"https://notes.example.com\"\n\
             [[shortcuts]]\nname = \"New note\"\nurl = \"./?new\"\n\
             [[screenshots]]\nsrc = \"shot.png\"\nsizes = \"1280x720\"\nform_factor = \"wide\"\n\
             [share_target]\naction = \"./share\"\nparams = {{ title = \"t\", text = \"x\", url = \"u\" }}\n\
             [launch_handler]\nclient_mode = \"focus-existing\"\n"
        );
        let c = AppConfig::parse(&text).unwrap();
        assert_eq!(c.display, Display::MinimalUi);
        assert_eq!(c.display_override, [Display::WindowControlsOverlay]);
        assert_eq!(c.server.dev_port(), Some(9000));
        assert_eq!(c.shortcuts[0].url, "./?new");
        assert_eq!(c.share_target.unwrap().method, "GET");
        assert_eq!(c.launch_handler.unwrap().client_mode, "focus-existing");
    }

    /// Parses `text` and checks the error's field, the start of its message and the line
    /// its span points at.
    fn check(text: &str, field: &str, message: &str, line: Option<&str>) {
        let e = AppConfig::parse(text).unwrap_err();
        assert_eq!(e.field, field, "{e:?}");
        assert!(e.message.starts_with(message), "{e:?}");
        let at = e.span.clone().map(|s| text[s].trim().to_owned());
        if let Some(l) = line {
            assert!(at.as_deref().is_some_and(|a| a.contains(l)), "{e:?} points at {at:?}");
        }
    }

    #[test]
    fn errors_name_the_field_and_point_at_it() {
        check(&format!("{MINIMAL}theme_colour = \"#fff\"\n"), "theme_colour", "unknown field `theme_colour`", Some("theme_colour"));
        check("name = \"x\"\nicon = \"i.svg\"\n", "", "missing field `id`", None);
        check(&format!("{MINIMAL}display = \"window\"\n"), "display", "unknown variant `window`", Some("window"));
        check(&format!("{MINIMAL}categories = \"games\"\n"), "categories", "invalid type", Some("games"));
        check(&format!("{MINIMAL}[server]\ndevv = \"x\"\n"), "server.devv", "unknown field `devv`", Some("devv"));
        check(&format!("{MINIMAL}[[shortcuts]]\nname = \"n\"\n"), "shortcuts[0]", "missing field `url`", None);
        check(&format!("{MINIMAL}theme_color = \"green\"\n"), "theme_color", "`green` is not a colour", Some("green"));
        check(&format!("{MINIMAL}[server]\nproduction = \"http://x.example\"\n"), "server.production", "`http://x.example` is not https", Some("production"));
        check(&format!("{MINIMAL}[server]\ndev = \"localhost:8080\"\n"), "server.dev", "`localhost:8080` is not an http(s) URL", Some("dev"));
        check(&MINIMAL.replace("icon.svg", "icon.gif"), "icon", "`icon.gif` is neither", Some("icon"));
        check(&MINIMAL.replace("Field Notes", " "), "name", "the app's name is empty", Some("name"));
        check("name = [", "", "not valid TOML", None);
    }

    #[test]
    fn unknown_field_hint_lists_the_real_ones() {
        let e = AppConfig::parse(&format!("{MINIMAL}colour = 1\n")).unwrap_err();
        assert!(e.message.contains("expected one of"), "{e:?}");
        assert!(e.message.contains("`theme_color`"), "{e:?}");
        assert!(e.hint.is_some());
    }
}
