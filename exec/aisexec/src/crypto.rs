//! `secauth`: every Totem frame authenticated and encrypted with a key all nodes share.
//!
//! XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`): an AEAD, so one operation gives
//! both secrecy and integrity, with a 192-bit nonce large enough to build from a random
//! per-process prefix and a counter, so no two frames ever share a nonce without a
//! system call per frame. The cipher key is SHA-256 of a context string and the key
//! file's bytes, so key files of any length (corosync's are 128 bytes) work. A frame
//! that fails to open is dropped and counted by the caller: nodes with different keys
//! never understand each other, so they never form a ring.
//!
//! Sealed frame: `nonce (24) | ciphertext | tag (16)`.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use log::warn;
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes sealing adds to a frame.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Bound on a key file: larger is certainly not a key.
pub const MAX_KEY_FILE: usize = 4096;
/// Shortest key material accepted.
pub const MIN_KEY_BYTES: usize = 16;
const CONTEXT: &[u8] = b"aisexec secauth v1";

#[derive(Debug)]
pub enum KeyError {
    Io(io::Error),
    Size(usize),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Io(e) => write!(f, "{e}"),
            KeyError::Size(n) => write!(
                f,
                "key is {n} bytes; it must be {MIN_KEY_BYTES} to {MAX_KEY_FILE} (make one with ais-keygen)"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

pub struct FrameCrypto {
    cipher: XChaCha20Poly1305,
    /// Random per process: frames of two runs never share a nonce.
    nonce_prefix: [u8; 16],
    counter: u64,
}

impl FrameCrypto {
    pub fn from_key_material(material: &[u8]) -> Result<FrameCrypto, KeyError> {
        if !(MIN_KEY_BYTES..=MAX_KEY_FILE).contains(&material.len()) {
            return Err(KeyError::Size(material.len()));
        }
        let mut h = Sha256::new();
        h.update(CONTEXT);
        h.update(material);
        let key = h.finalize();
        let mut nonce_prefix = [0u8; 16];
        getrandom::fill(&mut nonce_prefix)
            .map_err(|e| KeyError::Io(io::Error::other(e.to_string())))?;
        Ok(FrameCrypto {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&key)),
            nonce_prefix,
            counter: 0,
        })
    }

    /// Reads a key file; warns when others than its owner may read it.
    pub fn load(path: &Path) -> Result<FrameCrypto, KeyError> {
        let meta = fs::metadata(path).map_err(KeyError::Io)?;
        if meta.len() as usize > MAX_KEY_FILE {
            return Err(KeyError::Size(meta.len() as usize));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            warn!(target: "main", "{}: key file is readable by group or others; it should be mode 0400", path.display());
        }
        let material = fs::read(path).map_err(KeyError::Io)?;
        FrameCrypto::from_key_material(&material)
    }

    /// Encrypts and authenticates one frame.
    pub fn seal(&mut self, frame: &[u8]) -> Bytes {
        self.counter += 1;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..16].copy_from_slice(&self.nonce_prefix);
        nonce[16..].copy_from_slice(&self.counter.to_be_bytes());
        let mut out = BytesMut::with_capacity(frame.len() + OVERHEAD);
        out.put_slice(&nonce);
        out.put_slice(frame);
        let tag = match self.cipher.encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            CONTEXT,
            &mut out[NONCE_LEN..],
        ) {
            Ok(tag) => tag,
            // Only fails for plaintexts beyond 2^38 bytes; frames are < 64 KiB.
            Err(_) => return Bytes::new(),
        };
        out.put_slice(&tag);
        out.freeze()
    }

    /// Checks and decrypts a sealed frame; `None` if it was not sealed with our key.
    pub fn open(&self, sealed: &[u8]) -> Option<Bytes> {
        if sealed.len() < OVERHEAD {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut buf = BytesMut::from(ciphertext);
        self.cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                CONTEXT,
                &mut buf,
                Tag::from_slice(tag),
            )
            .ok()?;
        Some(buf.freeze())
    }
}

/// Writes `len` fresh random bytes to `path` with mode 0400, refusing to overwrite.
pub fn generate_key_file(path: &Path, len: usize) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = vec![0u8; len];
    getrandom::fill(&mut key).map_err(|e| io::Error::other(e.to_string()))?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)?;
    f.write_all(&key)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_frames_open_only_with_the_same_key() {
        let mut a = FrameCrypto::from_key_material(&[7u8; 128]).unwrap();
        let b = FrameCrypto::from_key_material(&[7u8; 128]).unwrap();
        let other = FrameCrypto::from_key_material(&[8u8; 128]).unwrap();
        let sealed = a.seal(b"totem frame");
        assert_eq!(sealed.len(), 11 + OVERHEAD);
        // Encrypted, not only authenticated: the plaintext is nowhere in the sealed bytes.
        assert!(
            !sealed.windows(11).any(|w| w == b"totem frame"),
            "plaintext in {sealed:?}"
        );
        assert_eq!(b.open(&sealed).as_deref(), Some(&b"totem frame"[..]));
        assert_eq!(other.open(&sealed), None);
        let mut tampered = sealed.to_vec();
        tampered[30] ^= 1;
        assert_eq!(b.open(&tampered), None);
        assert_eq!(b.open(&sealed[..10]), None);
        assert_ne!(a.seal(b"x")[..24], a.seal(b"x")[..24], "nonces differ");
    }

    #[test]
    fn no_piece_of_a_frame_survives_sealing() {
        let mut a = FrameCrypto::from_key_material(&[7u8; 128]).unwrap();
        let b = FrameCrypto::from_key_material(&[7u8; 128]).unwrap();
        // A frame like Totem's: headers, zero runs, a repeated payload.
        let mut frame = vec![0u8; 64];
        frame.extend((0..1400u32).map(|i| (i % 251) as u8));
        for _ in 0..3 {
            let sealed = a.seal(&frame);
            assert_eq!(sealed.len(), frame.len() + OVERHEAD);
            // Not one 8-byte piece of it in the ciphertext (chance 2^-64 per pair). The
            // nonce is left out: its counter holds a run of zeros, as the frame does.
            let body = &sealed[NONCE_LEN..sealed.len() - TAG_LEN];
            for piece in frame.windows(8).step_by(4) {
                assert!(
                    !body.windows(8).any(|w| w == piece),
                    "{piece:?} left in clear"
                );
            }
            assert_ne!(body, &frame[..]);
            assert_eq!(b.open(&sealed).as_deref(), Some(&frame[..]));
        }
    }

    #[test]
    fn key_sizes_are_checked() {
        assert!(matches!(
            FrameCrypto::from_key_material(&[0; 8]),
            Err(KeyError::Size(8))
        ));
        assert!(FrameCrypto::from_key_material(&[0; 16]).is_ok());
    }

    #[test]
    fn generated_key_files_are_private_and_never_overwritten() {
        let path = std::env::temp_dir().join(format!("aisexec-key-{}", std::process::id()));
        let _ = fs::remove_file(&path);
        generate_key_file(&path, 128).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
        assert_eq!(meta.len(), 128);
        assert!(generate_key_file(&path, 128).is_err());
        assert!(FrameCrypto::load(&path).is_ok());
        let _ = fs::remove_file(&path);
    }
}
