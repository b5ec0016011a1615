//! Who may use the local API: `allowed_ips` (checked first), then a bearer
//! token compared in constant time, or a JWT (see `jwt`).

use crate::protocol::scope::Scope;
use crate::protocol::tenant::Tenancy;
use crate::runtime::Runtime;
use std::net::IpAddr;
use std::time::SystemTime;

/// Who a request comes from, once its token was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The static token (`api_token`, else `auth_token`, else generated).
    Token,
    /// A valid JWT, with what it claims.
    Jwt(super::jwt::Claims),
}

impl Caller {
    /// Whether this caller holds `needed` (or admin).
    pub(crate) fn may(&self, rt: &Runtime, needed: Scope) -> bool {
        match self {
            Caller::Token => needed.granted_by(&rt.config.api_token_scopes),
            Caller::Jwt(claims) => needed.granted_by(&claims.scopes),
        }
    }

    /// Whose sessions the caller reaches: a JWT's tenant, every tenant's
    /// with `admin`. The static token has no tenant.
    pub(crate) fn tenancy(&self, rt: &Runtime) -> Tenancy {
        let all = self.may(rt, Scope::Admin);
        match self {
            Caller::Token => Tenancy { tenant: None, all },
            Caller::Jwt(c) => Tenancy {
                tenant: c.tenant.clone(),
                all,
            },
        }
    }

    /// The caller as logs name it: the token, or the JWT's `sub`.
    pub(crate) fn name(&self) -> String {
        match self {
            Caller::Token => "api_token".into(),
            Caller::Jwt(c) if c.sub.is_empty() => "jwt".into(),
            Caller::Jwt(c) => format!("jwt:{}", c.sub),
        }
    }
}

/// Why an auth check failed (mapped to 401 by the router; the reason is
/// logged, never sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No credentials, or wrong ones.
    Unauthenticated(&'static str),
}

pub(crate) fn ip_allowed(rt: &Runtime, ip: Option<IpAddr>) -> bool {
    let allowed = &rt.config.allowed_ips;
    if allowed.is_empty() {
        return true;
    }
    let Some(ip) = ip else { return false };
    allowed.iter().any(|c| c.contains(ip))
}

/// Checks `Authorization: Bearer …`. The reason is logged, never sent: the
/// client only learns that the token was not accepted.
pub(crate) fn check_bearer(rt: &Runtime, header: Option<&str>) -> Result<Caller, Denied> {
    let Some(value) = header else {
        return Err(Denied::Unauthenticated("no Authorization header"));
    };
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(Denied::Unauthenticated(
            "Authorization is not a Bearer token",
        ))?;
    if token.is_empty() || token.len() > 8192 {
        return Err(Denied::Unauthenticated("empty or oversized token"));
    }
    let expected = rt.api_token.expose();
    if !expected.is_empty() && ct_eq(token.as_bytes(), expected.as_bytes()) {
        return Ok(Caller::Token);
    }
    if !rt.jwt_keys.is_empty() && token.matches('.').count() == 2 {
        return super::jwt::verify(token, &rt.jwt_keys, &rt.config.jwt, SystemTime::now())
            .map(Caller::Jwt)
            .map_err(Denied::Unauthenticated);
    }
    Err(Denied::Unauthenticated("token does not match"))
}

/// Compares secrets without leaking where they differ.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
