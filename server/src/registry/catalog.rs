//! The catalog: the page at the server's bare host listing the published apps.
//!
//! It is rendered on the server and complete without JavaScript: each app's icon, name,
//! description, version and publisher fingerprint, with plain Open and Install links.
//! `catalog.js` adds what needs the browser: which apps this browser opened or installed
//! from here and whether an update waits for them, and the Web Install API where the
//! browser has it.
//!
//! The catalog is itself a Stead app. Its files (page, style, script, web app manifest and
//! icons, rendered from `catalog/Stead.toml` and `catalog/catalog.svg` by stead-manifest)
//! form a bundle whose `stead-bundle.json` the server writes for the current list, so
//! Stead's service worker (the operator's build, `--catalog-worker`) precaches it and
//! serves it offline; publishing an app changes the page and so the catalog's version,
//! and an open catalog takes the new list through the worker's update flow.

use std::fmt::Write as _;

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use stead_core::bundle::{self, BundleFile, BundleManifest, MANIFEST_FILE, WORKER_SCRIPT};
use stead_manifest::{config::AppConfig, icons, web::WebManifest};

use super::Registry;
use super::api::AppInfo;

const CONFIG: &str = include_str!("../../catalog/Stead.toml");
const ICON: &[u8] = include_bytes!("../../catalog/catalog.svg");
const STYLE: &str = include_str!("../../catalog/catalog.css");
const SCRIPT: &str = include_str!("../../catalog/catalog.js");

/// The catalog's fixed parts, made once at start.
#[derive(Debug)]
pub struct Catalog {
    /// Stead's worker script, when the operator gave one: the catalog then installs and
    /// works offline.
    worker: Option<Vec<u8>>,
    /// Style, script, web app manifest and icons: every file but the page.
    statics: Vec<(String, Vec<u8>)>,
    /// The `<head>` links to the manifest and icons.
    head: String,
}

impl Catalog {
    pub fn new(worker: Option<Vec<u8>>) -> Result<Catalog, String> {
        let config = AppConfig::parse(CONFIG).map_err(|e| format!("the catalog's Stead.toml: {e}"))?;
        let manifest = WebManifest::from_config(&config);
        let source = icons::Source::decode(std::path::Path::new("catalog.svg"), ICON).map_err(|e| e.to_string())?;
        let background = config.background_color.as_deref().and_then(icons::parse_colour).unwrap_or([255, 255, 255]);
        let rendered = icons::render(&source, background).map_err(|e| e.to_string())?;
        let mut statics = vec![
            ("catalog.css".to_owned(), STYLE.as_bytes().to_vec()),
            ("catalog.js".to_owned(), SCRIPT.as_bytes().to_vec()),
            (stead_manifest::web::FILE.to_owned(), manifest.to_json().into_bytes()),
        ];
        statics.extend(rendered.files.into_iter().map(|(name, bytes)| (format!("{}/{name}", stead_manifest::web::ICON_DIR), bytes)));
        Ok(Catalog { worker, statics, head: stead_manifest::web::head_links(&manifest) })
    }

    /// The catalog's page for `apps`.
    pub fn page(&self, apps: &[AppInfo]) -> String {
        let mut list = String::new();
        for app in apps {
            list.push_str(&app_item(app));
        }
        if apps.is_empty() {
            list.push_str("<li class=\"empty\">No app is published here yet.</li>\n");
        }
        let worker = if self.worker.is_some() { " data-worker=\"stead\"" } else { "" };
        format!(
            "<!doctype html>\n<html lang=\"en\"{worker}>\n<head>\n<meta charset=\"utf-8\" />\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\" />\n\
             <title>Apps</title>\n<meta name=\"description\" content=\"The apps published to this Stead server\" />\n\
             {head}<link rel=\"stylesheet\" href=\"/catalog.css\" />\n<script src=\"/catalog.js\" defer></script>\n</head>\n<body>\n\
             <header>\n<h1>Apps</h1>\n<p>Published to this server. Each app runs on its own address, keeps its data on your device, \
             syncs it end-to-end encrypted and works offline once opened.</p>\n</header>\n<main>\n\
             <section id=\"mine\" aria-labelledby=\"mine-title\" hidden>\n<h2 id=\"mine-title\">Yours</h2>\n<ul id=\"mine-list\"></ul>\n</section>\n\
             <section aria-labelledby=\"all-title\">\n<h2 id=\"all-title\">All apps</h2>\n<ul id=\"apps\">\n{list}</ul>\n</section>\n</main>\n\
             <footer>Every version of an app is signed by its publisher; the fingerprint names the publisher's key.</footer>\n\
             </body>\n</html>\n",
            head = self.head,
        )
    }


    /// The bundle manifest of the catalog's files for `apps`: its version changes exactly
    /// when the page does.
    pub fn bundle(&self, apps: &[AppInfo]) -> BundleManifest {
        let page = ("index.html".to_owned(), self.page(apps).into_bytes());
        let files = std::iter::once(&page)
            .chain(&self.statics)
            .map(|(path, bytes)| BundleFile {
                path: path.clone(),
                sha256: bundle::sha256_hex(bytes),
                size: bytes.len() as u64,
                mime: crate::mime_for(path),
                immutable: false,
            })
            .collect();
        BundleManifest::new("index.html", files).expect("the catalog's own paths are clean and unique")
    }

    /// Answers a request for `rel` (a clean relative path, "" for the page) on the bare
    /// host; `apps` is only needed for the page and the bundle manifest.
    pub fn respond(&self, apps: &[AppInfo], method: &Method, headers: &HeaderMap, rel: &str) -> Response {
        if method != Method::GET && method != Method::HEAD {
            return (StatusCode::METHOD_NOT_ALLOWED, "the catalog answers GET and HEAD").into_response();
        }
        let bytes = match rel {
            "" | "index.html" => self.page(apps).into_bytes(),
            WORKER_SCRIPT => match &self.worker {
                Some(w) => w.clone(),
                None => return (StatusCode::NOT_FOUND, "this server runs its catalog without a service worker").into_response(),
            },
            MANIFEST_FILE if self.worker.is_some() => self.bundle(apps).to_json().into_bytes(),
            _ => match self.statics.iter().find(|(path, _)| path == rel) {
                Some((_, bytes)) => bytes.clone(),
                None => return (StatusCode::NOT_FOUND, format!("no {rel:?} in the catalog")).into_response(),
            },
        };
        let served = if rel.is_empty() { "index.html" } else { rel };
        let sha = bundle::sha256_hex(&bytes);
        let mut response = crate::file_response(method, headers, served, bytes, &sha);
        // The list changes with every publication: always revalidate (the ETag keeps that cheap).
        response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
        response
    }

    /// Whether answering `rel` needs the list of apps.
    pub fn needs_list(rel: &str) -> bool {
        matches!(rel, "" | "index.html" | MANIFEST_FILE)
    }
}

/// The bare host's answer when the registry is on: the catalog.
pub(crate) async fn serve(reg: &Arc<Registry>, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    let Some(rel) = crate::clean_path(uri.path()) else {
        return (StatusCode::BAD_REQUEST, "bad path").into_response();
    };
    let apps = if Catalog::needs_list(&rel) {
        match super::http::list(reg, headers).await {
            Ok(apps) => apps,
            Err(e) => return e.into_response(),
        }
    } else {
        Vec::new()
    };
    reg.catalog.respond(&apps, method, headers, &rel)
}

/// One app of the list.
fn app_item(app: &AppInfo) -> String {
    let title = app.title.as_deref().filter(|t| !t.trim().is_empty()).unwrap_or(&app.name);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<li class=\"app\" data-app=\"{name}\" data-title=\"{title}\" data-version=\"{version}\" data-url=\"{url}\">",
        name = escape(&app.name),
        title = escape(title),
        version = escape(&app.current),
        url = escape(&app.url),
    );
    // The icon is decoration: the name next to it says what it is.
    match app.icon.as_deref().filter(|i| i.starts_with(&app.url)) {
        Some(icon) => {
            let _ = writeln!(s, "<img src=\"{}\" alt=\"\" width=\"64\" height=\"64\" loading=\"lazy\" />", escape(icon));
        }
        None => s.push_str("<img alt=\"\" width=\"64\" height=\"64\" />\n"),
    }
    let _ = writeln!(s, "<div>\n<h3>{}</h3>", escape(title));
    if let Some(d) = app.description.as_deref().filter(|d| !d.trim().is_empty()) {
        let _ = writeln!(s, "<p>{}</p>", escape(d));
    }
    let _ = writeln!(
        s,
        "<dl>\n<div><dt>Address</dt><dd>{host}</dd></div>\n<div><dt>Version</dt><dd><code title=\"{version}\">{short}</code></dd></div>\n\
         <div><dt>Publisher</dt><dd><code title=\"{id}\">{fingerprint}</code></dd></div>\n</dl>\n</div>",
        host = escape(app.url.split_once("://").map_or(&app.url[..], |(_, rest)| rest.trim_end_matches('/'))),
        version = escape(&app.current),
        short = escape(app.current.get(..12).unwrap_or(&app.current)),
        id = escape(&app.app_id),
        fingerprint = escape(&fingerprint(&app.app_id)),
    );
    let _ = writeln!(
        s,
        "<div class=\"actions\">\n<a class=\"open\" href=\"{url}\">Open<span class=\"sr-only\"> {title}</span></a>\n\
         <a class=\"install\" href=\"{url}?install\">Install<span class=\"sr-only\"> {title}</span></a>\n</div>\n</li>",
        url = escape(&app.url),
        title = escape(title),
    );
    s
}

/// The publisher's key as people compare it: its first 16 hex digits in groups of four.
pub fn fingerprint(app_id: &str) -> String {
    let hex: Vec<char> = app_id.chars().take(16).collect();
    hex.chunks(4).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join(" ")
}

/// `s` safe inside HTML text and double-quoted attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, title: &str) -> AppInfo {
        AppInfo {
            name: name.into(),
            app_id: "ab".repeat(32),
            current: "cd".repeat(32),
            url: format!("http://{name}.localhost:8080/"),
            title: Some(title.into()),
            description: Some("Notes <b>bold</b> & more".into()),
            icon: Some(format!("http://{name}.localhost:8080/icons/icon-192.png")),
        }
    }

    #[test]
    fn the_page_lists_each_app_with_its_links_and_escapes_what_publishers_wrote() {
        let catalog = Catalog::new(None).unwrap();
        let page = catalog.page(&[app("notes", "Notes \"<script>alert(1)</script>"), app("todo", "Todo")]);
        assert!(!page.contains("<script>alert"), "a publisher's title must not become markup");
        assert!(page.contains("Notes &quot;&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("Notes &lt;b&gt;bold&lt;/b&gt; &amp; more"));
        assert!(page.contains("<a class=\"open\" href=\"http://todo.localhost:8080/\">"));
        assert!(page.contains("href=\"http://notes.localhost:8080/?install\""));
        assert!(page.contains("abab abab abab abab"), "the publisher's fingerprint");
        assert!(!page.contains("data-worker"), "no worker was given: the page registers none");
    }

    #[test]
    fn an_icon_on_another_origin_is_not_shown() {
        let mut a = app("notes", "Notes");
        a.icon = Some("http://evil.example/track.png".into());
        let page = Catalog::new(None).unwrap().page(&[a]);
        assert!(!page.contains("evil.example"));
    }

    #[test]
    fn the_bundle_version_moves_with_the_list_and_only_with_it() {
        let catalog = Catalog::new(Some(b"worker".to_vec())).unwrap();
        let one = catalog.bundle(&[app("notes", "Notes")]);
        assert_eq!(one, catalog.bundle(&[app("notes", "Notes")]), "the same list is the same version");
        let mut newer = app("notes", "Notes");
        newer.current = "ef".repeat(32);
        assert_ne!(one.version, catalog.bundle(&[newer]).version, "a new version of an app changes the catalog");
        let paths: Vec<&str> = one.files.iter().map(|f| f.path.as_str()).collect();
        for p in ["index.html", "catalog.css", "catalog.js", "manifest.webmanifest", "icons/icon-192.png", "icons/maskable-512.png"] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
    }
}
