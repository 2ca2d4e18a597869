//! The Ed25519 key that signs what leaves the host as evidence: published audit chain heads
//! and evidence-pack manifests.
//!
//! Why a key at all: the hash chain proves the order of the records, but anyone who can write
//! the state directory can cut its tail or rewrite it and re-hash the rest. A head signed with
//! a key kept outside the state directory, and saved somewhere else (a receiver, the auditor),
//! lets `audit verify --against` catch both.
//!
//! The key file is an Ed25519 private key in PKCS#8 PEM, exactly what
//! `openssl genpkey -algorithm ed25519` writes, so operators use the tools they know and an
//! auditor checks signatures with `openssl pkeyutl -verify` or a few lines of Python.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

/// Why a signing key could not be used; names the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The key file could not be read.
    #[error("cannot read the audit signing key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not an Ed25519 private key in PKCS#8 PEM.
    #[error(
        "{path} is not an Ed25519 private key in PKCS#8 PEM \
         (make one with `openssl genpkey -algorithm ed25519 -out FILE`)"
    )]
    Format { path: PathBuf },
    /// A public key given as text is not 32 bytes of base64.
    #[error("not an Ed25519 public key (32 bytes, base64): {0}")]
    PublicKey(String),
}

/// The private key, loaded once; cheap to clone.
#[derive(Clone)]
pub struct HeadSigner {
    key: SigningKey,
}

impl std::fmt::Debug for HeadSigner {
    /// Shows the public half only: the private key must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadSigner")
            .field("public_key", &self.public_key_base64())
            .finish()
    }
}

impl HeadSigner {
    /// Loads the PKCS#8 PEM key at `path`.
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        let pem = std::fs::read_to_string(path).map_err(|source| SigningError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&pem).ok_or_else(|| SigningError::Format {
            path: path.to_path_buf(),
        })
    }

    /// Parses a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str) -> Option<Self> {
        SigningKey::from_pkcs8_pem(pem)
            .ok()
            .map(|key| HeadSigner { key })
    }

    /// A signer from 32 secret bytes (tests and key generation).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        HeadSigner {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// The raw 64-byte Ed25519 signature over `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The public key as standard base64 (the form manifests and heads carry).
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.public_key())
    }

    /// The public key as PEM (SubjectPublicKeyInfo), for `openssl pkeyutl -verify -pubin`.
    pub fn public_key_pem(&self) -> String {
        public_key_pem(&self.public_key())
    }
}

/// The SubjectPublicKeyInfo PEM of a raw Ed25519 public key: the fixed 12-byte DER prefix of
/// the Ed25519 algorithm identifier (RFC 8410) followed by the key.
pub fn public_key_pem(public: &[u8; 32]) -> String {
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(public);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}

/// Decodes a base64 raw public key.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], SigningError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| SigningError::PublicKey(e.to_string()))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| SigningError::PublicKey(format!("{} bytes, not 32", b.len())))
}

/// Whether `signature` is `public`'s Ed25519 signature over `message` (strict verification:
/// no malleable or small-order forms).
pub fn verify(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(message, &signature).is_ok()
}

/// Base64 of a signature or other bytes, as carried in JSON.
pub fn to_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bytes from base64 text; `None` when it is not base64.
pub fn from_base64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 test 1's secret key in PKCS#8 PEM (as `openssl pkey` prints it).
    const RFC8032_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n\
        -----END PRIVATE KEY-----\n";
    /// RFC 8032 test 1's public key.
    const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    /// RFC 8032 test 1's signature of the empty message.
    const RFC8032_SIG: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    #[test]
    fn loads_an_openssl_pkcs8_key_and_signs_as_rfc_8032_says() {
        let signer = HeadSigner::from_pem(RFC8032_PEM).expect("pem");
        assert_eq!(hex::encode(signer.public_key()), RFC8032_PUBLIC);
        let sig = signer.sign(b"");
        assert_eq!(hex::encode(sig), RFC8032_SIG);
        assert!(verify(&signer.public_key(), b"", &sig));
    }

    #[test]
    fn a_changed_message_or_signature_does_not_verify() {
        let signer = HeadSigner::from_secret([7; 32]);
        let sig = signer.sign(b"head 12 abc");
        assert!(verify(&signer.public_key(), b"head 12 abc", &sig));
        assert!(!verify(&signer.public_key(), b"head 13 abc", &sig));
        let mut flipped = sig;
        flipped[3] ^= 1;
        assert!(!verify(&signer.public_key(), b"head 12 abc", &flipped));
        assert!(!verify(&signer.public_key(), b"head 12 abc", &sig[..63]));
        let other = HeadSigner::from_secret([8; 32]);
        assert!(!verify(&other.public_key(), b"head 12 abc", &sig));
    }

    #[test]
    fn public_key_round_trips_through_base64_and_rejects_wrong_lengths() {
        let signer = HeadSigner::from_secret([9; 32]);
        let text = signer.public_key_base64();
        assert_eq!(parse_public_key(&text).unwrap(), signer.public_key());
        assert!(parse_public_key("AAAA").is_err());
        assert!(parse_public_key("not base64!").is_err());
    }

    #[test]
    fn the_public_pem_has_the_rfc_8410_prefix() {
        let signer = HeadSigner::from_pem(RFC8032_PEM).unwrap();
        let pem = signer.public_key_pem();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = from_base64(&b64).unwrap();
        assert_eq!(der.len(), 44);
        assert_eq!(hex::encode(&der[12..]), RFC8032_PUBLIC);
    }

    #[test]
    fn a_missing_or_foreign_key_file_names_the_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = HeadSigner::load(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = HeadSigner::load(&junk).unwrap_err().to_string();
        assert!(
            err.contains("junk.pem") && err.contains("openssl genpkey"),
            "{err}"
        );
        assert!(!err.contains("c2VjcmV0"), "{err}");
        assert!(HeadSigner::load(&junk).is_err());
    }
}
