//! Symmetric keys for new identities and policies, from the system's random source (the one
//! part of identity handling that is not pure, so it is not in `twinguard_core::iothub`).

use base64::Engine as _;

/// A new random 256-bit symmetric key, base64 as IoT Hub prints its keys.
pub fn generate_key() -> Result<String, ring::error::Unspecified> {
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_256_bits_and_differ() {
        let decode = |k: String| {
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .map(|k| k.len())
        };
        assert_eq!(generate_key().map_err(|_| ()).map(decode), Ok(Ok(32)));
        assert_ne!(generate_key().ok(), generate_key().ok());
    }
}
