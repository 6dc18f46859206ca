//! Bundle manifests: what an app build ships and what the service worker installs.
//!
//! A build writes `stead-bundle.json` beside the app's files. It lists every file with its
//! SHA-256, size and MIME type, and carries a version id that is itself a hash of that list,
//! so two builds with the same files have the same version and any changed byte gives a
//! new one. The service worker stores files by hash, so moving from one version to the
//! next downloads only the hashes it does not have yet ([`BundleManifest::missing`]).

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file name a build writes next to the app's files.
pub const MANIFEST_FILE: &str = "stead-bundle.json";

/// The service worker's script, which the build writes next to the app's files. It is not
/// part of the bundle: the browser installs and updates it.
pub const WORKER_SCRIPT: &str = "stead-sw.js";
/// The worker's data engine, a wasm module of its own that is a file of the bundle (the
/// worker compiles it from its store on first data use; `stead-sw.js` names its SHA-256).
pub const DATA_MODULE: &str = "stead-data.wasm";

/// The manifest format this code reads and writes.
pub const FORMAT: u32 = 1;

/// The path, beside the manifest, that answers many files of one version in one response
/// (see [`batch_query`]): a worker installing a version asks for its missing files a
/// batch at a time rather than one request each. A server without it answers 404, and
/// the worker downloads those files one by one.
pub const FILES_BATCH: &str = "stead-files";
/// Files one batch request may name at most.
pub const MAX_BATCH_FILES: usize = 1024;

/// One file of a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFile {
    /// Path relative to the bundle root, `/`-separated, without a leading slash.
    pub path: String,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub size: u64,
    pub mime: String,
    /// True when the file name carries a content hash, so a browser may cache it forever.
    #[serde(default)]
    pub immutable: bool,
}

/// The list of files of one app version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleManifest {
    pub format: u32,
    /// Hex SHA-256 over the canonical file list (see [`version_of`]).
    pub version: String,
    /// The document served for navigations, usually `index.html`.
    pub entry: String,
    /// Sorted by path, no duplicates.
    pub files: Vec<BundleFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("bundle manifest is not valid JSON: {0}")]
    Json(String),
    #[error("bundle manifest format {0} is not supported (this build reads format {FORMAT})")]
    UnsupportedFormat(u32),
    #[error("bundle path {} is not a clean relative path", Quoted(.0))]
    BadPath(String),
    #[error("bundle file {} has a malformed sha256 {}", Quoted(.path), Quoted(.sha256))]
    BadHash { path: String, sha256: String },
    #[error("bundle lists {} twice", Quoted(.0))]
    Duplicate(String),
    #[error("bundle path {} is reserved: servers answer it themselves", Quoted(.0))]
    Reserved(String),
    #[error("bundle entry {} is not among its files", Quoted(.0))]
    MissingEntry(String),
    #[error("bundle version {declared} does not match its files (computed {computed})")]
    VersionMismatch { declared: String, computed: String },
}

/// A manifest's text (hostile input) shown in an error: in quotes, with quotes,
/// backslashes, control characters and bidirectional or zero-width marks escaped, so it
/// cannot forge a line of a log or status page. Unlike `{:?}` it leaves other characters
/// as they are: `Debug` for `str` links Unicode's printable tables into the service
/// worker's serving module, which shows these errors (4.3 KB gzip, with the `str`
/// slicing panic that links them too).
struct Quoted<'a>(&'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' | '\\' => {
                    f.write_char('\\')?;
                    f.write_char(c)?;
                }
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                // Control characters, and the invisible ones that reorder or hide text.
                c if c.is_control() || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}') => {
                    write!(f, "\\u{{{:x}}}", u32::from(c))?;
                }
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

impl BundleManifest {
    /// Builds a manifest from a file list in any order and computes its version.
    pub fn new(entry: &str, mut files: Vec<BundleFile>) -> Result<Self, BundleError> {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        validate_files(entry, &files)?;
        let version = version_of(&files);
        Ok(BundleManifest { format: FORMAT, version, entry: entry.to_owned(), files })
    }

    /// Parses and fully validates a manifest, including that its version matches its files.
    pub fn parse(json: &[u8]) -> Result<Self, BundleError> {
        let manifest: BundleManifest =
            serde_json::from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
        manifest.validated()
    }

    /// Checks a manifest read by other means than [`BundleManifest::parse`] (the service
    /// worker reads JSON with the browser's parser): [`BundleManifest::check_shape`], and
    /// that the version matches the files.
    pub fn validated(self) -> Result<Self, BundleError> {
        self.check_shape()?;
        let computed = version_of(&self.files);
        if computed != self.version {
            return Err(BundleError::VersionMismatch { declared: self.version, computed });
        }
        Ok(self)
    }

    /// Everything [`BundleManifest::validated`] checks but the version's hash: the format,
    /// files sorted by path without duplicates, clean paths, well-formed hashes, and an
    /// entry among the files. (The service worker hashes [`version_input`] with the
    /// browser's own SHA-256.)
    pub fn check_shape(&self) -> Result<(), BundleError> {
        if self.format != FORMAT {
            return Err(BundleError::UnsupportedFormat(self.format));
        }
        if !self.files.is_sorted_by(|a, b| a.path < b.path) {
            // Sorted input is part of the canonical form; reject rather than guess.
            let dup = self.files.windows(2).find(|w| w[0].path == w[1].path);
            return Err(match dup {
                Some(w) => BundleError::Duplicate(w[0].path.clone()),
                None => BundleError::BadPath("files are not sorted by path".to_owned()),
            });
        }
        validate_files(&self.entry, &self.files)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest always serializes")
    }

    /// The file at `path` (relative, no leading slash).
    pub fn file(&self, path: &str) -> Option<&BundleFile> {
        self.files.binary_search_by(|f| f.path.as_str().cmp(path)).ok().map(|i| &self.files[i])
    }

    /// The distinct content hashes this version needs.
    pub fn hashes(&self) -> BTreeSet<&str> {
        self.files.iter().map(|f| f.sha256.as_str()).collect()
    }

    /// Files whose content is not yet stored, one per distinct hash, in path order.
    pub fn missing(&self, is_stored: impl Fn(&BundleFile) -> bool) -> Vec<&BundleFile> {
        // Hash sets here, not B-trees: the worker links these, and no B-tree else.
        let mut seen = HashSet::new();
        self.files.iter().filter(|f| seen.insert(f.sha256.as_str()) && !is_stored(f)).collect()
    }

    /// Total bytes of the distinct contents of this version.
    pub fn total_size(&self) -> u64 {
        let mut seen = HashSet::new();
        self.files.iter().filter(|f| seen.insert(f.sha256.as_str())).map(|f| f.size).sum()
    }
}

/// The version id of a file list: SHA-256 over one line per file (path, hash, size, MIME),
/// in path order. Paths cannot hold a newline or a NUL, so the encoding is unambiguous.
pub fn version_of(files: &[BundleFile]) -> String {
    sha256_hex(&version_input(files))
}

/// The bytes [`version_of`] hashes.
pub fn version_input(files: &[BundleFile]) -> Vec<u8> {
    let mut out = format!("stead-bundle/{FORMAT}\n");
    for f in files {
        out.push_str(&format!("{}\0{}\0{}\0{}\n", f.path, f.sha256, f.size, f.mime));
    }
    out.into_bytes()
}

/// The query of a [`FILES_BATCH`] request for the files at `indices` (into the
/// manifest's `files`, strictly increasing) of the version `version`:
/// `version=<hex>&files=0-3,7,9-12`, runs of consecutive indices as ranges. The answer
/// is those files' bytes one after another, in that order.
pub fn batch_query(version: &str, indices: &[usize]) -> String {
    let mut files = String::new();
    let mut k = 0;
    while k < indices.len() {
        let start = indices[k];
        let mut end = start;
        while k + 1 < indices.len() && indices[k + 1] == end + 1 {
            k += 1;
            end += 1;
        }
        if !files.is_empty() {
            files.push(',');
        }
        files.push_str(&start.to_string());
        if end > start {
            files.push('-');
            files.push_str(&end.to_string());
        }
        k += 1;
    }
    format!("version={version}&files={files}")
}

/// Reads a [`FILES_BATCH`] query (hostile input) against a manifest of `count` files:
/// the version it asks for and the file indices. Each index is below `count` and greater
/// than the one before, so a request can name a file once and never more files than the
/// version has; at most [`MAX_BATCH_FILES`]. Anything else is an error saying what.
pub fn parse_batch_query(query: &str, count: usize) -> Result<(String, Vec<usize>), String> {
    let (mut version, mut files) = (None, None);
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let slot = match key {
            "version" => &mut version,
            "files" => &mut files,
            _ => return Err(format!("unknown parameter {key:?}")),
        };
        if slot.replace(value).is_some() {
            return Err(format!("{key} is given twice"));
        }
    }
    let version = version.ok_or("no version")?;
    if version.len() != 64 || !version.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err("the version is not a lower-case hex sha-256".into());
    }
    let number = |s: &str| -> Result<usize, String> {
        if s.is_empty() || s.len() > 7 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{s:?} is not a file index"));
        }
        let n: usize = s.parse().map_err(|_| format!("{s:?} is not a file index"))?;
        if n >= count {
            return Err(format!("file index {n} is past the version's {count} files"));
        }
        Ok(n)
    };
    let mut indices: Vec<usize> = Vec::new();
    for item in files.ok_or("no files")?.split(',') {
        let (start, end) = match item.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(item)?, number(item)?),
        };
        if end < start || indices.last().is_some_and(|&last| start <= last) {
            return Err("file indices must increase".into());
        }
        if indices.len() + (end - start + 1) > MAX_BATCH_FILES {
            return Err(format!("more than {MAX_BATCH_FILES} files"));
        }
        indices.extend(start..=end);
    }
    Ok((version.to_owned(), indices))
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether a file name carries a content hash the way trunk writes them
/// (`name-0123456789abcdef.js`, `name-0123456789abcdef_bg.wasm`): at least 10 hex digits
/// after the last `-` of the stem (trunk prints a 64-bit hash without leading zeros).
pub fn is_content_hashed(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = name.split('.').next().unwrap_or(name);
    match stem.rsplit_once('-') {
        Some((_, tail)) => {
            let tail = tail.strip_suffix("_bg").unwrap_or(tail);
            tail.len() >= 10 && tail.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

fn validate_files(entry: &str, files: &[BundleFile]) -> Result<(), BundleError> {
    for w in files.windows(2) {
        if w[0].path == w[1].path {
            return Err(BundleError::Duplicate(w[0].path.clone()));
        }
    }
    for f in files {
        if !is_clean_path(&f.path) {
            return Err(BundleError::BadPath(f.path.clone()));
        }
        if f.path == FILES_BATCH {
            return Err(BundleError::Reserved(f.path.clone()));
        }
        let hex_ok = f.sha256.len() == 64
            && f.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err(BundleError::BadHash { path: f.path.clone(), sha256: f.sha256.clone() });
        }
    }
    if files.binary_search_by(|f| f.path.as_str().cmp(entry)).is_err() {
        return Err(BundleError::MissingEntry(entry.to_owned()));
    }
    Ok(())
}

fn is_clean_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains(['\\', '\0', '\n', '?', '#'])
        && path.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn file(path: &str, content: &str) -> BundleFile {
        BundleFile {
            path: path.to_owned(),
            sha256: sha256_hex(content.as_bytes()),
            size: content.len() as u64,
            mime: "text/plain".to_owned(),
            immutable: is_content_hashed(path),
        }
    }

    fn app(files: &[(&str, &str)]) -> BundleManifest {
        BundleManifest::new("index.html", files.iter().map(|(p, c)| file(p, c)).collect())
            .expect("valid bundle")
    }

    #[test]
    fn version_depends_on_content_not_order() {
        let a = app(&[("index.html", "<h1>"), ("app.js", "x")]);
        let b = app(&[("app.js", "x"), ("index.html", "<h1>")]);
        let c = app(&[("app.js", "y"), ("index.html", "<h1>")]);
        assert_eq!(a.version, b.version);
        assert_ne!(a.version, c.version);
        assert_eq!(a.files[0].path, "app.js");
    }

    #[test]
    fn round_trips_through_json() {
        let a = app(&[("index.html", "<h1>"), ("assets/app-0123456789abcdef.js", "x")]);
        assert_eq!(BundleManifest::parse(a.to_json().as_bytes()), Ok(a));
    }

    #[test]
    fn missing_lists_each_hash_once() {
        let a = app(&[("index.html", "<h1>"), ("a.txt", "same"), ("b.txt", "same"), ("c.txt", "c")]);
        let stored = sha256_hex(b"c");
        let missing: Vec<&str> =
            a.missing(|f| f.sha256 == stored).iter().map(|f| f.path.as_str()).collect();
        assert_eq!(missing, ["a.txt", "index.html"]);
        assert_eq!(a.total_size(), 4 + 4 + 1);
    }

    fn check_parse(mutate: impl FnOnce(&mut serde_json::Value), expect: &str) {
        let mut v = serde_json::to_value(app(&[("index.html", "<h1>"), ("a.js", "a")])).unwrap();
        mutate(&mut v);
        let err = BundleManifest::parse(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), expect);
    }

    #[test]
    fn errors_quote_hostile_paths_on_one_line() {
        let err = BundleError::BadPath("a\"b\\c\nd\u{1b}[2J\u{202e}txt.exe ü".into());
        assert_eq!(err.to_string(), r#"bundle path "a\"b\\c\nd\u{1b}[2J\u{202e}txt.exe ü" is not a clean relative path"#);
        // Plain paths read as `{:?}` would show them.
        let plain = "assets/app-0123456789ab.js";
        assert_eq!(BundleError::Duplicate(plain.into()).to_string(), format!("bundle lists {plain:?} twice"));
    }

    #[test]
    fn rejects_bad_manifests() {
        check_parse(|v| v["format"] = 9.into(), "bundle manifest format 9 is not supported (this build reads format 1)");
        check_parse(|v| v["files"][0]["path"] = "../a.js".into(), "bundle path \"../a.js\" is not a clean relative path");
        check_parse(|v| v["files"][0]["path"] = "/a.js".into(), "bundle path \"/a.js\" is not a clean relative path");
        check_parse(|v| v["files"][0]["sha256"] = "zz".into(), "bundle file \"a.js\" has a malformed sha256 \"zz\"");
        check_parse(|v| v["entry"] = "main.html".into(), "bundle entry \"main.html\" is not among its files");
        check_parse(|v| v["files"][1]["path"] = "a.js".into(), "bundle lists \"a.js\" twice");
        check_parse(|v| v["files"][0]["size"] = 2.into(), &{
            let mut files = app(&[("index.html", "<h1>"), ("a.js", "a")]).files;
            files[0].size = 2;
            format!(
                "bundle version {} does not match its files (computed {})",
                app(&[("index.html", "<h1>"), ("a.js", "a")]).version,
                version_of(&files)
            )
        });
        let err = BundleManifest::parse(b"{").unwrap_err();
        assert!(matches!(err, BundleError::Json(_)), "{err}");
    }

    #[test]
    fn recognises_content_hashed_names() {
        for (path, expect) in [
            ("todo-2f4c0a9b1e3d5f70.js", true),
            ("assets/todo-2f4c0a9b1e3d5f70_bg.wasm", true),
            ("todo-2f4c0a9b1e3d5f70.wasm.map", true),
            ("todo-36c45d4ed63009d_bg.wasm", true),
            ("todo-2f4c0a9b.js", false),
            ("index.html", false),
            ("style-abc.css", false),
        ] {
            assert_eq!(is_content_hashed(path), expect, "{path}");
        }
    }

    #[test]
    fn the_batch_path_is_reserved() {
        let err = BundleManifest::new("index.html", vec![file("index.html", "<p>"), file(FILES_BATCH, "x")]).unwrap_err();
        assert_eq!(err, BundleError::Reserved(FILES_BATCH.into()));
    }

    #[test]
    fn batch_queries_round_trip_as_ranges() {
        let v = "ab".repeat(32);
        let q = batch_query(&v, &[0, 1, 2, 3, 7, 9, 10, 11, 12, 40]);
        assert_eq!(q, format!("version={v}&files=0-3,7,9-12,40"));
        assert_eq!(parse_batch_query(&q, 41), Ok((v.clone(), vec![0, 1, 2, 3, 7, 9, 10, 11, 12, 40])));
        assert_eq!(parse_batch_query(&format!("files=5&version={v}"), 6), Ok((v, vec![5])));
    }

    #[test]
    fn hostile_batch_queries_are_refused() {
        let v = "ab".repeat(32);
        let all = format!("version={v}&files=0-{}", MAX_BATCH_FILES - 1);
        assert!(parse_batch_query(&all, MAX_BATCH_FILES).is_ok());
        for bad in [
            String::new(),
            format!("version={v}"),
            "files=0".to_string(),
            format!("version={}&files=0", "AB".repeat(32)),
            format!("version={v}&files=0&files=1"),
            format!("version={v}&files=0&x=1"),
            format!("version={v}&files=10"),
            format!("version={v}&files=3,3"),
            format!("version={v}&files=3,1"),
            format!("version={v}&files=2-4,4"),
            format!("version={v}&files=4-2"),
            format!("version={v}&files=0,,1"),
            format!("version={v}&files=-1"),
            format!("version={v}&files=+1"),
            format!("version={v}&files=99999999999999999999"),
            format!("version={v}&files=0-{MAX_BATCH_FILES}"),
        ] {
            let count = if bad.contains(&MAX_BATCH_FILES.to_string()) { MAX_BATCH_FILES + 1 } else { 10 };
            assert!(parse_batch_query(&bad, count).is_err(), "{bad}");
        }
    }
}
