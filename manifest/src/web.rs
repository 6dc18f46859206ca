//! The Web App Manifest (`manifest.webmanifest`), typed, and its generation from
//! `Stead.toml`.

use serde::{Deserialize, Serialize};

use crate::config::{AppConfig, Display, LaunchHandler, Screenshot, ShareTarget, Shortcut};

/// The file the build writes next to `index.html`.
pub const FILE: &str = "manifest.webmanifest";
/// Where the icons go in the built app.
pub const ICON_DIR: &str = "icons";

/// The Web App Manifest members Stead writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebManifest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub short_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<Display>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub display_override: Vec<Display>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orientation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub theme_color: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background_color: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icons: Vec<Icon>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub screenshots: Vec<Screenshot>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shortcuts: Vec<Shortcut>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_target: Option<ShareTarget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_handler: Option<LaunchHandler>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefer_related_applications: Option<bool>,
}

/// One icon of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Icon {
    pub src: String,
    /// `WIDTHxHEIGHT`, or `any` for SVG.
    pub sizes: String,
    #[serde(rename = "type")]
    pub mime: String,
    /// `any`, `maskable`, `monochrome`, or several separated by spaces.
    pub purpose: String,
}

impl Icon {
    /// The square sizes this icon declares (`any` counts as unbounded).
    pub fn square_sizes(&self) -> Vec<u32> {
        self.sizes
            .split_whitespace()
            .filter_map(|s| match s {
                "any" => Some(u32::MAX),
                _ => {
                    let (w, h) = s.split_once(['x', 'X'])?;
                    let (w, h) = (w.parse::<u32>().ok()?, h.parse::<u32>().ok()?);
                    (w == h).then_some(w)
                }
            })
            .collect()
    }

    pub fn has_purpose(&self, purpose: &str) -> bool {
        self.purpose.split_whitespace().any(|p| p == purpose)
    }
}

/// The icons `icons::render` writes, as the manifest lists them.
pub fn standard_icons() -> Vec<Icon> {
    let png = |name: &str, size: u32, purpose: &str| Icon {
        src: format!("{ICON_DIR}/{name}"),
        sizes: format!("{size}x{size}"),
        mime: "image/png".into(),
        purpose: purpose.into(),
    };
    vec![
        png("icon-192.png", 192, "any"),
        png("icon-512.png", 512, "any"),
        png("maskable-512.png", 512, "maskable"),
    ]
}

impl WebManifest {
    /// The manifest for an app with the standard icons.
    pub fn from_config(config: &AppConfig) -> WebManifest {
        WebManifest {
            // Relative to the manifest's own URL like every other member, so the app's
            // identity stays put wherever it is served; the app id makes it unique.
            id: Some(format!("./?app={}", config.id)),
            name: Some(config.name.clone()),
            short_name: Some(config.short_name.clone().unwrap_or_else(|| config.name.clone())),
            description: config.description.clone(),
            start_url: Some(config.start_url.clone()),
            scope: Some(config.scope.clone()),
            display: Some(config.display),
            display_override: config.display_override.clone(),
            orientation: config.orientation.clone(),
            lang: config.lang.clone(),
            theme_color: config.theme_color.clone(),
            background_color: config.background_color.clone(),
            icons: standard_icons(),
            screenshots: config.screenshots.clone(),
            shortcuts: config.shortcuts.clone(),
            categories: config.categories.clone(),
            share_target: config.share_target.clone(),
            launch_handler: config.launch_handler.clone(),
            prefer_related_applications: None,
        }
    }

    pub fn to_json(&self) -> String {
        // A manifest of strings, lists and plain structs always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

/// The `<head>` lines that point a page at the manifest and icons.
pub fn head_links(manifest: &WebManifest) -> String {
    let mut s = format!("<link rel=\"manifest\" href=\"{FILE}\" />\n");
    s.push_str(&format!("<link rel=\"icon\" href=\"{ICON_DIR}/favicon.ico\" sizes=\"32x32\" />\n"));
    s.push_str(&format!("<link rel=\"apple-touch-icon\" href=\"{ICON_DIR}/apple-touch-icon.png\" />\n"));
    if let Some(c) = &manifest.theme_color {
        s.push_str(&format!("<meta name=\"theme-color\" content=\"{c}\" />\n"));
    }
    s
}

/// Adds [`head_links`] to an HTML page before `</head>`, leaving out what the page already
/// has (a page may set its own manifest link or theme colour). `None` when the page has
/// no `</head>`.
pub fn add_head_links(html: &str, manifest: &WebManifest) -> Option<String> {
    let at = html.find("</head>")?;
    let lower = html[..at].to_ascii_lowercase();
    let lines: String = head_links(manifest)
        .lines()
        .filter(|l| {
            let marker = l.split('"').nth(1).unwrap_or_default();
            !lower.contains(&format!("\"{marker}\""))
        })
        .map(|l| format!("    {l}\n"))
        .collect();
    Some(format!("{}{lines}  {}", html[..at].trim_end_matches([' ', '\t']), &html[at..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AppConfig {
        AppConfig::parse(
            "id = \"abc\"\nname = \"Field Notes\"\nicon = \"icon.svg\"\ntheme_color = \"#2f6f4f\"\n\
             background_color = \"#ffffff\"\ncategories = [\"productivity\"]\n",
        )
        .unwrap()
    }

    #[test]
    fn generated_from_the_config() {
        let m = WebManifest::from_config(&config());
        assert_eq!(m.id.as_deref(), Some("./?app=abc"));
        assert_eq!(m.short_name.as_deref(), Some("Field Notes"));
        assert_eq!(m.icons.len(), 3);
        let json: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(json["display"], "standalone");
        assert_eq!(json["icons"][2]["purpose"], "maskable");
        assert_eq!(json["icons"][0]["type"], "image/png");
        assert!(json.get("screenshots").is_none(), "empty lists are left out");
        assert!(json.get("prefer_related_applications").is_none());
        let back: WebManifest = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn icon_sizes() {
        let i = |sizes: &str| Icon { src: String::new(), sizes: sizes.into(), mime: String::new(), purpose: "any".into() };
        assert_eq!(i("192x192 512x512").square_sizes(), [192, 512]);
        assert_eq!(i("any").square_sizes(), [u32::MAX]);
        assert_eq!(i("192x100").square_sizes(), Vec::<u32>::new());
    }

    #[test]
    fn head_links_are_added_once() {
        let m = WebManifest::from_config(&config());
        let page = "<html><head>\n    <title>x</title>\n  </head><body></body></html>";
        let out = add_head_links(page, &m).unwrap();
        assert!(out.contains("<link rel=\"manifest\" href=\"manifest.webmanifest\" />"), "{out}");
        assert!(out.contains("<meta name=\"theme-color\" content=\"#2f6f4f\" />"), "{out}");
        assert_eq!(add_head_links(&out, &m).unwrap(), out);
        let own = "<head><meta name=\"theme-color\" content=\"#000\"></head>";
        let out = add_head_links(own, &m).unwrap();
        assert_eq!(out.matches("theme-color").count(), 1, "{out}");
        assert!(add_head_links("<body>", &m).is_none());
    }
}
