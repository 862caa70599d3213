//! Access tokens: compact JWS (RFC 7515) JWTs (RFC 7519) signed with EdDSA over ed25519
//! (RFC 8037), and the JWKS document (RFC 7517) of their verification keys.
//!
//! Only what AESP issues is accepted: the header must say `alg: EdDSA` and name a `kid`
//! (no `none`, no HMAC, so there is no algorithm confusion), no `crit`, canonical unpadded
//! base64url in every part, and at most [`MAX_TOKEN_LEN`] bytes in all. Signing goes through
//! the [`Signer`](aesp_core::Signer) seam, so the private key may live in a KMS or HSM.

use std::collections::BTreeMap;

use aesp_core::{Error, ErrorCode, PublicKey, Result, SignatureAlgorithm};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

/// The longest token looked at; anything longer is refused before any parsing.
pub(crate) const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The JOSE header AESP writes and accepts.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default)]
    kid: String,
    #[serde(default, skip_serializing)]
    crit: Option<serde_json::Value>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The claims of an AESP access token: the registered ones and the security context.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// Issuer.
    pub(crate) iss: String,
    /// Audience (a single string).
    pub(crate) aud: String,
    /// The principal id.
    pub(crate) sub: String,
    /// The token id (a UUID v7).
    pub(crate) jti: String,
    /// Issued at (Unix seconds).
    pub(crate) iat: u64,
    /// Expires at (Unix seconds).
    pub(crate) exp: u64,
    /// The principal's tenant.
    pub(crate) tenant: String,
    /// `USER`, `SERVICE_ACCOUNT` or `SYSTEM_ACCOUNT`.
    pub(crate) principal_type: String,
    /// Roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) roles: Vec<String>,
    /// Permissions granted directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) permissions: Vec<String>,
    /// Security clearance label.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) clearance: String,
    /// Organization.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) org: String,
    /// Business unit.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) business_unit: String,
    /// Principal attributes (policies read them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) attrs: BTreeMap<String, String>,
    /// Whether a second factor was verified.
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) mfa: bool,
    /// The refresh-token family the token was issued from; empty when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) fid: String,
}

/// The signing input (`base64url(header).base64url(claims)`) of a new token.
pub(crate) fn signing_input(kid: &str, claims: &Claims) -> Result<String> {
    let header = Header { alg: "EdDSA".into(), typ: Some("JWT".into()), kid: kid.to_owned(), crit: None };
    let header = serde_json::to_vec(&header)
        .map_err(|e| Error::internal("cannot encode a JWT header").with_source(e))?;
    let claims =
        serde_json::to_vec(claims).map_err(|e| Error::internal("cannot encode JWT claims").with_source(e))?;
    Ok(format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims)))
}

/// The compact token from its signing input and signature.
pub(crate) fn assemble(signing_input: &str, signature: &[u8]) -> String {
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A token split and decoded, not yet verified.
#[derive(Debug)]
pub(crate) struct Unverified<'a> {
    pub(crate) kid: String,
    pub(crate) signing_input: &'a str,
    pub(crate) signature: Vec<u8>,
    pub(crate) claims: Claims,
}

/// The error for anything wrong with a token's form or signature: no detail for the caller.
pub(crate) fn malformed() -> Error {
    Error::new(ErrorCode::AuthenticationFailed, "the token is not a valid access token")
}

/// Splits and decodes `token`; refuses anything that is not an AESP EdDSA JWT. Never panics.
pub(crate) fn parse(token: &str) -> Result<Unverified<'_>> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed());
    }
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let signing_input = token.get(..header.len() + 1 + claims.len()).ok_or_else(malformed)?;
    let header: Header = decode_json(header)?;
    if header.alg != "EdDSA" || header.kid.is_empty() || header.crit.is_some() {
        return Err(malformed());
    }
    if header.typ.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("JWT")) {
        return Err(malformed());
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| malformed())?;
    if signature.len() != 64 {
        return Err(malformed());
    }
    Ok(Unverified { kid: header.kid, signing_input, signature, claims: decode_json(claims)? })
}

/// The `iss` claim of a token without verifying anything (to tell our tokens from another
/// issuer's), or `None` if it does not decode.
pub(crate) fn peek_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let claims = token.split('.').nth(1)?;
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    decode_json::<Iss>(claims).ok().map(|c| c.iss)
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| malformed())?;
    serde_json::from_slice(&bytes).map_err(|_| malformed())
}

/// The JWKS document of `keys`: one `OKP`/`Ed25519` key per entry with its `kid`,
/// `alg: EdDSA` and `use: sig`.
pub(crate) fn jwks(keys: &[PublicKey]) -> String {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .filter(|k| k.algorithm == SignatureAlgorithm::Ed25519)
        .map(|k| {
            serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(&k.bytes),
                "kid": k.key_id,
                "alg": "EdDSA",
                "use": "sig",
            })
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

#[cfg(test)]
mod tests {
    use aesp_core::{Ed25519Signer, Signer as _};

    use super::*;

    fn token(signer: &Ed25519Signer, claims: &Claims) -> String {
        let input = signing_input(signer.key_id(), claims).unwrap();
        assemble(&input, &signer.sign_now(input.as_bytes()))
    }

    #[test]
    fn round_trip_and_refusals() {
        let signer = Ed25519Signer::from_seed(&[3; 32]);
        let claims = Claims { iss: "aesp".into(), sub: "p".into(), exp: 10, ..Claims::default() };
        let text = token(&signer, &claims);
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed.claims, claims);
        assert_eq!(parsed.kid, signer.key_id());
        signer.public_key().verify(parsed.signing_input.as_bytes(), &parsed.signature).unwrap();
        assert_eq!(peek_issuer(&text).as_deref(), Some("aesp"));

        // `alg: none`, HMAC and a missing kid are refused before any key is looked at.
        for header in [r#"{"alg":"none","kid":"k"}"#, r#"{"alg":"HS256","kid":"k"}"#, r#"{"alg":"EdDSA"}"#] {
            let forged = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), text.split_once('.').unwrap().1);
            assert!(parse(&forged).is_err(), "{header}");
        }
        let crit = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","kid":"k","crit":["x"]}"#),
            text.split_once('.').unwrap().1
        );
        assert!(parse(&crit).is_err());
        for garbage in ["", ".", "..", "a.b.c", "a.b.c.d", "é.é.é", &"a".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(parse(garbage).is_err(), "{garbage}");
        }
        // Padding is not canonical.
        assert!(parse(&format!("{text}==")).is_err());
    }

    #[test]
    fn jwks_lists_okp_keys() {
        let signer = Ed25519Signer::from_seed(&[4; 32]);
        let doc: serde_json::Value = serde_json::from_str(&jwks(&[signer.public_key().clone()])).unwrap();
        let key = &doc["keys"][0];
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["kid"], signer.key_id());
        assert_eq!(URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap(), signer.public_key().bytes);
    }
}
