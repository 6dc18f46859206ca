//! The store's state document (`stead/state.bin`, or `state` in IndexedDB): the active
//! and pending manifests, the meta and the OPFS store's packs (where each stored content
//! is, see [`crate::pack`]), in one compact binary file.
//!
//! One document because a cold start's first answer waits for it: a single read costs one
//! handle look-up, one `File` and one body, where three documents cost three of each in
//! flight against each other. Binary because decoding it is a walk over bytes inside
//! wasm; the same manifest as JSON crossed into JavaScript once per field (about 1 ms for
//! 124 files on this machine, growing with the site). Writing it is one atomic
//! replacement, so switching versions (pending becomes active) is one write too.
//!
//! Layout, little-endian; a string is a `u32` byte length then UTF-8, an absent optional
//! string has length `u32::MAX`:
//!
//! ```text
//! "stead-state\0" 2u32                     magic and layout version
//! f64 last_update_check (NaN: never)  str? last_check_result  str? last_error
//! u8 has_active   [manifest]
//! u8 has_pending  [manifest]
//! u32 packs  packs × (str name, u64 size, u32 count, count × ([u8; 32] sha256, u64 offset, u64 size))
//! manifest: u32 format, str version, str entry, u32 count,
//!           count × (str path, [u8; 32] sha256, u64 size, str mime, u8 immutable)
//! ```
//!
//! Layout 1 (before packs) ends after the pending version; it reads as no packs. The
//! packs are here, not in files of their own, because a cold start reads this document
//! anyway: where a content is costs it no other read.
//!
//! A stored state was written by this worker from checked manifests; reading it checks the
//! layout strictly (lengths, UTF-8, nothing left over) and each manifest's shape, so a
//! damaged file is an error, never a wrong answer.

use std::rc::Rc;

use stead_core::bundle::{BundleError, BundleFile, BundleManifest};

use crate::store::Meta;

const MAGIC: &[u8; 12] = b"stead-state\0";
const LAYOUT: u32 = 2;
const ABSENT: u32 = u32::MAX;

/// The active and pending versions, the meta and the packs, as a store keeps them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Versions {
    pub active: Option<Rc<BundleManifest>>,
    pub pending: Option<Rc<BundleManifest>>,
    pub meta: Meta,
    /// The OPFS store's packs, in the order written: a content stored twice is served
    /// from the first.
    pub packs: Vec<Pack>,
}

/// A pack: contents written back to back in one OPFS file, `<name>.pack`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pack {
    pub name: String,
    pub size: u64,
    pub entries: Rc<[Entry]>,
}

/// One content of a pack: SHA-256 (hex), offset, size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sha256: String,
    pub offset: u64,
    pub size: u64,
}

impl Versions {
    /// Where a content is: its pack and its entry there.
    pub fn find(&self, sha256: &str) -> Option<(&Pack, &Entry)> {
        self.packs.iter().find_map(|p| p.entries.iter().find(|e| e.sha256 == sha256).map(|e| (p, e)))
    }
}

pub fn encode(v: &Versions) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + [&v.active, &v.pending].iter().filter_map(|m| m.as_ref()).map(|m| m.files.len() * 128).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&LAYOUT.to_le_bytes());
    out.extend_from_slice(&v.meta.last_update_check.unwrap_or(f64::NAN).to_le_bytes());
    put_opt_str(&mut out, v.meta.last_check_result.as_deref());
    put_opt_str(&mut out, v.meta.last_error.as_deref());
    for m in [&v.active, &v.pending] {
        match m {
            None => out.push(0),
            Some(m) => {
                out.push(1);
                put_manifest(&mut out, m);
            }
        }
    }
    out.extend_from_slice(&(v.packs.len() as u32).to_le_bytes());
    for p in &v.packs {
        put_str(&mut out, &p.name);
        out.extend_from_slice(&p.size.to_le_bytes());
        out.extend_from_slice(&(p.entries.len() as u32).to_le_bytes());
        for e in p.entries.iter() {
            out.extend_from_slice(&hex_to_bytes(&e.sha256));
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.size.to_le_bytes());
        }
    }
    out
}

pub fn decode(bytes: &[u8]) -> Result<Versions, BundleError> {
    let versions = read(bytes).map_err(|why| BundleError::Json(why.to_owned()))?;
    for m in versions.active.iter().chain(&versions.pending) {
        m.check_shape()?;
    }
    Ok(versions)
}

/// The layout's reading; what is wrong with it, as a reason.
type Read<T> = Result<T, &'static str>;

fn read(bytes: &[u8]) -> Read<Versions> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(MAGIC.len())? != MAGIC {
        return Err("not a Stead state document");
    }
    let layout = r.u32()?;
    if !(1..=LAYOUT).contains(&layout) {
        return Err("a Stead state document of a newer layout");
    }
    let check = f64::from_le_bytes(r.array()?);
    let meta = Meta { last_update_check: (!check.is_nan()).then_some(check), last_check_result: r.opt_str()?, last_error: r.opt_str()? };
    let active = r.opt_manifest()?;
    let pending = r.opt_manifest()?;
    let packs = if layout == 1 { Vec::new() } else { r.packs()? };
    if r.at != bytes.len() {
        return Err("bytes left over after the packs");
    }
    Ok(Versions { active, pending, meta, packs })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Paths, hashes and MIME types are far below 4 GiB; a longer string cannot be built
    // by a manifest that passed `check_shape` in a wasm32 worker.
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_str(out, s),
        None => out.extend_from_slice(&ABSENT.to_le_bytes()),
    }
}

fn put_manifest(out: &mut Vec<u8>, m: &BundleManifest) {
    out.extend_from_slice(&m.format.to_le_bytes());
    put_str(out, &m.version);
    put_str(out, &m.entry);
    out.extend_from_slice(&(m.files.len() as u32).to_le_bytes());
    for f in &m.files {
        put_str(out, &f.path);
        out.extend_from_slice(&hex_to_bytes(&f.sha256));
        out.extend_from_slice(&f.size.to_le_bytes());
        put_str(out, &f.mime);
        out.push(u8::from(f.immutable));
    }
}

/// A checked manifest's hash is 64 lowercase hex digits; anything else would not survive
/// `check_shape`, so it is stored as zeros and the read refuses it.
fn hex_to_bytes(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).map_or([0; 32], |()| out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Read<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or("it ends early")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Read<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Read<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn str_of(&mut self, len: u32) -> Read<String> {
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8")
    }

    fn str(&mut self) -> Read<String> {
        let len = self.u32()?;
        self.str_of(len)
    }

    fn opt_str(&mut self) -> Read<Option<String>> {
        match self.u32()? {
            ABSENT => Ok(None),
            len => self.str_of(len).map(Some),
        }
    }

    fn opt_manifest(&mut self) -> Read<Option<Rc<BundleManifest>>> {
        match self.take(1)?[0] {
            0 => Ok(None),
            1 => self.manifest().map(|m| Some(Rc::new(m))),
            _ => Err("a version flag is neither 0 nor 1"),
        }
    }

    fn u64(&mut self) -> Read<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items each at least `min` bytes long: one past what is left is damage,
    /// and must not reserve memory for it.
    fn count(&mut self, min: usize) -> Read<usize> {
        let count = self.u32()? as usize;
        if count > (self.bytes.len() - self.at) / min {
            return Err("more items than bytes");
        }
        Ok(count)
    }

    fn packs(&mut self) -> Read<Vec<Pack>> {
        let mut packs = Vec::with_capacity(self.count(16)?);
        for _ in 0..packs.capacity() {
            let name = self.str()?;
            let size = self.u64()?;
            let mut entries = Vec::with_capacity(self.count(48)?);
            for _ in 0..entries.capacity() {
                let sha256 = hex::encode(self.array::<32>()?);
                let (offset, len) = (self.u64()?, self.u64()?);
                if offset.checked_add(len).is_none_or(|end| end > size) {
                    return Err("a content lies outside its pack");
                }
                entries.push(Entry { sha256, offset, size: len });
            }
            packs.push(Pack { name, size, entries: entries.into() });
        }
        Ok(packs)
    }

    fn manifest(&mut self) -> Read<BundleManifest> {
        let format = self.u32()?;
        let version = self.str()?;
        let entry = self.str()?;
        let count = self.u32()? as usize;
        // Each file takes at least 49 bytes: a count past what is left is damage, and
        // must not reserve memory for it.
        if count > (self.bytes.len() - self.at) / 49 {
            return Err("more files than bytes");
        }
        let mut files = Vec::with_capacity(count);
        for _ in 0..count {
            let path = self.str()?;
            let sha256 = self.array::<32>()?;
            if sha256 == [0; 32] {
                return Err("a file has no hash");
            }
            let size = u64::from_le_bytes(self.array()?);
            let mime = self.str()?;
            let immutable = match self.take(1)?[0] {
                0 => false,
                1 => true,
                _ => return Err("a file's immutable flag is neither 0 nor 1"),
            };
            files.push(BundleFile { path, sha256: hex::encode(sha256), size, mime, immutable });
        }
        Ok(BundleManifest { format, version, entry, files })
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use stead_core::bundle::{BundleFile, BundleManifest, sha256_hex};
    use wasm_bindgen_test::wasm_bindgen_test;

    use super::{Entry, Pack, Versions, decode, encode};
    use crate::store::Meta;

    wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_service_worker);

    fn manifest(body: &str) -> BundleManifest {
        let file = |path: &str, body: &str, immutable| BundleFile {
            path: path.into(),
            sha256: sha256_hex(body.as_bytes()),
            size: body.len() as u64,
            mime: "text/html; charset=utf-8".into(),
            immutable,
        };
        BundleManifest::new("index.html", vec![file("index.html", body, false), file("a b/ü-0123456789ab.txt", "é", true)]).unwrap()
    }

    fn full() -> Versions {
        Versions {
            active: Some(Rc::new(manifest("<h1>one</h1>"))),
            pending: Some(Rc::new(manifest("<h1>two</h1>"))),
            meta: Meta { last_update_check: Some(1_764_000_000_123.0), last_check_result: Some("downloaded x".into()), last_error: None },
            packs: vec![pack("18f3a2b4c5d-0000abcd", &[(1, 0, 10), (2, 10, 0), (3, 10, 5)]), pack("18f3a2b4c5e-00000001", &[(4, 0, 7)])],
        }
    }

    fn pack(name: &str, entries: &[(u8, u64, u64)]) -> Pack {
        let entries: Vec<Entry> = entries.iter().map(|&(fill, offset, size)| Entry { sha256: hex::encode([fill; 32]), offset, size }).collect();
        Pack { name: name.into(), size: entries.iter().map(|e| e.offset + e.size).max().unwrap_or(0), entries: entries.into() }
    }

    #[wasm_bindgen_test]
    fn what_is_written_reads_back_the_same() {
        for v in [full(), Versions::default(), Versions { pending: None, ..full() }, Versions { active: None, meta: Meta::default(), packs: vec![], ..full() }] {
            assert_eq!(decode(&encode(&v)).unwrap(), v);
        }
        let m = Meta { last_update_check: None, last_check_result: Some(String::new()), last_error: Some("offline: ✗".into()) };
        assert_eq!(decode(&encode(&Versions { meta: m.clone(), ..Versions::default() })).unwrap().meta, m);
    }

    #[wasm_bindgen_test]
    fn a_damaged_document_is_an_error_at_every_length_and_byte() {
        let good = encode(&full());
        // Cut anywhere: never a panic, never a state.
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err(), "cut at {len}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer).unwrap_err().to_string().contains("left over"));
        // Every byte changed in turn: an error, or (a byte of a size, a hash or a string's
        // text) a state that still passes every check. Never a panic.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x5a;
            let _ = decode(&bad);
        }
        // A path that escapes the bundle is refused even with a valid layout.
        let mut evil = full();
        let mut m = (*evil.active.take().unwrap()).clone();
        m.files[0].path = "../../etc/passwd".into();
        evil.active = Some(Rc::new(m));
        assert!(decode(&encode(&evil)).is_err());
        // A content that would read past its pack's end.
        let mut outside = full();
        outside.packs[0].size = 14;
        assert!(decode(&encode(&outside)).unwrap_err().to_string().contains("outside its pack"));
        // A huge file count does not allocate for it.
        let mut huge = encode(&Versions { active: Some(Rc::new(manifest("x"))), ..Versions::default() });
        let count_at = huge.len() - count_offset_from_end(&manifest("x"));
        huge[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).unwrap_err().to_string().contains("more files than bytes"));
    }

    /// Where the file count of the last manifest in a document starts, counted from the
    /// end, for a document with no pending version and no packs.
    fn count_offset_from_end(m: &BundleManifest) -> usize {
        let files: usize = m.files.iter().map(|f| 4 + f.path.len() + 32 + 8 + 4 + f.mime.len() + 1).sum();
        1 + files + 4 + 4
    }

    /// A document an older worker wrote (layout 1: no packs) reads as no packs.
    #[wasm_bindgen_test]
    fn a_layout_1_document_reads_with_no_packs() {
        let v = Versions { packs: vec![], ..full() };
        let mut old = encode(&v);
        old.truncate(old.len() - 4);
        old[12..16].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(decode(&old).unwrap(), v);
        let mut newer = encode(&v);
        newer[12..16].copy_from_slice(&3u32.to_le_bytes());
        assert!(decode(&newer).unwrap_err().to_string().contains("newer layout"));
    }
}
