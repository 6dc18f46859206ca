//! Installability checks on a Web App Manifest.
//!
//! Errors are what stops Chromium from offering to install the app (the reasons
//! `Page.getInstallabilityErrors` gives) and the fields PWABuilder requires before it
//! packages an app for a store; warnings are PWABuilder's recommended fields and limits.
//! Every problem names the manifest field and says how to fix it in `Stead.toml`.

use crate::config::Display;
use crate::web::WebManifest;

/// Chromium's smallest icon it will install an app with (`kMinimumPrimaryIconSizeInPx`).
pub const CHROMIUM_MIN_ICON: u32 = 144;
/// Longest `short_name` that fits a home screen label without being cut.
pub const SHORT_NAME_MAX: usize = 12;
/// Longest `name` Chromium shows in full.
pub const NAME_MAX: usize = 45;

/// The categories the W3C manifest app information note lists; stores know these.
pub const KNOWN_CATEGORIES: &[&str] = &[
    "books", "business", "education", "entertainment", "finance", "fitness", "food", "games", "government", "health",
    "kids", "lifestyle", "magazines", "medical", "music", "navigation", "news", "personalization", "photo", "politics",
    "productivity", "security", "shopping", "social", "sports", "travel", "utilities", "weather",
];

const ORIENTATIONS: &[&str] =
    &["any", "natural", "landscape", "landscape-primary", "landscape-secondary", "portrait", "portrait-primary", "portrait-secondary"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The app will not install, or a store will not take it.
    Error,
    /// Recommended: install dialogs and stores show less or worse without it.
    Warning,
}

/// One finding: which rule, on which field, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A stable name for the rule, for tests and for silencing it later.
    pub rule: &'static str,
    pub severity: Severity,
    /// The manifest field (`icons`, `short_name`, `screenshots[1].sizes`).
    pub field: String,
    pub message: String,
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} (fix: {})", self.field, self.message, self.fix)
    }
}

/// Checks `m` against Chromium's installability rules and PWABuilder's required and
/// recommended fields. Errors come first.
pub fn validate(m: &WebManifest) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut error = |rule, field: &str, message: String, fix: &str| {
        out.push(Problem { rule, severity: Severity::Error, field: field.into(), message, fix: fix.into() });
    };
    let name = m.name.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let short_name = m.short_name.as_deref().map(str::trim).filter(|s| !s.is_empty());

    // Chromium: a name or short name.
    if name.is_none() && short_name.is_none() {
        error("name-missing", "name", "the manifest has neither `name` nor `short_name`".into(), "set `name` in Stead.toml");
    } else if name.is_none() {
        error("name-missing", "name", "PWABuilder and stores need `name`".into(), "set `name` in Stead.toml");
    } else if short_name.is_none() {
        error("short-name-missing", "short_name", "PWABuilder and stores need `short_name`".into(), "set `short_name` in Stead.toml");
    }

    // Chromium: a valid start URL, inside the scope.
    match m.start_url.as_deref() {
        None | Some("") => error("start-url-missing", "start_url", "the manifest has no `start_url`".into(), "set `start_url = \"./\"` in Stead.toml"),
        Some(start) => match (resolve(start), m.scope.as_deref().map(resolve)) {
            (None, _) => error(
                "start-url-invalid",
                "start_url",
                format!("`{start}` is not a URL on the app's own origin"),
                "use a path relative to the app, e.g. `./` or `./?source=pwa`",
            ),
            (_, Some(None)) => error(
                "scope-invalid",
                "scope",
                format!("`{}` is not a path on the app's own origin", m.scope.as_deref().unwrap_or_default()),
                "use a path relative to the app, e.g. `./`",
            ),
            (Some(start_path), Some(Some(scope_path))) if !start_path.starts_with(&scope_path) => error(
                "start-url-out-of-scope",
                "start_url",
                format!("`{start}` is outside the scope `{}`: the browser would ignore the scope", m.scope.as_deref().unwrap_or_default()),
                "make `scope` a prefix of `start_url` (`scope = \"./\"` covers the whole app)",
            ),
            _ => {}
        },
    }

    // Chromium: an app window, not a browser tab.
    let display_ok = m.display.is_some_and(Display::installable) || m.display_override.iter().any(|d| d.installable());
    if !display_ok {
        error(
            "display-not-installable",
            "display",
            "`display = \"browser\"` opens the app as a tab, so Chromium does not install it".into(),
            "use `display = \"standalone\"` (or `minimal-ui`, `fullscreen`)",
        );
    }

    // Chromium: an icon of at least 144 px for purpose any, in a format it can show.
    let any_icons: Vec<_> = m.icons.iter().filter(|i| i.has_purpose("any")).collect();
    let installable_icon = any_icons
        .iter()
        .any(|i| matches!(i.mime.as_str(), "image/png" | "image/svg+xml" | "image/webp") && i.square_sizes().iter().any(|&s| s >= CHROMIUM_MIN_ICON));
    if !installable_icon {
        error(
            "icon-missing",
            "icons",
            format!("no square PNG, SVG or WebP icon of {CHROMIUM_MIN_ICON} px or more with purpose `any`"),
            "set `icon` in Stead.toml to an SVG or a 512×512 PNG: the build renders every size",
        );
    }
    // PWABuilder: 192 and 512.
    for size in [192, 512] {
        if installable_icon && !any_icons.iter().any(|i| i.square_sizes().iter().any(|&s| s == size || s == u32::MAX)) {
            error("icon-size-missing", "icons", format!("no {size}×{size} icon with purpose `any`"), "let the build render the icons from `icon` in Stead.toml");
        }
    }
    if m.prefer_related_applications == Some(true) {
        error(
            "prefer-related-applications",
            "prefer_related_applications",
            "`true` tells browsers to offer a store app instead of installing this one".into(),
            "remove `prefer_related_applications`",
        );
    }

    let mut warn = |rule, field: &str, message: String, fix: &str| {
        out.push(Problem { rule, severity: Severity::Warning, field: field.into(), message, fix: fix.into() });
    };
    if let Some(s) = short_name
        && s.chars().count() > SHORT_NAME_MAX
    {
        warn(
            "short-name-long",
            "short_name",
            format!("`{s}` has {} characters: home screens cut labels past {SHORT_NAME_MAX}", s.chars().count()),
            "set a `short_name` of 12 characters or fewer in Stead.toml",
        );
    }
    if let Some(n) = name
        && n.chars().count() > NAME_MAX
    {
        warn("name-long", "name", format!("`name` has {} characters; Chromium shows {NAME_MAX}", n.chars().count()), "shorten `name` in Stead.toml");
    }
    if m.id.as_deref().is_none_or(str::is_empty) {
        warn("id-missing", "id", "without `id` the browser takes the start URL as the app's identity, so changing it makes a new app".into(), "keep the `id` `stead new` wrote in Stead.toml");
    }
    if m.description.as_deref().is_none_or(|d| d.trim().is_empty()) {
        warn("description-missing", "description", "install dialogs and stores show a description".into(), "set `description` in Stead.toml");
    }
    for (field, value) in [("theme_color", &m.theme_color), ("background_color", &m.background_color)] {
        if value.is_none() {
            warn("colour-missing", field, format!("no `{field}`: the browser picks its own colour"), "set it in Stead.toml as `#rrggbb`");
        }
    }
    if !m.icons.iter().any(|i| i.has_purpose("maskable")) {
        warn("maskable-icon-missing", "icons", "no maskable icon: Android shows the icon shrunk on a white disc".into(), "let the build render the icons from `icon` in Stead.toml");
    }
    if m.screenshots.is_empty() {
        warn("screenshots-missing", "screenshots", "no screenshots: Chromium's richer install dialog and stores show them".into(), "add `[[screenshots]]` (`src`, `sizes`, `form_factor`) in Stead.toml");
    }
    for (i, s) in m.screenshots.iter().enumerate() {
        let field = format!("screenshots[{i}].sizes");
        match s.sizes.split_once(['x', 'X']).and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?))) {
            None => warn("screenshot-size", &field, format!("`{}` is not `WIDTHxHEIGHT`", s.sizes), "write the image's size, e.g. `1280x720`"),
            Some((w, h)) => {
                let (lo, hi) = (w.min(h), w.max(h));
                if lo < 320 || hi > 3840 || hi as f32 / lo.max(1) as f32 > 2.3 {
                    warn(
                        "screenshot-size",
                        &field,
                        format!("{w}×{h} is outside what Chromium shows (sides 320 to 3840 px, at most 2.3 times longer than wide)"),
                        "take the screenshot at e.g. 1280x720 (wide) or 750x1334 (narrow)",
                    );
                }
            }
        }
        if let Some(f) = &s.form_factor
            && !matches!(f.as_str(), "wide" | "narrow")
        {
            warn("screenshot-form-factor", &format!("screenshots[{i}].form_factor"), format!("`{f}` is neither `wide` nor `narrow`"), "use `wide` (desktop) or `narrow` (mobile)");
        }
    }
    if m.categories.is_empty() {
        warn("categories-missing", "categories", "no categories: stores file the app under them".into(), "set e.g. `categories = [\"productivity\"]` in Stead.toml");
    }
    for c in &m.categories {
        if !KNOWN_CATEGORIES.contains(&c.as_str()) {
            warn("category-unknown", "categories", format!("`{c}` is not one of the W3C's known categories"), "use known names such as `productivity`, `utilities` or `education`");
        }
    }
    if let Some(o) = &m.orientation
        && !ORIENTATIONS.contains(&o.as_str())
    {
        warn("orientation-invalid", "orientation", format!("`{o}` is not an orientation"), "use `any`, `portrait` or `landscape` (or leave it out)");
    }
    for (i, s) in m.shortcuts.iter().enumerate() {
        if resolve(&s.url).is_none() {
            warn("shortcut-url", &format!("shortcuts[{i}].url"), format!("`{}` is not a path on the app's own origin", s.url), "use a path relative to the app, e.g. `./?new`");
        }
    }
    if let Some(h) = &m.launch_handler
        && !matches!(h.client_mode.as_str(), "auto" | "navigate-new" | "navigate-existing" | "focus-existing")
    {
        warn("launch-handler", "launch_handler.client_mode", format!("`{}` is not a client mode", h.client_mode), "use `auto`, `navigate-new`, `navigate-existing` or `focus-existing`");
    }
    if let Some(t) = &m.share_target {
        if !matches!(t.method.to_ascii_uppercase().as_str(), "GET" | "POST") {
            warn("share-target", "share_target.method", format!("`{}` is neither GET nor POST", t.method), "use `GET` (or `POST` with an enctype)");
        }
        if resolve(&t.action).is_none() {
            warn("share-target", "share_target.action", format!("`{}` is not a path on the app's own origin", t.action), "use a path relative to the app, e.g. `./share`");
        }
    }
    out.sort_by_key(|p| p.severity);
    out
}

/// The path `url` names when the manifest sits at `/app/manifest.webmanifest`, or `None`
/// for a URL of another origin (or one that climbs out of the app's folder).
fn resolve(url: &str) -> Option<String> {
    if url.contains("://") || url.starts_with("//") {
        return None;
    }
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let mut parts: Vec<&str> = if path.starts_with('/') { Vec::new() } else { vec!["app"] };
    let trailing = path.is_empty() || path.ends_with('/') || path.ends_with("/.");
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if trailing && !out.ends_with('/') {
        out.push('/');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LaunchHandler, Screenshot, ShareParams, ShareTarget, Shortcut};
    use crate::web::{Icon, standard_icons};

    /// A manifest with every recommended field: no problems.
    fn good() -> WebManifest {
        WebManifest {
            id: Some("./?app=x".into()),
            name: Some("Field Notes".into()),
            short_name: Some("Notes".into()),
            description: Some("Notes that work offline".into()),
            start_url: Some("./".into()),
            scope: Some("./".into()),
            display: Some(Display::Standalone),
            display_override: vec![],
            orientation: None,
            lang: Some("en".into()),
            theme_color: Some("#2f6f4f".into()),
            background_color: Some("#ffffff".into()),
            icons: standard_icons(),
            screenshots: vec![Screenshot { src: "s.png".into(), sizes: "1280x720".into(), mime: None, form_factor: Some("wide".into()), label: None }],
            shortcuts: vec![],
            categories: vec!["productivity".into()],
            share_target: None,
            launch_handler: None,
            prefer_related_applications: None,
        }
    }

    /// Applies `change` to a good manifest and expects exactly the problems
    /// `(rule, severity, field)`.
    fn check(change: impl FnOnce(&mut WebManifest), expect: &[(&str, Severity, &str)]) {
        let mut m = good();
        change(&mut m);
        let got: Vec<_> = validate(&m).into_iter().map(|p| {
            assert!(!p.fix.is_empty() && !p.message.is_empty());
            (p.rule, p.severity, p.field)
        }).collect();
        let want: Vec<_> = expect.iter().map(|&(r, s, f)| (r, s, f.to_owned())).collect();
        assert_eq!(got, want);
    }

    use Severity::{Error, Warning};

    #[test]
    fn a_complete_manifest_has_no_problems() {
        check(|_| {}, &[]);
    }

    #[test]
    fn names() {
        check(|m| { m.name = None; m.short_name = None }, &[("name-missing", Error, "name")]);
        check(|m| m.name = Some(" ".into()), &[("name-missing", Error, "name")]);
        check(|m| m.short_name = None, &[("short-name-missing", Error, "short_name")]);
        check(|m| m.short_name = Some("Field Notes Pro".into()), &[("short-name-long", Warning, "short_name")]);
        check(|m| m.name = Some("N".repeat(46)), &[("name-long", Warning, "name")]);
    }

    #[test]
    fn start_url_and_scope() {
        check(|m| m.start_url = None, &[("start-url-missing", Error, "start_url")]);
        check(|m| m.start_url = Some("https://elsewhere.example/".into()), &[("start-url-invalid", Error, "start_url")]);
        check(|m| m.start_url = Some("../../x".into()), &[("start-url-invalid", Error, "start_url")]);
        check(|m| m.scope = Some("//cdn.example/".into()), &[("scope-invalid", Error, "scope")]);
        check(|m| m.scope = Some("./app/".into()), &[("start-url-out-of-scope", Error, "start_url")]);
        check(|m| { m.scope = Some("./app/".into()); m.start_url = Some("./app/?source=pwa".into()) }, &[]);
        check(|m| { m.scope = Some("/".into()); m.start_url = Some("./index.html".into()) }, &[]);
    }

    #[test]
    fn display() {
        check(|m| m.display = Some(Display::Browser), &[("display-not-installable", Error, "display")]);
        check(|m| { m.display = Some(Display::Browser); m.display_override = vec![Display::WindowControlsOverlay] }, &[]);
        check(|m| m.display = Some(Display::MinimalUi), &[]);
    }

    #[test]
    fn icons() {
        let png = |sizes: &str, purpose: &str| Icon { src: "i.png".into(), sizes: sizes.into(), mime: "image/png".into(), purpose: purpose.into() };
        check(|m| m.icons.clear(), &[("icon-missing", Error, "icons"), ("maskable-icon-missing", Warning, "icons")]);
        check(|m| m.icons = vec![png("128x128", "any"), png("512x512", "maskable")], &[("icon-missing", Error, "icons")]);
        check(|m| m.icons = vec![png("512x512", "any maskable")], &[("icon-size-missing", Error, "icons")]);
        check(|m| m.icons = vec![png("192x192 512x512", "any"), png("512x512", "maskable")], &[]);
        check(
            |m| m.icons = vec![Icon { src: "i.gif".into(), sizes: "512x512".into(), mime: "image/gif".into(), purpose: "any maskable".into() }],
            &[("icon-missing", Error, "icons")],
        );
        check(
            |m| m.icons = vec![Icon { src: "i.svg".into(), sizes: "any".into(), mime: "image/svg+xml".into(), purpose: "any".into() }, png("512x512", "maskable")],
            &[],
        );
    }

    #[test]
    fn prefer_related_applications() {
        check(|m| m.prefer_related_applications = Some(true), &[("prefer-related-applications", Error, "prefer_related_applications")]);
        check(|m| m.prefer_related_applications = Some(false), &[]);
    }

    #[test]
    fn recommended_fields() {
        check(|m| m.id = None, &[("id-missing", Warning, "id")]);
        check(|m| m.description = None, &[("description-missing", Warning, "description")]);
        check(|m| m.theme_color = None, &[("colour-missing", Warning, "theme_color")]);
        check(|m| m.background_color = None, &[("colour-missing", Warning, "background_color")]);
        check(|m| m.screenshots.clear(), &[("screenshots-missing", Warning, "screenshots")]);
        check(|m| m.categories.clear(), &[("categories-missing", Warning, "categories")]);
        check(|m| m.categories = vec!["notes".into()], &[("category-unknown", Warning, "categories")]);
        check(|m| m.orientation = Some("sideways".into()), &[("orientation-invalid", Warning, "orientation")]);
        check(|m| m.orientation = Some("portrait".into()), &[]);
    }

    #[test]
    fn screenshots() {
        let shot = |sizes: &str, ff: &str| Screenshot { src: "s.png".into(), sizes: sizes.into(), mime: None, form_factor: Some(ff.into()), label: None };
        check(|m| m.screenshots = vec![shot("big", "wide")], &[("screenshot-size", Warning, "screenshots[0].sizes")]);
        check(|m| m.screenshots = vec![shot("1280x720", "wide"), shot("200x400", "narrow")], &[("screenshot-size", Warning, "screenshots[1].sizes")]);
        check(|m| m.screenshots = vec![shot("3000x1000", "wide")], &[("screenshot-size", Warning, "screenshots[0].sizes")]);
        check(|m| m.screenshots = vec![shot("750x1334", "tall")], &[("screenshot-form-factor", Warning, "screenshots[0].form_factor")]);
    }

    #[test]
    fn shortcuts_share_target_launch_handler() {
        let sc = |url: &str| Shortcut { name: "New".into(), short_name: None, description: None, url: url.into() };
        check(|m| m.shortcuts = vec![sc("./?new")], &[]);
        check(|m| m.shortcuts = vec![sc("./?new"), sc("https://x.example/")], &[("shortcut-url", Warning, "shortcuts[1].url")]);
        check(|m| m.launch_handler = Some(LaunchHandler { client_mode: "reuse".into() }), &[("launch-handler", Warning, "launch_handler.client_mode")]);
        check(|m| m.launch_handler = Some(LaunchHandler { client_mode: "focus-existing".into() }), &[]);
        let target = |method: &str, action: &str| ShareTarget {
            action: action.into(),
            method: method.into(),
            enctype: None,
            params: ShareParams { title: Some("t".into()), text: None, url: None },
        };
        check(|m| m.share_target = Some(target("GET", "./share")), &[]);
        check(|m| m.share_target = Some(target("PUT", "./share")), &[("share-target", Warning, "share_target.method")]);
        check(|m| m.share_target = Some(target("post", "https://x.example/")), &[("share-target", Warning, "share_target.action")]);
    }

    #[test]
    fn errors_sort_before_warnings_and_read_well() {
        let mut m = good();
        m.description = None;
        m.display = Some(Display::Browser);
        let p = validate(&m);
        assert_eq!(p[0].severity, Error);
        assert_eq!(p[1].severity, Warning);
        assert!(p[0].to_string().starts_with("display: "), "{}", p[0]);
        assert!(p[0].to_string().contains("(fix: use `display = \"standalone\"`"), "{}", p[0]);
    }

    #[test]
    fn resolving() {
        assert_eq!(resolve("./").as_deref(), Some("/app/"));
        assert_eq!(resolve("").as_deref(), Some("/app/"));
        assert_eq!(resolve("./?a=b").as_deref(), Some("/app/"));
        assert_eq!(resolve("index.html").as_deref(), Some("/app/index.html"));
        assert_eq!(resolve("/").as_deref(), Some("/"));
        assert_eq!(resolve("../").as_deref(), Some("/"));
        assert_eq!(resolve("../../"), None);
        assert_eq!(resolve("https://x/"), None);
    }
}
