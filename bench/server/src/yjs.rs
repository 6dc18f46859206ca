//! The Yjs side of the load: y-protocols messages around updates made by yjs itself.
//!
//! A y-websocket message is lib0-encoded: `varuint messageSync (0)`, `varuint` sync type
//! (0 step 1, 1 step 2, 2 update), then the payload as `varuint length ‖ bytes`.

use anyhow::{Context, Result, bail};

const MESSAGE_SYNC: u64 = 0;
const SYNC_UPDATE: u64 = 2;

fn write_varuint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_varuint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(n);
        }
    }
    None
}

/// The message that carries one update, as `y-protocols/sync.writeUpdate` frames it.
pub fn update_message(update: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(update.len() + 6);
    write_varuint(&mut out, MESSAGE_SYNC);
    write_varuint(&mut out, SYNC_UPDATE);
    write_varuint(&mut out, update.len() as u64);
    out.extend_from_slice(update);
    out
}

const SYNC_STEP1: u64 = 0;
const SYNC_STEP2: u64 = 1;

/// What a y-websocket client does on open, for an empty document: send sync step 1 (its
/// empty state vector), answer the server's step 1 with step 2 (an empty update), and
/// take the server's step 2. Returns once both directions are done, so an idle holder
/// costs the server what a real synced client costs. (Real clients also send an awareness
/// state; these holders do not.)
pub async fn handshake(ws: &mut crate::Ws) -> Result<()> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // messageSync, step 1, state vector as a byte array: an empty vector is varuint 0.
    ws.send(Message::Binary(vec![0, 0, 1, 0].into())).await?;
    let (mut answered, mut synced) = (false, false);
    while !(answered && synced) {
        let msg = ws.next().await.context("closed during the sync handshake")??;
        let Message::Binary(b) = msg else { continue };
        let mut at = 0;
        if read_varuint(&b, &mut at) != Some(MESSAGE_SYNC) {
            continue;
        }
        match read_varuint(&b, &mut at) {
            Some(SYNC_STEP1) => {
                // Step 2 with an empty v1 update (no structs, empty delete set).
                ws.send(Message::Binary(vec![0, 1, 2, 0, 0].into())).await?;
                answered = true;
            }
            Some(SYNC_STEP2) => synced = true,
            _ => {}
        }
    }
    Ok(())
}

/// Whether a message from the server carries a document update.
pub fn is_update(msg: &[u8]) -> bool {
    let mut at = 0;
    read_varuint(msg, &mut at) == Some(MESSAGE_SYNC) && read_varuint(msg, &mut at) == Some(SYNC_UPDATE)
}

/// Reads the file `gen-updates.mjs` wrote: u32 LE length, then the update, repeated.
pub fn read_updates(path: &std::path::Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(len) = bytes.get(at..at + 4) else { bail!("truncated update file") };
        let len = u32::from_le_bytes(len.try_into()?) as usize;
        let Some(u) = bytes.get(at + 4..at + 4 + len) else { bail!("truncated update file") };
        out.push(u.to_vec());
        at += 4 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varuints_round_trip_as_lib0_writes_them() {
        for (n, bytes) in [(0u64, vec![0u8]), (127, vec![0x7f]), (128, vec![0x80, 0x01]), (300, vec![0xac, 0x02])] {
            let mut out = Vec::new();
            write_varuint(&mut out, n);
            assert_eq!(out, bytes);
            assert_eq!(read_varuint(&bytes, &mut 0), Some(n));
        }
        let m = update_message(&[9; 200]);
        assert_eq!(&m[..4], &[0, 2, 0xc8, 0x01]);
        assert!(is_update(&m));
        assert!(!is_update(&[0, 0, 1, 0]));
    }
}
