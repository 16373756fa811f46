//! The API's bearer token: 32 random bytes (base64url), created at the hub's first start in
//! `DIR/api-token` (mode 0600), required in `Authorization: Bearer ...` on every API request.
//! The CLI reads the same file; `twinguard-hub token rotate` replaces it.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use tracing::info;

use crate::datadir::{self, DataDirError, TOKEN_FILE};

/// The most bytes read from the token file.
const MAX_FILE_BYTES: usize = 1024;

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read or written.
    #[error(transparent)]
    File(#[from] DataDirError),
    /// The file holds something else.
    #[error("{0} does not hold an API token (43 characters of A-Z a-z 0-9 - _): run `twinguard-hub token rotate` to write a new one")]
    Malformed(PathBuf),
    /// No random source.
    #[error("no random source for a new API token")]
    Random,
}

/// The token file of the data directory `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(TOKEN_FILE)
}

/// A new random token.
pub(crate) fn generate() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| TokenError::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Reads the token of the data directory `dir` (not following a link; regular file only).
pub fn read(dir: &Path) -> Result<String, TokenError> {
    let path = path(dir);
    let text = datadir::read_private(&path, MAX_FILE_BYTES)?;
    let token = text.trim();
    if !well_formed(token) {
        return Err(TokenError::Malformed(path));
    }
    Ok(token.to_owned())
}

/// Writes a new token to the data directory `dir` (0600, atomically) and returns it.
pub fn rotate(dir: &Path) -> Result<String, TokenError> {
    let token = generate()?;
    datadir::write_private(&path(dir), &format!("{token}\n"))?;
    Ok(token)
}

/// The hub's token at start: the existing one, else a new one (first start).
pub(crate) fn load_or_create(dir: &Path) -> Result<String, TokenError> {
    match read(dir) {
        Ok(token) => Ok(token),
        Err(TokenError::File(DataDirError::Io { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            let token = rotate(dir)?;
            info!(path = %path(dir).display(), "created the API token (the CLI reads it; `twinguard-hub token show` prints it)");
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

/// Whether `given` is `expected`, in time independent of where they differ.
pub fn matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_differ() {
        let (a, b) = (generate().expect("random"), generate().expect("random"));
        assert!(well_formed(&a) && well_formed(&b), "{a} {b}");
        assert_ne!(a, b);
        assert!(matches(&a, &a));
        assert!(!matches(&a, &b));
        assert!(!matches(&a, &a[..42]));
        assert!(!well_formed("short"));
        assert!(!well_formed(&format!("{}!", &a[..42])));
    }
}
