//! JWT bearer tokens for the local API. Not implemented yet: the config
//! refuses `jwt.algorithm` until it is (see `Config::validate`), so this is
//! never reached with a JWT configured.

use crate::config::Jwt;

pub(crate) fn verify(_cfg: &Jwt, _token: &str) -> Result<(), &'static str> {
    Err("JWT verification is not available in this build")
}
