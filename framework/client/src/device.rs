//! A device's identity (replica id, Ed25519 signing key, X25519 agreement secret), kept in
//! `device.json`, and its public card: `<replica>.<signing key hex>.<agreement key hex>`.

use std::path::Path;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use stead_core::crypto;
use stead_core::env::{Random, SystemClock};
use stead_core::ids::ReplicaId;
use stead_core::membership::Member;

use crate::{Error, OsRandom, Result};

/// A device's secrets. Never leaves its folder.
#[derive(Clone)]
pub struct Device {
    pub replica: ReplicaId,
    pub signing: SigningKey,
    pub agreement: [u8; 32],
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("replica", &self.replica).finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    replica: String,
    signing: String,
    agreement: String,
}

fn invalid(what: &'static str) -> impl Fn(String) -> Error {
    move |reason| Error::Invalid { what, reason }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

/// Writes a file readable by its owner only (it may hold secrets).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl Device {
    /// A new device with fresh keys from the OS.
    pub fn generate() -> Device {
        let mut rng = OsRandom;
        Device {
            replica: ReplicaId::generate(&SystemClock, &mut rng),
            signing: SigningKey::from_bytes(&rng.array()),
            agreement: rng.array(),
        }
    }

    /// Loads the device of `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Device> {
        let path = dir.join("device.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let s: Stored = serde_json::from_slice(&bytes).map_err(|e| invalid("device.json")(e.to_string()))?;
                let hex32 = |h: &str| -> Result<[u8; 32]> {
                    hex::decode(h).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| invalid("device.json")("bad key".into()))
                };
                Ok(Device {
                    replica: s.replica.parse().map_err(|e: uuid_error::E| invalid("device.json")(e.to_string()))?,
                    signing: SigningKey::from_bytes(&hex32(&s.signing)?),
                    agreement: hex32(&s.agreement)?,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
                let d = Device::generate();
                let s = Stored {
                    replica: d.replica.to_string(),
                    signing: hex::encode(d.signing.to_bytes()),
                    agreement: hex::encode(d.agreement),
                };
                write_private(&path, serde_json::to_string_pretty(&s).expect("serialisable").as_bytes())?;
                Ok(d)
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    pub fn card(&self) -> DeviceCard {
        DeviceCard {
            replica: self.replica,
            signing: self.signing.verifying_key().to_bytes(),
            agreement: crypto::agreement_public(&self.agreement),
        }
    }
}

mod uuid_error {
    pub type E = <stead_core::ids::ReplicaId as std::str::FromStr>::Err;
}

/// What a member needs to invite a device: its public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCard {
    pub replica: ReplicaId,
    pub signing: [u8; 32],
    pub agreement: [u8; 32],
}

impl DeviceCard {
    pub fn member(&self) -> Member {
        Member { replica: self.replica, signing: self.signing, agreement: self.agreement }
    }
}

impl std::fmt::Display for DeviceCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.replica, hex::encode(self.signing), hex::encode(self.agreement))
    }
}

impl std::str::FromStr for DeviceCard {
    type Err = Error;
    fn from_str(s: &str) -> Result<DeviceCard> {
        let bad = || Error::Invalid { what: "device card", reason: format!("{s:?} is not <replica>.<hex>.<hex>") };
        let mut parts = s.trim().split('.');
        let replica = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let key = |p: Option<&str>| p.and_then(|p| hex::decode(p).ok()).and_then(|b| b.try_into().ok()).ok_or_else(bad);
        let card = DeviceCard { replica, signing: key(parts.next())?, agreement: key(parts.next())? };
        if parts.next().is_some() {
            return Err(bad());
        }
        // A key of small order signs for anyone, or lets anyone open what is wrapped to it:
        // no device makes one, so a card with one is a forgery.
        card.member()
            .check_keys()
            .map_err(|reason| Error::Invalid { what: "device card", reason: reason.into() })?;
        Ok(card)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(card: &str, expect: std::result::Result<(), &str>) {
        let got = card.parse::<DeviceCard>().map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(got, expect.map_err(str::to_string), "{card}");
    }

    #[test]
    fn cards_with_weak_keys_are_refused() {
        let card = Device::generate().card();
        let (replica, signing, agreement) = (card.replica, hex::encode(card.signing), hex::encode(card.agreement));
        check(&card.to_string(), Ok(()));
        // The identity point; the point of order 2; the identity written as y = p + 1.
        for weak in ["01".to_string() + &"00".repeat(31), "ec".to_string() + &"ff".repeat(30) + "7f", "ee".to_string() + &"ff".repeat(30) + "7f"] {
            check(&format!("{replica}.{weak}.{agreement}"), Err("invalid device card: weak signing key"));
        }
        // X25519: u = 0, u = 1, u = p (0 again).
        for weak in ["00".repeat(32), "01".to_string() + &"00".repeat(31), "ed".to_string() + &"ff".repeat(30) + "7f"] {
            check(&format!("{replica}.{signing}.{weak}"), Err("invalid device card: weak agreement key"));
        }
    }
}
