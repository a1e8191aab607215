//! API key → secret storage.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use rand::distr::{Alphanumeric, SampleString};

use crate::KeyError;

/// The set of API keys a server accepts, each with its HMAC secret.
///
/// `Debug` never prints secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyProvider {
    keys: BTreeMap<String, String>,
}

impl fmt::Debug for KeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyProvider")
            .field("api_keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyProvider {
    /// Builds a provider from `(api_key, secret)` pairs; keys and secrets are
    /// trimmed, and an empty key or secret is rejected.
    pub fn from_map<I, K, S>(pairs: I) -> Result<Self, KeyError>
    where
        I: IntoIterator<Item = (K, S)>,
        K: Into<String>,
        S: Into<String>,
    {
        let mut keys = BTreeMap::new();
        for (k, s) in pairs {
            let (k, s) = (k.into().trim().to_string(), s.into().trim().to_string());
            insert(&mut keys, k, s)?;
        }
        Ok(Self { keys })
    }

    /// Parses the `LIVEKIT_KEYS` / `--keys` syntax: `key: secret` pairs, one
    /// per line and/or separated by commas, optionally wrapped in a YAML flow
    /// map (`{key1: secret1, key2: secret2}`). Values may be quoted. Blank
    /// lines and `#` comments are ignored.
    pub fn from_env_syntax(text: &str) -> Result<Self, KeyError> {
        let mut body = text.trim();
        if let Some(inner) = body.strip_prefix('{').and_then(|b| b.strip_suffix('}')) {
            body = inner;
        }
        let mut keys = BTreeMap::new();
        for line in body.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            for entry in line.split(',') {
                let entry = entry.trim();
                if entry.is_empty() {
                    continue;
                }
                let (k, s) = entry.split_once(':').ok_or_else(|| {
                    KeyError::Syntax(format!("entry {:?} has no ':'", redact_entry(entry)))
                })?;
                insert(&mut keys, unquote(k.trim()), unquote(s.trim()))?;
            }
        }
        Ok(Self { keys })
    }

    /// Reads a key file: a YAML map `key: secret`, one per line, as LiveKit's
    /// `key_file`.
    pub fn from_key_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            KeyError::Syntax(message) => KeyError::KeyFile {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses YAML text holding a map of `key: secret`.
    pub fn from_yaml(text: &str) -> Result<Self, KeyError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let map: BTreeMap<String, String> = serde_saphyr::from_str(text).map_err(|e| {
            // serde-saphyr errors may quote the input; keep only the first line.
            let msg = e.to_string();
            KeyError::Syntax(format!(
                "not a YAML map of key: secret ({})",
                msg.lines().next().unwrap_or("")
            ))
        })?;
        Self::from_map(map)
    }

    /// Adds every key of `other` (same key with a different secret is an error).
    pub fn merge(&mut self, other: KeyProvider) -> Result<(), KeyError> {
        for (k, s) in other.keys {
            insert(&mut self.keys, k, s)?;
        }
        Ok(())
    }

    /// The secret of `api_key`, if configured.
    pub fn secret(&self, api_key: &str) -> Option<&str> {
        self.keys.get(api_key).map(String::as_str)
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The configured API keys (not the secrets), sorted.
    pub fn api_keys(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The first `(api_key, secret)` pair in key order, handy for tools that
    /// need "some key" (e.g. `create-token` with a single configured key).
    pub fn first(&self) -> Option<(&str, &str)> {
        self.keys
            .iter()
            .next()
            .map(|(k, s)| (k.as_str(), s.as_str()))
    }
}

fn insert(keys: &mut BTreeMap<String, String>, k: String, s: String) -> Result<(), KeyError> {
    if k.is_empty() {
        return Err(KeyError::EmptyKey);
    }
    if s.is_empty() {
        return Err(KeyError::EmptySecret(k));
    }
    match keys.get(&k) {
        Some(existing) if *existing != s => Err(KeyError::Duplicate(k)),
        _ => {
            keys.insert(k, s);
            Ok(())
        }
    }
}

fn unquote(s: &str) -> String {
    let b = s.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        s[1..s.len() - 1].to_string()
    } else {
        s.to_string()
    }
}

/// Keeps an error message free of a possible secret: shows only a prefix.
fn redact_entry(entry: &str) -> String {
    let prefix: String = entry.chars().take(4).collect();
    format!("{prefix}…")
}

/// A fresh API key in LiveKit's shape: `API` + 12 base62 characters.
pub fn generate_api_key() -> String {
    format!("API{}", Alphanumeric.sample_string(&mut rand::rng(), 12))
}

/// A fresh API secret: 43 base62 characters (~256 bits).
pub fn generate_api_secret() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 43)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_syntax_single() {
        let k = KeyProvider::from_env_syntax("key1: secret1").unwrap();
        assert_eq!(k.secret("key1"), Some("secret1"));
        assert_eq!(k.len(), 1);
    }

    #[test]
    fn env_syntax_multi_line_comma_and_flow() {
        let k = KeyProvider::from_env_syntax("a: s1\n  b: 's2'\n\n# c\nc: \"s3\", d: s4").unwrap();
        assert_eq!(k.api_keys().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(k.secret("b"), Some("s2"));
        assert_eq!(k.secret("c"), Some("s3"));
        let k = KeyProvider::from_env_syntax("{x: y, z: w}").unwrap();
        assert_eq!(k.secret("x"), Some("y"));
        assert_eq!(k.secret("z"), Some("w"));
    }

    #[test]
    fn secret_may_contain_colon() {
        let k = KeyProvider::from_env_syntax("k: a:b").unwrap();
        assert_eq!(k.secret("k"), Some("a:b"));
    }

    #[test]
    fn rejects_empty_secret_and_key() {
        assert_eq!(
            KeyProvider::from_env_syntax("k:"),
            Err(KeyError::EmptySecret("k".into()))
        );
        assert_eq!(
            KeyProvider::from_env_syntax("k: ''"),
            Err(KeyError::EmptySecret("k".into()))
        );
        assert_eq!(KeyProvider::from_env_syntax(": s"), Err(KeyError::EmptyKey));
        assert_eq!(
            KeyProvider::from_map([("k", " ")]),
            Err(KeyError::EmptySecret("k".into()))
        );
    }

    #[test]
    fn rejects_garbage_without_leaking_secret() {
        let e = KeyProvider::from_env_syntax("justasecretvalue").unwrap_err();
        assert!(matches!(e, KeyError::Syntax(_)));
        assert!(!e.to_string().contains("justasecretvalue"));
    }

    #[test]
    fn duplicate_conflicting() {
        assert_eq!(
            KeyProvider::from_env_syntax("k: a, k: b"),
            Err(KeyError::Duplicate("k".into()))
        );
        assert!(KeyProvider::from_env_syntax("k: a, k: a").is_ok());
    }

    #[test]
    fn key_file() {
        let dir = std::env::temp_dir().join(format!("relais-auth-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("keys.yaml");
        std::fs::write(&p, "# keys\nAPIabc: sec1\nother: \"12345\"\nnum: 678\n").unwrap();
        let k = KeyProvider::from_key_file(&p).unwrap();
        assert_eq!(k.secret("APIabc"), Some("sec1"));
        assert_eq!(k.secret("other"), Some("12345"));
        assert_eq!(k.secret("num"), Some("678"));
        std::fs::write(&p, "- a\n- b\n").unwrap();
        assert!(matches!(
            KeyProvider::from_key_file(&p),
            Err(KeyError::KeyFile { .. })
        ));
        std::fs::write(&p, "k: ''\n").unwrap();
        assert_eq!(
            KeyProvider::from_key_file(&p),
            Err(KeyError::EmptySecret("k".into()))
        );
        assert!(matches!(
            KeyProvider::from_key_file(dir.join("missing.yaml")),
            Err(KeyError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn debug_hides_secrets() {
        let k = KeyProvider::from_map([("key", "topsecret")]).unwrap();
        let d = format!("{k:?}");
        assert!(d.contains("key") && !d.contains("topsecret"));
    }

    #[test]
    fn generated_shapes() {
        let k = generate_api_key();
        assert!(k.starts_with("API") && k.len() == 15);
        let s = generate_api_secret();
        assert_eq!(s.len(), 43);
        assert!(s.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(s, generate_api_secret());
    }
}
