//! Pseudonymisation of consumer identifiers before they leave the edge.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use marktwin_core::Config;
use sha2::Sha256;

use crate::error::{Error, Result};

/// Keyed HMAC-SHA256 of identifiers, as lowercase hex. The same identifier
/// and key always give the same pseudonym, so profiles still join; without
/// the key the original cannot be recovered or confirmed by guessing.
#[derive(Clone)]
pub struct Pseudonymiser {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymiser { key: <redacted> }")
    }
}

const MIN_KEY: usize = 16;

impl Pseudonymiser {
    /// From raw key bytes (at least 16).
    pub fn new(key: &[u8]) -> Result<Self> {
        if key.len() < MIN_KEY {
            return Err(Error::Key(format!(
                "the pseudonymisation key has {} bytes; at least {MIN_KEY} are needed",
                key.len()
            )));
        }
        let mac = Hmac::<Sha256>::new_from_slice(key).map_err(|e| Error::Key(e.to_string()))?;
        Ok(Pseudonymiser { mac })
    }

    /// The key named by `[pseudonymisation]`: the environment variable if
    /// set, else the key file, else `<data_dir>/secrets/pseudonym.key`,
    /// created with 32 random bytes (mode 0600) when missing.
    pub fn from_config(cfg: &Config) -> Result<Self> {
        let p = &cfg.pseudonymisation;
        if let Some(var) = &p.key_env {
            let v = std::env::var(var).map_err(|_| {
                Error::Key(format!(
                    "pseudonymisation.key_env names `{var}`, which is not set"
                ))
            })?;
            return Self::new(v.trim().as_bytes());
        }
        let path = match &p.key_file {
            Some(f) => f.clone(),
            None => {
                let path = cfg.data_dir.join("secrets").join("pseudonym.key");
                if !path.exists() {
                    create_key(&path)?;
                }
                path
            }
        };
        let key =
            std::fs::read(&path).map_err(|e| Error::Key(format!("{}: {e}", path.display())))?;
        Self::new(&key)
    }

    /// The pseudonym of `value`.
    pub fn pseudonymise(&self, value: &str) -> String {
        let mut m = self.mac.clone();
        m.update(value.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }
}

fn create_key(path: &Path) -> Result<()> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| Error::Key(format!("no randomness for a new key: {e}")))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::Key(format!("{}: {e}", dir.display())))?;
    }
    crate::cursor::write_atomic(path, &key)
        .map_err(|e| Error::Key(format!("{}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_keyed_and_not_clear_text() {
        let a = Pseudonymiser::new(b"0123456789abcdef0123").unwrap();
        let b = Pseudonymiser::new(b"another key entirely").unwrap();
        let p = a.pseudonymise("13812345678");
        assert_eq!(p, a.pseudonymise("13812345678"));
        assert_ne!(p, b.pseudonymise("13812345678"));
        assert_eq!(p.len(), 64);
        assert!(!p.contains("13812345678"));
        assert!(!format!("{a:?}").contains("0123456789"));
    }

    #[test]
    fn short_key_is_refused() {
        assert!(Pseudonymiser::new(b"short").is_err());
    }

    #[test]
    fn generated_key_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let a = Pseudonymiser::from_config(&cfg).unwrap();
        let b = Pseudonymiser::from_config(&cfg).unwrap();
        assert_eq!(a.pseudonymise("x"), b.pseudonymise("x"));
    }
}
