//! JWT bearer tokens on the local API (RFC 7519, compact JWS of RFC 7515),
//! verified with ring: HS256, RS256 and EdDSA (Ed25519, RFC 8037).
//!
//! Every key pins its algorithm: a token is checked only with keys of the
//! algorithm its header names, so `none`, an algorithm no key has, or an
//! HS256 token "signed" with an RSA public key's bytes are refused. `exp`
//! is required; `nbf`, `iat`, `iss` and `aud` are checked, with
//! `jwt.leeway` for clock skew. The reasons are logged by the caller,
//! never sent, and never quote the token.

use crate::config::jwt::JwtKey;
use crate::config::{Jwt, JwtAlgorithm};
use crate::protocol::scope::Scope;
use crate::protocol::tenant::Tenant;
use base64::Engine;
use ring::signature::{UnparsedPublicKey, ED25519, RSA_PKCS1_2048_8192_SHA256};
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

/// Who a valid token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) sub: String,
    /// The scopes of the space-separated `scope` claim that this agent
    /// knows; others (of other services) are left out.
    pub(crate) scopes: Vec<Scope>,
    /// From the claim `jwt.tenant_claim` names.
    pub(crate) tenant: Option<Tenant>,
}

/// Checks `token` against `keys` and the claims rules of `cfg` at `now`.
/// The error is a reason for the log.
pub(crate) fn verify(
    token: &str,
    keys: &[JwtKey],
    cfg: &Jwt,
    now: SystemTime,
) -> Result<Claims, &'static str> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("JWT is not three dot-separated parts");
    };
    let header: Value = serde_json::from_slice(&b64(h)?).map_err(|_| "JWT header is not JSON")?;
    let alg = match header["alg"].as_str() {
        Some("HS256") => JwtAlgorithm::HS256,
        Some("RS256") => JwtAlgorithm::RS256,
        Some("EdDSA") => JwtAlgorithm::EdDSA,
        Some("none") => return Err("JWT with alg none"),
        _ => return Err("JWT algorithm is not one this agent accepts"),
    };
    if header.get("crit").is_some() {
        return Err("JWT header has crit extensions, which this agent does not support");
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err("JWT kid is not a string"),
    };
    let signature = b64(s)?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    let mut candidates = keys
        .iter()
        .filter(|k| k.algorithm == alg)
        .filter(|k| kid.is_none_or(|kid| k.kid == kid))
        .peekable();
    if candidates.peek().is_none() {
        return Err(if kid.is_some() {
            "JWT kid names no key of its algorithm"
        } else {
            "no key of the JWT's algorithm is configured"
        });
    }
    if !candidates.any(|k| signature_ok(k, signed, &signature)) {
        return Err("JWT signature does not verify");
    }
    let claims: Value = serde_json::from_slice(&b64(p)?).map_err(|_| "JWT payload is not JSON")?;
    check_claims(&claims, cfg, now)
}

fn b64(part: &str) -> Result<Vec<u8>, &'static str> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| "JWT part is not base64url")
}

fn signature_ok(key: &JwtKey, signed: &[u8], signature: &[u8]) -> bool {
    match key.algorithm {
        JwtAlgorithm::HS256 => {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key.material);
            ring::hmac::verify(&k, signed, signature).is_ok()
        }
        JwtAlgorithm::RS256 => UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key.material)
            .verify(signed, signature)
            .is_ok(),
        JwtAlgorithm::EdDSA => UnparsedPublicKey::new(&ED25519, &key.material)
            .verify(signed, signature)
            .is_ok(),
    }
}

/// `exp` (required), `nbf`, `iat`, `iss`, `aud`, with `cfg.leeway`.
fn check_claims(claims: &Value, cfg: &Jwt, now: SystemTime) -> Result<Claims, &'static str> {
    if !claims.is_object() {
        return Err("JWT payload is not an object");
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let leeway = cfg.leeway.as_secs_f64();
    let time = |name: &str| -> Result<Option<f64>, &'static str> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or("JWT time claim is not a number"),
        }
    };
    let exp = time("exp")?.ok_or("JWT has no exp")?;
    if now > exp + leeway {
        return Err("JWT has expired");
    }
    if time("nbf")?.is_some_and(|nbf| now + leeway < nbf) {
        return Err("JWT is not valid yet (nbf)");
    }
    if time("iat")?.is_some_and(|iat| now + leeway < iat) {
        return Err("JWT was issued in the future (iat)");
    }
    if !cfg.issuer.is_empty() && claims["iss"].as_str() != Some(cfg.issuer.as_str()) {
        return Err("JWT iss is not jwt.issuer");
    }
    if !cfg.audience.is_empty() {
        let ours = |v: &Value| v.as_str() == Some(cfg.audience.as_str());
        let ok = match &claims["aud"] {
            Value::Array(list) => list.iter().any(ours),
            v => ours(v),
        };
        if !ok {
            return Err("JWT aud does not name jwt.audience");
        }
    }
    let tenant = match claims.get(cfg.tenant_claim.as_str()) {
        None => None,
        Some(Value::String(t)) => {
            Some(Tenant::parse(t).map_err(|_| "JWT tenant claim is not a valid tenant name")?)
        }
        Some(_) => return Err("JWT tenant claim is not a string"),
    };
    Ok(Claims {
        // Signed by the issuer, but it reaches log lines: printable only.
        sub: claims["sub"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(128)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
        tenant,
        scopes: claims["scope"]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(Scope::parse)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;
    use serde_json::json;
    use std::time::Duration;

    fn enc(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn dec(text: &str) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .unwrap()
    }

    fn key(kid: &str, algorithm: JwtAlgorithm, material: Vec<u8>) -> JwtKey {
        JwtKey {
            kid: kid.into(),
            algorithm,
            material,
        }
    }

    /// The time the RFC examples were valid at (their exp is 1300819380).
    fn rfc_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_300_819_000)
    }

    /// RFC 7515 A.1: the HS256 example, verified with its JWK `k`.
    #[test]
    fn rfc7515_hs256_example() {
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let k = dec("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow");
        let keys = [key("", JwtAlgorithm::HS256, k)];
        let cfg = Jwt::default();
        let claims = verify(token, &keys, &cfg, rfc_time()).unwrap();
        assert_eq!(claims.sub, "");
        assert_eq!(
            verify(token, &keys, &cfg, SystemTime::now()),
            Err("JWT has expired")
        );
        let tampered = token.replace(".eyJpc3MiOiJqb2Ui", ".eyJpc3MiOiJqb2Uj");
        assert_eq!(
            verify(&tampered, &keys, &cfg, rfc_time()),
            Err("JWT signature does not verify")
        );
    }

    /// RFC 7515 A.2: the RS256 example, with its JWK (n, e) as an
    /// RSAPublicKey DER.
    #[test]
    fn rfc7515_rs256_example() {
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
        let n = dec("ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ");
        let e = dec("AQAB");
        let keys = [key("", JwtAlgorithm::RS256, rsa_public_key_der(&n, &e))];
        assert!(verify(token, &keys, &Jwt::default(), rfc_time()).is_ok());
        // The same key's bytes as an HS256 secret: alg confusion refused.
        let confused = [key("", JwtAlgorithm::HS256, rsa_public_key_der(&n, &e))];
        assert_eq!(
            verify(token, &confused, &Jwt::default(), rfc_time()),
            Err("no key of the JWT's algorithm is configured")
        );
    }

    /// RFC 8037 A.4: the Ed25519 signature over "Example of Ed25519
    /// signing" (a JWS without exp, so the signature is checked alone).
    #[test]
    fn rfc8037_ed25519_example() {
        let x = dec("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        let k = key("", JwtAlgorithm::EdDSA, x);
        let signed = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let sig = dec("hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg");
        assert!(signature_ok(&k, signed, &sig));
        let mut bad = sig.clone();
        bad[0] ^= 1;
        assert!(!signature_ok(&k, signed, &bad));
    }

    /// DER RSAPublicKey { modulus, publicExponent } from big-endian bytes.
    fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
        fn int(b: &[u8]) -> Vec<u8> {
            let mut v = b.to_vec();
            if v[0] & 0x80 != 0 {
                v.insert(0, 0);
            }
            tlv(0x02, &v)
        }
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            match body.len() {
                n if n < 0x80 => out.push(n as u8),
                n if n < 0x100 => out.extend([0x81, n as u8]),
                n => out.extend([0x82, (n >> 8) as u8, n as u8]),
            }
            out.extend_from_slice(body);
            out
        }
        tlv(0x30, &[int(n), int(e)].concat())
    }

    /// An EdDSA token for `claims`, signed with a fixed test key.
    fn ed_token(header: Value, claims: Value) -> (String, JwtKey) {
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap();
        let signed = format!(
            "{}.{}",
            enc(header.to_string().as_bytes()),
            enc(claims.to_string().as_bytes())
        );
        let sig = pair.sign(signed.as_bytes());
        let public = pair.public_key().as_ref().to_vec();
        (
            format!("{signed}.{}", enc(sig.as_ref())),
            key("k1", JwtAlgorithm::EdDSA, public),
        )
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn claims_are_checked_with_leeway() {
        let cfg = Jwt {
            issuer: "coord".into(),
            audience: "vendetta".into(),
            ..Jwt::default()
        };
        let t = now();
        let good = json!({"sub": "ci", "exp": t + 60, "iss": "coord", "aud": ["x", "vendetta"], "scope": "session:read repo:write system:read"});
        let (token, k) = ed_token(json!({"alg": "EdDSA", "kid": "k1"}), good.clone());
        let claims = verify(&token, std::slice::from_ref(&k), &cfg, SystemTime::now()).unwrap();
        assert_eq!(
            claims,
            Claims {
                sub: "ci".into(),
                scopes: vec![Scope::SessionRead, Scope::SystemRead],
                tenant: None,
            }
        );
        let cases: [(Value, &str); 8] = [
            (json!({"iss": "coord", "aud": "vendetta"}), "JWT has no exp"),
            (
                json!({"exp": t - 31, "iss": "coord", "aud": "vendetta"}),
                "JWT has expired",
            ),
            (
                json!({"exp": t + 60, "nbf": t + 31, "iss": "coord", "aud": "vendetta"}),
                "JWT is not valid yet (nbf)",
            ),
            (
                json!({"exp": t + 60, "iat": t + 31, "iss": "coord", "aud": "vendetta"}),
                "JWT was issued in the future (iat)",
            ),
            (
                json!({"exp": t + 60, "iss": "other", "aud": "vendetta"}),
                "JWT iss is not jwt.issuer",
            ),
            (
                json!({"exp": t + 60, "iss": "coord", "aud": ["x"]}),
                "JWT aud does not name jwt.audience",
            ),
            (
                json!({"exp": "soon", "iss": "coord", "aud": "vendetta"}),
                "JWT time claim is not a number",
            ),
            (json!([1, 2]), "JWT payload is not an object"),
        ];
        for (claims, reason) in cases {
            let (token, k) = ed_token(json!({"alg": "EdDSA"}), claims.clone());
            assert_eq!(
                verify(&token, &[k], &cfg, SystemTime::now()),
                Err(reason),
                "{claims}"
            );
        }
        // Within the leeway: a token just expired, or valid in a moment.
        let (token, k) = ed_token(
            json!({"alg": "EdDSA"}),
            json!({"exp": t - 5, "nbf": t + 5, "iss": "coord", "aud": "vendetta"}),
        );
        assert!(verify(&token, &[k], &cfg, SystemTime::now()).is_ok());
    }

    #[test]
    fn the_tenant_claim_is_read_and_checked() {
        let cfg = Jwt {
            tenant_claim: "org".into(),
            ..Jwt::default()
        };
        let t = now();
        let ok = |claims: Value| {
            let (token, k) = ed_token(json!({"alg": "EdDSA"}), claims);
            verify(&token, &[k], &cfg, SystemTime::now())
        };
        let c = ok(json!({"exp": t + 60, "org": "team-a", "tenant": "ignored", "sub": "x\ny"}))
            .unwrap();
        assert_eq!(c.tenant.as_ref().map(Tenant::as_str), Some("team-a"));
        assert_eq!(c.sub, "x?y", "control characters never reach a log line");
        assert_eq!(
            ok(json!({"exp": t + 60, "tenant": "b"})).unwrap().tenant,
            None
        );
        assert_eq!(
            ok(json!({"exp": t + 60, "org": "../b"})),
            Err("JWT tenant claim is not a valid tenant name")
        );
        for bad in [json!(["a"]), json!(null), json!(7)] {
            assert_eq!(
                ok(json!({"exp": t + 60, "org": bad})),
                Err("JWT tenant claim is not a string")
            );
        }
        assert_eq!(
            ok(json!({"exp": t + 60, "org": ".."})),
            Err("JWT tenant claim is not a valid tenant name")
        );
    }

    #[test]
    fn headers_pin_the_algorithm_and_the_key() {
        let cfg = Jwt::default();
        let claims = json!({"exp": now() + 60});
        let (token, k) = ed_token(json!({"alg": "EdDSA", "kid": "k1"}), claims.clone());
        let other_kid = JwtKey {
            kid: "k2".into(),
            ..k.clone()
        };
        assert_eq!(
            verify(&token, &[other_kid], &cfg, SystemTime::now()),
            Err("JWT kid names no key of its algorithm")
        );
        let secret = key("k1", JwtAlgorithm::HS256, vec![1; 32]);
        let (none, _) = ed_token(json!({"alg": "none"}), claims.clone());
        for (token, reason) in [
            (none, "JWT with alg none"),
            (
                ed_token(json!({"alg": "ES256"}), claims.clone()).0,
                "JWT algorithm is not one this agent accepts",
            ),
            (
                ed_token(json!({"alg": "EdDSA", "crit": ["b64"]}), claims.clone()).0,
                "JWT header has crit extensions, which this agent does not support",
            ),
            (
                ed_token(json!({"alg": "EdDSA", "kid": 7}), claims.clone()).0,
                "JWT kid is not a string",
            ),
            ("a.b".to_string(), "JWT is not three dot-separated parts"),
            (
                "a.b.c.d".to_string(),
                "JWT is not three dot-separated parts",
            ),
            ("!!.b.c".to_string(), "JWT part is not base64url"),
            (format!("{}.e30.", enc(b"nope")), "JWT header is not JSON"),
        ] {
            assert_eq!(
                verify(
                    &token,
                    &[k.clone(), secret.clone()],
                    &cfg,
                    SystemTime::now()
                ),
                Err(reason),
                "{token}"
            );
        }
        // A wrong key of the right algorithm and kid fails; beside the
        // right one (a rotation in progress) each is tried.
        let wrong = JwtKey {
            material: ring::signature::Ed25519KeyPair::from_seed_unchecked(&[8u8; 32])
                .unwrap()
                .public_key()
                .as_ref()
                .to_vec(),
            ..k.clone()
        };
        assert_eq!(
            verify(
                &token,
                std::slice::from_ref(&wrong),
                &cfg,
                SystemTime::now()
            ),
            Err("JWT signature does not verify")
        );
        assert!(verify(&token, &[wrong, k.clone()], &cfg, SystemTime::now()).is_ok());
    }

    proptest::proptest! {
        /// Any bearer token: refused with a reason, never a panic, and
        /// never accepted without the key.
        #[test]
        fn prop_no_forged_token_passes(
            h in "[A-Za-z0-9_.-]{0,60}",
            p in "[A-Za-z0-9_.-]{0,80}",
            s in "[A-Za-z0-9_.-]{0,90}",
        ) {
            let token = format!("{h}.{p}.{s}");
            let keys = [key("", JwtAlgorithm::HS256, vec![3; 32])];
            proptest::prop_assert!(verify(&token, &keys, &Jwt::default(), SystemTime::now()).is_err());
        }

        /// A valid token with one byte of its signature changed fails.
        #[test]
        fn prop_a_flipped_signature_bit_fails(at in 0usize..64, bit in 0u8..8) {
            let (token, k) = ed_token(json!({"alg": "EdDSA"}), json!({"exp": now() + 60}));
            let (signed, sig) = token.rsplit_once('.').unwrap();
            let mut raw = dec(sig);
            raw[at] ^= 1 << bit;
            let forged = format!("{signed}.{}", enc(&raw));
            proptest::prop_assert_eq!(
                verify(&forged, &[k], &Jwt::default(), SystemTime::now()),
                Err("JWT signature does not verify")
            );
        }
    }
}
