//! End-to-end encryption of payloads and the wrapping of a space key for a new device.
//!
//! A payload is `nonce (24) ‖ XChaCha20-Poly1305(space key, nonce, aad, packed batch)`, where
//! the nonce's first 8 bytes name the key ([`SpaceKey::id`]; the other 16 are random), the
//! associated data binds it to its entry's (space, replica, seq), and the packed batch
//! is the encoded ops compressed with DEFLATE (when that helps) and zero-padded to a Padmé
//! length, so the ciphertext length reveals only a coarse size class. The server never
//! holds the space key: a new device receives it wrapped to its X25519 public key
//! ([`wrap_space_key`]) inside the membership event that adds it.
//!
//! A space has a key per epoch: removing a member rotates it (see
//! [`crate::membership`]), and each new key carries the one before it sealed under it
//! ([`seal_previous_key`]), so whoever holds the newest key can read the whole history
//! while a removed device, holding only older keys, cannot read what comes after. A
//! [`Keyring`] is what one device holds: every key it can reach, and the current one.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::ids::{ReplicaId, SpaceId};

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Raw DEFLATE (RFC 1951), used when it makes a batch smaller: the ops batch packs its
/// numbers into bits already, so this pays for batches of text.
const DEFLATE_LEVEL: u8 = 6;

/// Bytes of a key id: the leading bytes of every nonce sealed under that key.
pub const KEY_ID_LEN: usize = 8;
/// A space key wrapped to a device: ephemeral X25519 key, nonce, key, tag.
pub const WRAPPED_KEY_LEN: usize = 32 + NONCE_LEN + 32 + TAG_LEN;
/// A previous space key sealed under the next one: nonce, key, tag.
pub const SEALED_KEY_LEN: usize = NONCE_LEN + 32 + TAG_LEN;

/// The symmetric key of a space, known only to member devices.
#[derive(Clone, PartialEq, Eq)]
pub struct SpaceKey(pub [u8; 32]);

impl SpaceKey {
    /// A public name for the key, which reveals nothing of it: the first bytes of its
    /// SHA-256 under a domain of their own. Nonces start with it, so a reader knows which
    /// of its keys opens a payload; the membership log names each rotation's key by it.
    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        let h = Sha256::new().chain_update(b"stead-key-id-v1\0").chain_update(self.0).finalize();
        h[..KEY_ID_LEN].try_into().expect("a SHA-256 is longer")
    }

    /// `random` with its leading bytes replaced by this key's id.
    fn nonce(&self, mut random: [u8; NONCE_LEN]) -> [u8; NONCE_LEN] {
        random[..KEY_ID_LEN].copy_from_slice(&self.id());
        random
    }
}

impl std::fmt::Debug for SpaceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpaceKey(..)")
    }
}

fn aad(space: SpaceId, replica: ReplicaId, seq: u64) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..16].copy_from_slice(space.as_bytes());
    out[16..32].copy_from_slice(replica.as_bytes());
    out[32..].copy_from_slice(&seq.to_le_bytes());
    out
}

/// Encrypts a packed batch for entry (space, replica, seq). The nonce's first
/// [`KEY_ID_LEN`] bytes are replaced by the key's id: 128 random bits stay, ample for
/// random nonces under one key.
pub fn seal(
    key: &SpaceKey,
    nonce: [u8; NONCE_LEN],
    space: SpaceId,
    replica: ReplicaId,
    seq: u64,
    packed: &[u8],
) -> Vec<u8> {
    let nonce = key.nonce(nonce);
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let ad = aad(space, replica, seq);
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: packed, aad: &ad })
        .expect("xchacha20poly1305 encryption cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Decrypts a payload sealed by [`seal`] for the same (space, replica, seq).
pub fn open(
    key: &SpaceKey,
    space: SpaceId,
    replica: ReplicaId,
    seq: u64,
    payload: &[u8],
) -> Result<Vec<u8>> {
    let fail = || Error::Decrypt { replica, seq };
    if payload.len() < NONCE_LEN + TAG_LEN {
        return Err(fail());
    }
    let (nonce, ct) = payload.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad(space, replica, seq) })
        .map_err(|_| fail())
}

/// Padmé: the padded length leaks O(log log n) bits of the true length, overhead ≤ 12%.
pub fn padme(len: usize) -> usize {
    if len < 2 {
        return len;
    }
    let e = usize::BITS - 1 - len.leading_zeros();
    let s = u32::BITS - 1 - e.leading_zeros() + 1;
    let last_bits = e - s;
    let mask = (1usize << last_bits) - 1;
    (len + mask) & !mask
}

/// Compresses (when it pays) and pads an encoded ops batch:
/// `varint (raw length × 2 + deflated) ‖ [varint body length, when deflated] ‖ body ‖ zeros`.
pub fn pack(batch: &[u8]) -> Vec<u8> {
    let compressed = miniz_oxide::deflate::compress_to_vec(batch, DEFLATE_LEVEL);
    let deflated = compressed.len() < batch.len();
    let body = if deflated { compressed.as_slice() } else { batch };
    let mut w = Writer::with_capacity(body.len() + body.len() / 8 + 16);
    w.varint(((batch.len() as u64) << 1) | deflated as u64);
    if deflated {
        w.varint(body.len() as u64);
    }
    w.fixed(body);
    let padded = padme(w.buf.len());
    w.buf.resize(padded, 0);
    w.finish()
}

/// Reverses [`pack`]; refuses batches over `max_len` bytes before decompressing them.
pub fn unpack(packed: &[u8], max_len: usize) -> Result<Vec<u8>> {
    let mut r = Reader::new(packed, "packed batch");
    let head = r.varint()?;
    let (raw_len, deflated) = (head >> 1, head & 1 == 1);
    if raw_len > max_len as u64 {
        return Err(Error::TooLarge { what: "ops batch", size: raw_len as usize, limit: max_len });
    }
    let raw_len = raw_len as usize;
    let body_len = if deflated { r.len(1)? } else { raw_len };
    let body = r.take(body_len)?;
    let unpadded = r.position();
    let padding = r.take(r.remaining())?;
    if padding.iter().any(|&b| b != 0) || packed.len() != padme(unpadded) {
        return Err(r.err("bad padding"));
    }
    if !deflated {
        return Ok(body.to_vec());
    }
    let out = miniz_oxide::inflate::decompress_to_vec_with_limit(body, raw_len)
        .map_err(|_| r.err("deflate data is corrupt"))?;
    if out.len() != raw_len {
        return Err(r.err("deflate data has the wrong length"));
    }
    Ok(out)
}

/// A device's X25519 key pair for receiving wrapped space keys.
pub fn agreement_public(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

/// Whether an X25519 public key is a point of small order (or an encoding of one): an
/// exchange with it gives the all-zero secret whatever the other side's secret is, so a
/// space key wrapped to it would be open to anyone. No secret makes such a key.
pub fn is_weak_agreement_key(public: &[u8; 32]) -> bool {
    (MontgomeryPoint(*public) * Scalar::from(8u8)).is_identity()
}

fn wrapping_key(shared: &[u8; 32], eph: &[u8; 32], recipient: &[u8; 32], space: SpaceId) -> SpaceKey {
    let mut h = Sha256::new();
    h.update(b"stead-wrap-v1\0");
    h.update(shared);
    h.update(eph);
    h.update(recipient);
    h.update(space.as_bytes());
    SpaceKey(h.finalize().into())
}

/// Wraps the space key to a device's X25519 public key: `eph_pub (32) ‖ nonce ‖ ciphertext`.
/// `ephemeral` and `nonce` must be fresh random bytes. Refuses a recipient key of small
/// order, with which the exchange gives the all-zero secret: the wrap would open for all.
pub fn wrap_space_key(
    key: &SpaceKey,
    space: SpaceId,
    recipient: &[u8; 32],
    ephemeral: [u8; 32],
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>> {
    let eph = StaticSecret::from(ephemeral);
    let eph_pub = PublicKey::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&PublicKey::from(*recipient));
    if !shared.was_contributory() {
        return Err(Error::WeakKey { what: "the recipient's agreement key" });
    }
    let kek = wrapping_key(shared.as_bytes(), &eph_pub, recipient, space);
    let cipher = XChaCha20Poly1305::new((&kek.0).into());
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: &key.0, aad: space.as_bytes() })
        .expect("xchacha20poly1305 encryption cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(32 + NONCE_LEN + ct.len());
    out.extend_from_slice(&eph_pub);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Unwraps a space key with the device's X25519 secret. Refuses a wrap whose ephemeral
/// key is of small order: its wrapping key is one anyone can compute.
pub fn unwrap_space_key(wrapped: &[u8], space: SpaceId, secret: &[u8; 32]) -> Result<SpaceKey> {
    let bad = Error::Decode { what: "wrapped space key", reason: "does not decrypt" };
    if wrapped.len() != 32 + NONCE_LEN + 32 + TAG_LEN {
        return Err(bad);
    }
    let eph_pub: [u8; 32] = wrapped[..32].try_into().expect("length checked");
    let nonce = &wrapped[32..32 + NONCE_LEN];
    let secret = StaticSecret::from(*secret);
    let recipient = PublicKey::from(&secret).to_bytes();
    let shared = secret.diffie_hellman(&PublicKey::from(eph_pub));
    if !shared.was_contributory() {
        return Err(Error::WeakKey { what: "the wrapped key's ephemeral key" });
    }
    let kek = wrapping_key(shared.as_bytes(), &eph_pub, &recipient, space);
    let cipher = XChaCha20Poly1305::new((&kek.0).into());
    let plain = cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: &wrapped[32 + NONCE_LEN..], aad: space.as_bytes() })
        .map_err(|_| bad.clone())?;
    Ok(SpaceKey(plain.try_into().map_err(|_| bad)?))
}

/// The associated data of a previous key sealed under the next: a domain, the space and
/// the next key's id, so a sealed key cannot be moved to another space or link.
fn chain_aad(space: SpaceId, next: &SpaceKey) -> Vec<u8> {
    let mut ad = b"stead-key-chain-v1\0".to_vec();
    ad.extend_from_slice(space.as_bytes());
    ad.extend_from_slice(&next.id());
    ad
}

/// Seals `previous` under `next` ([`SEALED_KEY_LEN`] bytes): a rotation carries this, so a
/// holder of the newest key walks back to every older one.
pub fn seal_previous_key(next: &SpaceKey, previous: &SpaceKey, space: SpaceId, nonce: [u8; NONCE_LEN]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new((&next.0).into());
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: &previous.0, aad: &chain_aad(space, next) })
        .expect("xchacha20poly1305 encryption cannot fail for in-memory buffers");
    [&nonce[..], &ct].concat()
}

/// Opens what [`seal_previous_key`] sealed.
pub fn open_previous_key(next: &SpaceKey, sealed: &[u8], space: SpaceId) -> Result<SpaceKey> {
    let bad = Error::Decode { what: "sealed previous key", reason: "does not decrypt under the next key" };
    if sealed.len() != SEALED_KEY_LEN {
        return Err(bad);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let plain = XChaCha20Poly1305::new((&next.0).into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &chain_aad(space, next) })
        .map_err(|_| bad.clone())?;
    Ok(SpaceKey(plain.try_into().map_err(|_| bad)?))
}

/// The space keys one device holds: every epoch's key it can reach, and the one it
/// writes with. Built by [`crate::membership::Membership::keyring`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<SpaceKey>,
    current: Option<usize>,
}

impl Keyring {
    /// A ring of one key, which is also the current one (a space never rotated).
    pub fn single(key: SpaceKey) -> Keyring {
        Keyring { keys: vec![key], current: Some(0) }
    }

    /// Adds a key (once); returns its index.
    pub fn insert(&mut self, key: SpaceKey) -> usize {
        match self.keys.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                self.keys.push(key);
                self.keys.len() - 1
            }
        }
    }

    pub fn set_current(&mut self, key: SpaceKey) {
        let i = self.insert(key);
        self.current = Some(i);
    }

    pub fn clear_current(&mut self) {
        self.current = None;
    }

    pub fn key(&self, i: usize) -> &SpaceKey {
        &self.keys[i]
    }

    /// Every key, in the order they were added.
    pub fn keys(&self) -> &[SpaceKey] {
        &self.keys
    }

    /// The key new entries and blobs are sealed with; `None` when this device does not
    /// hold the space's newest key (it was removed, or has not seen the rotation's wrap).
    pub fn current(&self) -> Option<&SpaceKey> {
        self.current.map(|i| &self.keys[i])
    }

    pub fn get(&self, id: &[u8; KEY_ID_LEN]) -> Option<&SpaceKey> {
        self.keys.iter().find(|k| k.id() == *id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys to try for something sealed with `nonce`: the one its id names first, then
    /// the others (payloads sealed before key ids began with 8 random bytes).
    fn candidates<'a>(&'a self, sealed: &'a [u8]) -> impl Iterator<Item = &'a SpaceKey> + 'a {
        let id: Option<[u8; KEY_ID_LEN]> = sealed.get(..KEY_ID_LEN).and_then(|b| b.try_into().ok());
        let named = id.and_then(|id| self.get(&id));
        named.into_iter().chain(self.keys.iter().filter(move |k| Some(*k) != named))
    }

    /// Whether the key a sealed payload names is one this ring holds.
    pub fn holds_key_of(&self, sealed: &[u8]) -> bool {
        sealed.get(..KEY_ID_LEN).and_then(|b| <[u8; KEY_ID_LEN]>::try_from(b).ok()).is_some_and(|id| self.get(&id).is_some())
    }

    /// [`open`] with whichever key of the ring opens the payload.
    pub fn open(&self, space: SpaceId, replica: ReplicaId, seq: u64, payload: &[u8]) -> Result<Vec<u8>> {
        self.candidates(payload)
            .find_map(|k| open(k, space, replica, seq, payload).ok())
            .ok_or(Error::Decrypt { replica, seq })
    }

    /// [`open_blob`] with whichever key of the ring opens the blob.
    pub fn open_blob(&self, space: SpaceId, sealed: &[u8]) -> Result<Vec<u8>> {
        self.candidates(sealed)
            .find_map(|k| open_blob(k, space, sealed).ok())
            .ok_or(Error::Decode { what: "blob", reason: "does not decrypt under any key this device holds" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn padme_sizes() {
        let check = |len: usize, expect: usize| assert_eq!(padme(len), expect, "padme({len})");
        check(0, 0);
        check(9, 10);
        check(100, 104);
        check(1000, 1024);
        check(1025, 1088);
        for n in 1..5000 {
            assert!(padme(n) >= n && padme(n) <= n + n / 8 + 1, "padme({n}) = {}", padme(n));
        }
    }

    #[test]
    fn wrapped_key_opens_only_for_its_device_and_space() {
        let key = SpaceKey([7; 32]);
        let space = SpaceId([1; 16]);
        let device_secret = [9u8; 32];
        let wrapped = wrap_space_key(&key, space, &agreement_public(&device_secret), [3; 32], [4; 24]).unwrap();
        assert_eq!(unwrap_space_key(&wrapped, space, &device_secret).unwrap(), key);
        assert!(unwrap_space_key(&wrapped, space, &[8u8; 32]).is_err());
        assert!(unwrap_space_key(&wrapped, SpaceId([2; 16]), &device_secret).is_err());
    }

    /// Every X25519 public key of small order, as RFC 7748 implementations list them (the
    /// u of the points of order 1, 2, 4 and 8, and u = p − 1, p, p + 1), with and without
    /// the top bit, which X25519 ignores.
    fn weak_agreement_keys() -> Vec<[u8; 32]> {
        let mut out: Vec<[u8; 32]> = curve25519_dalek::constants::EIGHT_TORSION
            .iter()
            .map(|p| p.to_montgomery().to_bytes())
            .collect();
        for low in [0xec, 0xed, 0xee] {
            let mut b = [0xff; 32];
            b[0] = low;
            b[31] = 0x7f;
            out.push(b);
        }
        for b in out.clone() {
            let mut top = b;
            top[31] |= 0x80;
            out.push(top);
        }
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn weak_agreement_keys_are_found() {
        let weak = weak_agreement_keys();
        assert_eq!(weak.len(), 14, "0, 1, two of order 8, p − 1, p, p + 1, each with the top bit or not");
        for key in &weak {
            assert!(is_weak_agreement_key(key), "{}", hex::encode(key));
            // The exchange with it is not contributory, whatever the secret.
            let shared = StaticSecret::from([0x5a; 32]).diffie_hellman(&PublicKey::from(*key));
            assert!(!shared.was_contributory());
        }
        for n in 0..50u8 {
            assert!(!is_weak_agreement_key(&agreement_public(&[n; 32])));
        }
    }

    #[test]
    fn no_wrap_to_or_from_a_small_order_key() {
        let key = SpaceKey([7; 32]);
        let space = SpaceId([1; 16]);
        let device_secret = [9u8; 32];
        let recipient = agreement_public(&device_secret);
        for weak in weak_agreement_keys() {
            // To: every secret agrees with it on zero, so the wrap would open for anyone.
            let err = wrap_space_key(&key, space, &weak, [3; 32], [4; 24]).unwrap_err();
            assert_eq!(err, Error::WeakKey { what: "the recipient's agreement key" });
            // From: a wrap whose ephemeral key is of small order, made with the all-zero
            // secret anyone knows, is refused rather than opened.
            let kek = wrapping_key(&[0; 32], &weak, &recipient, space);
            let ct = XChaCha20Poly1305::new((&kek.0).into())
                .encrypt(XNonce::from_slice(&[4; 24]), Payload { msg: &key.0, aad: space.as_bytes() })
                .unwrap();
            let forged = [&weak[..], &[4; 24], &ct].concat();
            let err = unwrap_space_key(&forged, space, &device_secret).unwrap_err();
            assert_eq!(err, Error::WeakKey { what: "the wrapped key's ephemeral key" }, "{}", hex::encode(weak));
        }
    }

    #[test]
    fn payload_is_bound_to_its_entry() {
        let key = SpaceKey([7; 32]);
        let (s, r) = (SpaceId([1; 16]), ReplicaId([2; 16]));
        let sealed = seal(&key, [5; 24], s, r, 3, b"hello");
        assert_eq!(open(&key, s, r, 3, &sealed).unwrap(), b"hello");
        assert!(open(&key, s, r, 4, &sealed).is_err());
        assert!(open(&SpaceKey([8; 32]), s, r, 3, &sealed).is_err());
    }

    proptest! {
        #[test]
        fn pack_round_trips(data in proptest::collection::vec(0u8..4, 0..3000)) {
            let packed = pack(&data);
            prop_assert_eq!(packed.len(), padme(packed.len()));
            prop_assert_eq!(unpack(&packed, 1 << 20).unwrap(), data);
        }
    }
}

/// The associated data of a blob: a domain of its own, bound to the space.
fn blob_aad(space: SpaceId) -> Vec<u8> {
    let mut ad = b"stead-blob-v1\0".to_vec();
    ad.extend_from_slice(space.as_bytes());
    ad
}

/// Encrypts a blob's content for `space`: `nonce ‖ ciphertext ‖ tag`. Blobs are addressed
/// by the SHA-256 of this sealed form, so the server stores and checks only ciphertext.
pub fn seal_blob(key: &SpaceKey, nonce: [u8; NONCE_LEN], space: SpaceId, content: &[u8]) -> Vec<u8> {
    let nonce = key.nonce(nonce);
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: content, aad: &blob_aad(space) })
        .expect("xchacha20poly1305 encryption cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Decrypts a blob sealed by [`seal_blob`] for the same space.
pub fn open_blob(key: &SpaceKey, space: SpaceId, sealed: &[u8]) -> Result<Vec<u8>> {
    let fail = || Error::Decode { what: "blob", reason: "does not decrypt under the space key" };
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(fail());
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &blob_aad(space) }).map_err(|_| fail())
}

#[cfg(test)]
mod blob_tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_blob_opens_only_under_its_space_and_key_and_unaltered() {
        let key = SpaceKey([7; 32]);
        let space = SpaceId([1; 16]);
        let sealed = seal_blob(&key, [3; NONCE_LEN], space, b"picture bytes");
        assert_eq!(open_blob(&key, space, &sealed).unwrap(), b"picture bytes");
        assert!(open_blob(&SpaceKey([8; 32]), space, &sealed).is_err());
        assert!(open_blob(&key, SpaceId([2; 16]), &sealed).is_err());
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(open_blob(&key, space, &bad).is_err());
    }
}
