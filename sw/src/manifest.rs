//! Bundle manifests read and written with the browser's JSON (see
//! [`stead_sw_common::js`]), and checked as stead-core checks them: a downloaded
//! manifest fully, its version hashed with the browser's SHA-256 (the serving module
//! links no hash function); a stored one, which was checked when it was downloaded, for
//! its shape.

use stead_core::bundle::{BundleError, BundleFile, BundleManifest, version_input};
use stead_sw_common::js;
use wasm_bindgen::JsValue;

use crate::SwError;

/// Parses a manifest from the server and checks everything, its version included.
pub async fn parse_downloaded(text: &str) -> Result<BundleManifest, SwError> {
    let manifest = parse_stored(text)?;
    let computed = crate::store::sha256_hex(&js_sys::Uint8Array::from(version_input(&manifest.files).as_slice())).await?;
    if computed != manifest.version {
        return Err(BundleError::VersionMismatch { declared: manifest.version, computed }.into());
    }
    Ok(manifest)
}

/// Parses a manifest this worker stored, checking its shape
/// ([`BundleManifest::check_shape`]): it was fully checked when it was downloaded.
pub fn parse_stored(text: &str) -> Result<BundleManifest, BundleError> {
    let value = js::parse(text).map_err(BundleError::Json)?;
    let manifest = from_js(&value)?;
    manifest.check_shape()?;
    Ok(manifest)
}

fn from_js(value: &JsValue) -> Result<BundleManifest, BundleError> {
    let missing = |what: &str| BundleError::Json(format!("missing or mistyped {what}"));
    let format = js::get_u64(value, "format").and_then(|f| u32::try_from(f).ok()).ok_or_else(|| missing("format"))?;
    let version = js::get_str(value, "version").ok_or_else(|| missing("version"))?;
    let entry = js::get_str(value, "entry").ok_or_else(|| missing("entry"))?;
    let files = js::items(&js::get(value, "files")).ok_or_else(|| missing("files"))?;
    let files = files
        .iter()
        .map(|f| {
            Ok(BundleFile {
                path: js::get_str(f, "path").ok_or_else(|| missing("files[].path"))?,
                sha256: js::get_str(f, "sha256").ok_or_else(|| missing("files[].sha256"))?,
                size: js::get_u64(f, "size").ok_or_else(|| missing("files[].size"))?,
                mime: js::get_str(f, "mime").ok_or_else(|| missing("files[].mime"))?,
                immutable: match js::get(f, "immutable") {
                    v if v.is_undefined() => false,
                    v => v.as_bool().ok_or_else(|| missing("files[].immutable"))?,
                },
            })
        })
        .collect::<Result<Vec<_>, BundleError>>()?;
    Ok(BundleManifest { format, version, entry, files })
}

#[cfg(test)]
mod tests {
    use stead_core::bundle::{BundleFile, BundleManifest, sha256_hex};
    use wasm_bindgen_test::wasm_bindgen_test;

    wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_service_worker);

    fn manifest() -> BundleManifest {
        let file = |path: &str, body: &str| BundleFile {
            path: path.into(),
            sha256: sha256_hex(body.as_bytes()),
            size: body.len() as u64,
            mime: "text/plain".into(),
            immutable: path.contains("-0123456789"),
        };
        BundleManifest::new("index.html", vec![file("index.html", "<h1>hi</h1>"), file("app-0123456789ab.js", "x"), file("a b/ü.txt", "é")]).unwrap()
    }

    #[wasm_bindgen_test]
    async fn reads_what_serde_writes_and_writes_what_serde_reads() {
        let m = manifest();
        assert_eq!(super::parse_downloaded(&m.to_json()).await.unwrap(), m);
        assert_eq!(super::parse_stored(&m.to_json()).unwrap(), m);
    }

    #[wasm_bindgen_test]
    async fn refuses_what_serde_refuses() {
        let good = manifest().to_json();
        for (bad, why) in [
            ("{", "JSON"),
            ("[]", "format"),
            (&good.replace("\"format\": 1", "\"format\": 2"), "format 2"),
            (&good.replace("\"size\": 1,", "\"size\": -1,"), "files[].size"),
            (&good.replace("\"size\": 1,", "\"size\": 1.5,"), "files[].size"),
            (&good.replace("\"path\": \"index.html\"", "\"path\": \"index.html/..\""), "clean relative path"),
            (&good.replace("\"size\": 1,", "\"size\": 2,"), "does not match its files"),
        ] {
            assert_ne!(bad, good, "the test changed the manifest: {why}");
            let e = super::parse_downloaded(bad).await.expect_err(why).to_string();
            assert!(e.contains(why), "{why}: {e}");
            assert!(BundleManifest::parse(bad.as_bytes()).is_err(), "serde refuses it too: {why}");
        }
        // A stored manifest was checked when it came: only its shape is checked again.
        assert!(super::parse_stored(&good.replace("\"size\": 1,", "\"size\": 2,")).is_ok());
        assert!(super::parse_stored(&good.replace("\"path\": \"index.html\"", "\"path\": \"index.html/..\"")).is_err());
    }
}
