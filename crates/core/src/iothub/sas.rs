//! Shared access signature tokens (the MQTT password of IoT Hub's symmetric-key identities):
//! `SharedAccessSignature sr={urlenc(resource)}&sig={urlenc(base64(HMAC-SHA256(key,
//! urlenc(resource) + "\n" + expiry)))}&se={expiry}`. Parsing and validation; pure (the time
//! is a parameter).

use base64::Engine as _;

use super::query::{percent_decode, percent_encode, raw_pairs};

/// The furthest expiry a token may have, counted from the time of the check: 365 days. IoT
/// Hub's SDKs sign tokens for an hour (the agent too); a token valid for longer is a
/// long-lived credential that should not exist, and `se` = 2^64-1 ("never") is refused.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 365 * 24 * 3600;

/// The prefix of every token.
const PREFIX: &str = "SharedAccessSignature ";

/// Why a token is refused. Each ends in CONNACK "not authorized"; the variants only make the
/// hub's log say why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// Not `SharedAccessSignature k=v&...`, a field missing, repeated, unknown or malformed.
    #[error("malformed SAS token: {0}")]
    Malformed(&'static str),
    /// A token signed with a shared access policy (`skn=`): a service credential, which no
    /// device or module connection may use.
    #[error("a shared access policy token (skn) cannot connect a device or module")]
    PolicyToken,
    /// The token's `se` is not in the future.
    #[error("SAS token expired at {expiry} (now {now})")]
    Expired {
        /// The token's expiry, Unix seconds.
        expiry: u64,
        /// The time of the check.
        now: u64,
    },
    /// The token's `se` lies further ahead than [`MAX_TOKEN_LIFETIME_SECS`].
    #[error(
        "SAS token expiry {expiry} is more than {MAX_TOKEN_LIFETIME_SECS} s (365 days) after now ({now})"
    )]
    TooLong {
        /// The token's expiry, Unix seconds.
        expiry: u64,
        /// The time of the check.
        now: u64,
    },
    /// `sr` is not the identity's resource.
    #[error("SAS token resource {found:?} is not {expected:?}")]
    WrongResource {
        /// The decoded resource of the token.
        found: String,
        /// The identity's resource.
        expected: String,
    },
    /// The signature does not verify with the identity's key.
    #[error("SAS token signature does not match the identity's key")]
    BadSignature,
}

/// A parsed token.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as the token has it (the signed text).
    resource_encoded: String,
    /// `se` exactly as the token has it (the signed text).
    expiry_text: String,
    /// `sr` decoded.
    pub resource: String,
    /// `se`: Unix seconds.
    pub expiry: u64,
    /// `sig` decoded from base64.
    signature: Vec<u8>,
    /// `skn`, for policy tokens.
    pub key_name: Option<String>,
}

impl std::fmt::Debug for SasToken {
    // The signature is a credential for as long as the token lives: never logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SasToken")
            .field("resource", &self.resource)
            .field("expiry", &self.expiry)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl SasToken {
    /// Parses a token.
    pub fn parse(token: &str) -> Result<SasToken, SasError> {
        let fields = token.strip_prefix(PREFIX).ok_or(SasError::Malformed(
            "does not start with \"SharedAccessSignature \"",
        ))?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for (name, value) in raw_pairs(fields) {
            let value = value.ok_or(SasError::Malformed("a field without a value"))?;
            let slot = match name {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => return Err(SasError::Malformed("unknown field")),
            };
            if slot.replace(value).is_some() {
                return Err(SasError::Malformed("repeated field"));
            }
        }
        let sr = sr.ok_or(SasError::Malformed("no sr"))?;
        let sig = sig.ok_or(SasError::Malformed("no sig"))?;
        let se = se.ok_or(SasError::Malformed("no se"))?;
        let expiry = se
            .parse::<u64>()
            .map_err(|_| SasError::Malformed("se is not a whole number of seconds"))?;
        let resource =
            percent_decode(sr).map_err(|_| SasError::Malformed("sr is not percent-encoded UTF-8"))?;
        let signature = percent_decode(sig)
            .ok()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or(SasError::Malformed("sig is not percent-encoded base64"))?;
        let key_name = skn
            .map(percent_decode)
            .transpose()
            .map_err(|_| SasError::Malformed("skn is not percent-encoded UTF-8"))?;
        Ok(SasToken {
            resource_encoded: sr.to_owned(),
            expiry_text: se.to_owned(),
            resource,
            expiry,
            signature,
            key_name,
        })
    }

    /// [`SasToken::verify_with`] with `ring`'s HMAC.
    #[cfg(any(feature = "ring", test))]
    pub fn verify(&self, expected_resource: &str, key: &[u8], now: u64) -> Result<(), SasError> {
        self.verify_with(&Ring, expected_resource, key, now)
    }

    /// Checks the token for an identity whose resource is `expected_resource` and whose key
    /// is `key` (decoded), at `now` (Unix seconds). The resource is compared without case and
    /// without a trailing `/`, as IoT Hub host names are case-insensitive; the signature is
    /// checked by `mac` over the exact text the token carries, in constant time.
    pub fn verify_with(
        &self,
        mac: &impl HmacSha256,
        expected_resource: &str,
        key: &[u8],
        now: u64,
    ) -> Result<(), SasError> {
        if self.key_name.is_some() {
            return Err(SasError::PolicyToken);
        }
        self.verify_signed_with(mac, expected_resource, key, now)
    }

    /// [`SasToken::verify_signed_with`] with `ring`'s HMAC.
    #[cfg(any(feature = "ring", test))]
    pub fn verify_signed(&self, expected_resource: &str, key: &[u8], now: u64) -> Result<(), SasError> {
        self.verify_signed_with(&Ring, expected_resource, key, now)
    }

    /// Checks a token's resource, signature (by `mac`) and expiry, whoever signed it: the
    /// device side refuses policy tokens first ([`SasToken::verify_with`]); the service side
    /// requires one and picks the policy's key by `skn` before calling this.
    pub fn verify_signed_with(
        &self,
        mac: &impl HmacSha256,
        expected_resource: &str,
        key: &[u8],
        now: u64,
    ) -> Result<(), SasError> {
        if !self
            .resource
            .trim_end_matches('/')
            .eq_ignore_ascii_case(expected_resource.trim_end_matches('/'))
        {
            return Err(SasError::WrongResource {
                found: self.resource.clone(),
                expected: expected_resource.to_owned(),
            });
        }
        let signed = format!("{}\n{}", self.resource_encoded, self.expiry_text);
        if !mac.verify(key, signed.as_bytes(), &self.signature) {
            return Err(SasError::BadSignature);
        }
        // Expiry last, so a forged token learns nothing from the error.
        if self.expiry <= now {
            return Err(SasError::Expired {
                expiry: self.expiry,
                now,
            });
        }
        if self.expiry - now > MAX_TOKEN_LIFETIME_SECS {
            return Err(SasError::TooLong {
                expiry: self.expiry,
                now,
            });
        }
        Ok(())
    }
}

/// HMAC-SHA256, the MAC of SAS tokens. The core has no cryptographic code and no dependency
/// that can reach the OS of its own: the caller passes the MAC. With the `ring` feature (the
/// agent and the hub enable it), [`Ring`] is one, and [`sign`] / [`SasToken::verify`] use it.
pub trait HmacSha256 {
    /// The tag of `data` under `key`.
    fn sign(&self, key: &[u8], data: &[u8]) -> Vec<u8>;
    /// Whether `tag` is the tag of `data` under `key`, compared in constant time.
    fn verify(&self, key: &[u8], data: &[u8], tag: &[u8]) -> bool;
}

/// `ring::hmac` (HMAC only: `clippy.toml` forbids ring's random source here).
#[cfg(any(feature = "ring", test))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Ring;

#[cfg(any(feature = "ring", test))]
impl HmacSha256 for Ring {
    fn sign(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        ring::hmac::sign(&key, data).as_ref().to_vec()
    }

    fn verify(&self, key: &[u8], data: &[u8], tag: &[u8]) -> bool {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        ring::hmac::verify(&key, data, tag).is_ok()
    }
}

/// [`sign_with`] with `ring`'s HMAC.
#[cfg(any(feature = "ring", test))]
pub fn sign(resource: &str, key: &[u8], expiry: u64) -> String {
    sign_with(&Ring, resource, key, expiry)
}

/// A token for `resource`, signed by `mac` with `key` (decoded), expiring at `expiry`: what a
/// client sends (the agent signs with it; the hub only checks).
pub fn sign_with(mac: &impl HmacSha256, resource: &str, key: &[u8], expiry: u64) -> String {
    let encoded = percent_encode(resource);
    let tag = mac.sign(key, format!("{encoded}\n{expiry}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(tag);
    format!("{PREFIX}sr={encoded}&sig={}&se={expiry}", percent_encode(&sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
            .expect("base64")
    }

    #[test]
    fn spec_vector() {
        // SPEC §6: the agent's unit-test vector must verify here too.
        let resource = "myhub.azure-devices.net/devices/dev1/modules/mod1";
        let token = sign(resource, &key(), 1_700_000_000);
        assert!(
            token.contains("sig=kA6xjFLkZvk4Cdh0nD8uWAzassq6PB47f7BepMMtmlY%3D"),
            "{token}"
        );
        let parsed = SasToken::parse(&token).expect("parses");
        assert_eq!(parsed.verify(resource, &key(), 1_699_999_999), Ok(()));
        assert_eq!(
            parsed.verify(&resource.to_uppercase(), &key(), 1_699_999_999),
            Ok(()),
            "host and path compare without case"
        );
    }

    #[test]
    fn refusals() {
        let resource = "hub/devices/d/modules/m";
        let token = SasToken::parse(&sign(resource, &key(), 100)).expect("parses");
        assert_eq!(
            token.verify(resource, &key(), 100),
            Err(SasError::Expired {
                expiry: 100,
                now: 100
            })
        );
        assert!(matches!(
            token.verify("hub/devices/d", &key(), 1),
            Err(SasError::WrongResource { .. })
        ));
        assert_eq!(
            token.verify(resource, b"other key", 1),
            Err(SasError::BadSignature)
        );
        let far = MAX_TOKEN_LIFETIME_SECS + 10;
        let long = SasToken::parse(&sign(resource, &key(), far)).expect("parses");
        assert_eq!(long.verify(resource, &key(), 10), Ok(()), "exactly the maximum");
        assert!(matches!(
            long.verify(resource, &key(), 9),
            Err(SasError::TooLong { .. })
        ));
        let never = SasToken::parse(&sign(resource, &key(), u64::MAX)).expect("parses");
        assert!(matches!(
            never.verify(resource, &key(), 9),
            Err(SasError::TooLong { .. })
        ));
        let policy = format!("{}&skn=iothubowner", sign(resource, &key(), 100));
        assert_eq!(
            SasToken::parse(&policy).and_then(|t| t.verify(resource, &key(), 1)),
            Err(SasError::PolicyToken)
        );
        for bad in [
            "",
            "SharedAccessSignature ",
            "SharedAccessSignature sr=a&sig=AA%3D%3D",
            "SharedAccessSignature sr=a&sig=AA%3D%3D&se=x",
            "SharedAccessSignature sr=a&sig=!!&se=1",
            "SharedAccessSignature sr=a&sr=a&sig=AA%3D%3D&se=1",
            "SharedAccessSignature sr=a&sig=AA%3D%3D&se=1&x=1",
            "SharedAccessSignature sr&sig=AA%3D%3D&se=1",
        ] {
            assert!(
                matches!(SasToken::parse(bad), Err(SasError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
