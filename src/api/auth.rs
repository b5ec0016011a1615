//! Who may use the local API: `allowed_ips` (checked first), then a bearer
//! token compared in constant time, or a JWT (see `jwt`).

use crate::agent::Shared;
use std::net::IpAddr;

/// An address range such as `10.0.0.0/8`, `::1/128`, or a bare address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an address or CIDR range such as 10.0.0.0/8 or ::1/128");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Why an auth check failed (mapped to 401 by the router; the reason is
/// logged, never sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credentials, or wrong ones.
    Unauthenticated(&'static str),
}

pub fn ip_allowed(shared: &Shared, ip: Option<IpAddr>) -> bool {
    if shared.config.allowed_ips.is_empty() {
        return true;
    }
    let Some(ip) = ip else { return false };
    shared.allowed_ips.iter().any(|c| c.contains(ip))
}

/// Checks `Authorization: Bearer …`. The reason is logged, never sent: the
/// client only learns that the token was not accepted.
pub fn check_bearer(shared: &Shared, header: Option<&str>) -> Result<(), Denied> {
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
    let expected = shared.api_token.expose();
    if !expected.is_empty() && crate::util::ct_eq(token.as_bytes(), expected.as_bytes()) {
        return Ok(());
    }
    if shared.config.jwt.algorithm.is_some() && token.matches('.').count() == 2 {
        return super::jwt::verify(&shared.config.jwt, token).map_err(Denied::Unauthenticated);
    }
    Err(Denied::Unauthenticated("token does not match"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1/128")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "1.2.3.4/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
