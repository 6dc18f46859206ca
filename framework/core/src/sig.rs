//! The verification rule of entry signatures, one at a time and in batches.
//!
//! Entries are signed with plain Ed25519 (RFC 8032) and verified with the *cofactored*
//! equation `[8](R − [s]B + [k]A) = 0`, which RFC 8032 (section 5.1.7) allows, rather
//! than ed25519-dalek's cofactorless `R = [s]B − [k]A`. The two agree on every signature
//! an honest signer makes; they differ only on signatures whose `R` carries a small-order
//! component, which only the key's holder can make. The cofactored rule is the one batch
//! verification can follow exactly (the choice ZIP 215 made for Zcash for the same
//! reason): with the cofactorless rule a batch accepts signatures that one-by-one
//! verification refuses, so a server checking in batches could store entries every
//! client then refuses. Here a batch of signatures by one key accepts exactly when every
//! signature in it would (but with probability 2⁻¹²⁸), and costs about a third of
//! checking them one by one: the key's point and the base point each take one scalar
//! multiplication for the whole batch.
//!
//! Both refuse a weak key, a point `A` of small order: `[8][k]A = 0` for every `k`, so
//! under the cofactored rule the signature `R = [s]B` would pass for every message and
//! need no secret. No key pair has such a point (a secret scalar times `B` has the
//! group's large prime order), so the refusal costs honest signers nothing. Keys from the
//! outside are decoded with [`public_key`], which refuses them before they are stored.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha512};

use crate::env::Random;

/// Decodes a signing key from the outside, refusing what no key pair makes: a point of
/// small order (a weak key, see the module doc) and a non-canonical encoding of a point.
/// The error is the reason, for the caller's own error.
pub fn public_key(bytes: &[u8; 32]) -> Result<VerifyingKey, &'static str> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| "bad signing key")?;
    if key.is_weak() {
        return Err("weak signing key");
    }
    if key.to_edwards().compress().as_bytes() != bytes {
        return Err("non-canonical signing key");
    }
    Ok(key)
}

/// The parts of a signature: `R` as sent (it is hashed as sent), `R` as a point, and `s`.
fn parts(sig: &[u8; 64]) -> Option<(&[u8; 32], EdwardsPoint, Scalar)> {
    let r_bytes: &[u8; 32] = sig[..32].try_into().expect("64 = 32 + 32");
    let s_bytes: [u8; 32] = sig[32..].try_into().expect("64 = 32 + 32");
    // `s` must be reduced (below the group order), as RFC 8032 asks; `R` must be a point.
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
    let r = CompressedEdwardsY(*r_bytes).decompress()?;
    Some((r_bytes, r, s))
}

/// `k = SHA-512(R ‖ A ‖ message)`, reduced.
fn challenge(r_bytes: &[u8; 32], key: &VerifyingKey, msg: &[u8]) -> Scalar {
    Scalar::from_hash(Sha512::new().chain_update(r_bytes).chain_update(key.as_bytes()).chain_update(msg))
}

/// Whether `sig` is `key`'s signature of `msg` under the cofactored rule.
pub fn verify(key: &VerifyingKey, msg: &[u8], sig: &[u8; 64]) -> bool {
    if key.is_weak() {
        return false;
    }
    let Some((r_bytes, r, s)) = parts(sig) else { return false };
    let k = challenge(r_bytes, key, msg);
    // [s]B − [k]A
    let expected = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-key.to_edwards(), &s);
    (r - expected).mul_by_cofactor().is_identity()
}

/// Whether every `(msg, sig)` of `items` is `key`'s signature under the cofactored rule,
/// checked as one: `[8](Σ zᵢRᵢ − [Σ zᵢsᵢ]B + [Σ zᵢkᵢ]A) = 0` for random 128-bit `zᵢ`. A
/// `false` says some signature is bad, not which: check them one by one with [`verify`].
pub fn verify_batch(key: &VerifyingKey, items: &[(&[u8], &[u8; 64])], random: &mut dyn Random) -> bool {
    if key.is_weak() {
        return false;
    }
    let mut scalars = Vec::with_capacity(items.len() + 2);
    let mut points = Vec::with_capacity(items.len() + 2);
    let (mut zs, mut zk) = (Scalar::ZERO, Scalar::ZERO);
    // Every weight from one draw: the OS's random source costs a system call per draw.
    let mut weights = vec![0u8; 16 * items.len()];
    random.fill(&mut weights);
    for ((msg, sig), w) in items.iter().zip(weights.chunks_exact(16)) {
        let Some((r_bytes, r, s)) = parts(sig) else { return false };
        let mut z = [0u8; 32];
        z[..16].copy_from_slice(w);
        let z = Scalar::from_bytes_mod_order(z);
        zs += z * s;
        zk += z * challenge(r_bytes, key, msg);
        scalars.push(z);
        points.push(r);
    }
    scalars.push(-zs);
    points.push(ED25519_BASEPOINT_POINT);
    scalars.push(zk);
    points.push(key.to_edwards());
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).mul_by_cofactor().is_identity()
}

/// Batch weights for a verifier with no random source at hand: each is SHA-512 of a
/// secret and of everything in the batch, with a counter, as Ed25519 derives its nonces.
/// Whoever made the batch knows neither the secret nor, so, the weights.
pub struct DerivedWeights {
    seed: [u8; 64],
    counter: u64,
}

impl DerivedWeights {
    /// `secret` is known only to the verifier; `contents` is every part of the batch.
    pub fn new<'a>(secret: &[u8], contents: impl IntoIterator<Item = &'a [u8]>) -> DerivedWeights {
        let mut h = Sha512::new().chain_update(b"stead-batch-weights-v1\0").chain_update(Sha512::digest(secret));
        for part in contents {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        DerivedWeights { seed: h.finalize().into(), counter: 0 }
    }
}

impl Random for DerivedWeights {
    fn fill(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(64) {
            let block = Sha512::new().chain_update(self.seed).chain_update(self.counter.to_le_bytes()).finalize();
            self.counter += 1;
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::scalar::Scalar;
    use ed25519_dalek::{Signer, SigningKey, Verifier};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::{DerivedWeights, challenge, public_key, verify, verify_batch};
    use crate::env::{Random, SeededRandom};

    fn key(rng: &mut SeededRandom) -> SigningKey {
        let mut seed = [0u8; 32];
        rng.fill(&mut seed);
        SigningKey::from_bytes(&seed)
    }

    /// A signature valid under the cofactored rule only: its `R` carries a point of order 8.
    fn torsioned(sk: &SigningKey, msg: &[u8], nonce: u64) -> [u8; 64] {
        let r = Scalar::from(nonce + 7);
        let big_r = (ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[1]).compress();
        let k = challenge(big_r.as_bytes(), &sk.verifying_key(), msg);
        let s = r + k * sk.to_scalar();
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(big_r.as_bytes());
        sig[32..].copy_from_slice(s.as_bytes());
        sig
    }

    #[test]
    fn honest_signatures_pass_and_altered_ones_fail() {
        let mut rng = SeededRandom::new(1);
        let (sk, other) = (key(&mut rng), key(&mut rng));
        for n in 0..20u8 {
            let msg = vec![n; usize::from(n) * 3];
            let sig = sk.sign(&msg).to_bytes();
            assert!(verify(&sk.verifying_key(), &msg, &sig));
            assert!(!verify(&other.verifying_key(), &msg, &sig), "another key");
            assert!(!verify(&sk.verifying_key(), b"other message", &sig), "another message");
            for byte in [0, 31, 32, 63] {
                let mut bad = sig;
                bad[byte] ^= 1;
                assert!(!verify(&sk.verifying_key(), &msg, &bad), "byte {byte} flipped");
            }
        }
        // An unreduced s (s + L) is refused, though it satisfies the equation.
        let msg = b"m";
        let sig = sk.sign(msg).to_bytes();
        let s = Scalar::from_canonical_bytes(sig[32..].try_into().unwrap()).unwrap();
        let l_minus_1 = -Scalar::ONE;
        let mut wide = [0u8; 32];
        let mut carry = 1u16;
        for (i, (a, b)) in s.as_bytes().iter().zip(l_minus_1.as_bytes()).enumerate() {
            let sum = u16::from(*a) + u16::from(*b) + carry;
            wide[i] = sum as u8;
            carry = sum >> 8;
        }
        let mut unreduced = sig;
        unreduced[32..].copy_from_slice(&wide);
        assert!(!verify(&sk.verifying_key(), msg, &unreduced));
    }

    #[test]
    fn a_batch_accepts_exactly_when_each_signature_does() {
        let mut rng = SeededRandom::new(2);
        let sk = key(&mut rng);
        let vk = sk.verifying_key();
        let msgs: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 50]).collect();
        let mut sigs: Vec<[u8; 64]> = msgs.iter().map(|m| sk.sign(m).to_bytes()).collect();
        // Torsioned signatures: refused by ed25519-dalek's cofactorless check, accepted here
        // one by one, and so accepted in a batch too.
        for i in [3, 17] {
            sigs[i] = torsioned(&sk, &msgs[i], i as u64);
            assert!(vk.verify(&msgs[i], &ed25519_dalek::Signature::from_bytes(&sigs[i])).is_err());
            assert!(verify(&vk, &msgs[i], &sigs[i]));
        }
        let items = |sigs: &[[u8; 64]]| -> Vec<(Vec<u8>, [u8; 64])> { msgs.iter().cloned().zip(sigs.iter().copied()).collect() };
        let check = |items: &[(Vec<u8>, [u8; 64])], rng: &mut SeededRandom| {
            let refs: Vec<(&[u8], &[u8; 64])> = items.iter().map(|(m, s)| (m.as_slice(), s)).collect();
            verify_batch(&vk, &refs, rng)
        };
        assert!(check(&items(&sigs), &mut rng));
        for n in [1, 2, 40] {
            assert!(check(&items(&sigs)[..n], &mut rng), "a batch of {n}");
        }
        // One bad signature anywhere fails the batch.
        for i in [0, 3, 39] {
            let mut bad = sigs.clone();
            bad[i][40] ^= 0x10;
            assert!(!verify(&vk, &msgs[i], &bad[i]));
            assert!(!check(&items(&bad), &mut rng), "signature {i} altered");
        }
        // So does another key's signature.
        let mut foreign = sigs.clone();
        foreign[5] = key(&mut rng).sign(&msgs[5]).to_bytes();
        assert!(!check(&items(&foreign), &mut rng));
        // Two errors that cancel out in an unweighted sum do not cancel here: s + d on one
        // and s − d on the other.
        let mut cancel = sigs.clone();
        let d = Scalar::from(12345u64);
        for (i, delta) in [(0, d), (1, -d)] {
            let s = Scalar::from_canonical_bytes(cancel[i][32..].try_into().unwrap()).unwrap() + delta;
            cancel[i][32..].copy_from_slice(s.as_bytes());
        }
        assert!(!check(&items(&cancel), &mut rng));
    }

    /// `p + y` for a small `y`: a non-canonical encoding of the coordinate `y`.
    fn above_p(y: u8) -> [u8; 32] {
        let mut b = [0xff; 32];
        b[0] = 0xed + y;
        b[31] = 0x7f;
        b
    }

    /// Every encoding of a point of small order that decodes: the eight points, with either
    /// sign of x, and y = 0 and y = 1 written as p and p + 1.
    fn weak_encodings() -> Vec<[u8; 32]> {
        let mut out = Vec::new();
        for p in EIGHT_TORSION {
            out.push(p.compress().to_bytes());
        }
        out.extend([above_p(0), above_p(1)]);
        for b in out.clone() {
            let mut flipped = b;
            flipped[31] ^= 0x80;
            out.push(flipped);
        }
        out.retain(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_ok());
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn weak_keys_sign_nothing() {
        let weak = weak_encodings();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(weak.contains(&identity) && weak.contains(&above_p(1)), "the identity, also written as y = p + 1");
        assert!(weak.len() >= 10, "{} encodings", weak.len());
        // Forgeries that need no secret: once `[8]A = 0`, `R = [s]B` passes for any message;
        // here with s = 0 (R the identity) and s = 8.
        let forged = |s: Scalar| {
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice((ED25519_BASEPOINT_POINT * s).compress().as_bytes());
            sig[32..].copy_from_slice(s.as_bytes());
            sig
        };
        let (trivial, eight) = (forged(Scalar::ZERO), forged(Scalar::from(8u8)));
        assert_eq!(trivial[..32], identity);
        let mut rng = SeededRandom::new(3);
        for bytes in &weak {
            let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).unwrap();
            assert!(key.is_weak());
            assert_eq!(public_key(bytes), Err("weak signing key"), "{}", hex::encode(bytes));
            for sig in [trivial, eight] {
                for msg in [&b""[..], b"pay mallory"] {
                    assert!(!verify(&key, msg, &sig), "{} signed {msg:?}", hex::encode(bytes));
                    assert!(!verify_batch(&key, &[(msg, &sig)], &mut rng), "{} signed {msg:?} in a batch", hex::encode(bytes));
                }
            }
            assert!(!verify_batch(&key, &[(b"a", &trivial), (b"b", &eight)], &mut rng));
        }
    }

    #[test]
    fn public_keys_from_the_outside() {
        let mut rng = SeededRandom::new(4);
        for _ in 0..20 {
            let vk = key(&mut rng).verifying_key();
            assert_eq!(public_key(vk.as_bytes()), Ok(vk));
        }
        // Points with y < 19 written as y + p: refused, though not of small order.
        let mut non_canonical = 0;
        for y in 2..19 {
            if ed25519_dalek::VerifyingKey::from_bytes(&above_p(y)).is_ok_and(|k| !k.is_weak()) {
                assert_eq!(public_key(&above_p(y)), Err("non-canonical signing key"), "y = p + {y}");
                non_canonical += 1;
            }
        }
        assert!(non_canonical > 0);
        let mut not_a_point = 0;
        for y in 2..19 {
            if ed25519_dalek::VerifyingKey::from_bytes(&above_p(y)).is_err() {
                assert_eq!(public_key(&above_p(y)), Err("bad signing key"));
                not_a_point += 1;
            }
        }
        assert!(not_a_point > 0);
    }

    #[test]
    fn derived_weights_depend_on_the_secret_and_on_every_part() {
        let weights = |secret: &[u8], parts: &[&[u8]]| {
            let mut out = [0u8; 80];
            DerivedWeights::new(secret, parts.iter().copied()).fill(&mut out);
            out
        };
        let base = weights(b"k", &[b"a", b"b"]);
        assert_eq!(base, weights(b"k", &[b"a", b"b"]));
        assert_ne!(base, weights(b"j", &[b"a", b"b"]), "another secret");
        assert_ne!(base, weights(b"k", &[b"a", b"c"]), "another part");
        assert_ne!(base, weights(b"k", &[b"ab"]), "parts are length-delimited");
        assert_ne!(base[..16], base[16..32], "each weight differs");
    }
}
