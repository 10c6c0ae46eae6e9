//! `edgesync token`: mint a bearer token with the configured secret (the
//! same environment / data-directory resolution as `serve`, so it works with
//! the secret `serve` generated).

use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use edgesync_core::auth::{mint, Expectations};
use edgesync_server::settings::{self, MissingSecret};

/// Whom the token is for and how long it lasts.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user (`sub` claim), 1 to 256 bytes.
    #[arg(long, value_parser = parse_sub)]
    pub sub: String,
    /// Lifetime: `30s`, `15m`, `1h`, `7d`, or plain seconds.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: u64,
    /// Data directory holding the generated secret (when
    /// `EDGESYNC_JWT_SECRET` is unset).
    #[arg(long, env = "EDGESYNC_DATA_DIR", default_value = settings::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// Longest accepted lifetime (10 years); anything longer is surely a typo.
const MAX_TTL: u64 = 10 * 365 * 86_400;

/// A `sub` the server accepts.
fn parse_sub(value: &str) -> Result<String, String> {
    if !edgesync_core::auth::is_valid_sub(value) {
        let max = edgesync_core::auth::MAX_SUB_BYTES;
        return Err(format!("must be 1 to {max} bytes"));
    }
    Ok(value.to_owned())
}

/// Parse a lifetime into seconds.
pub fn parse_ttl(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let (digits, unit) = match value.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&value[..i], Some(c)),
        _ => (value, None),
    };
    let multiplier = match unit {
        None | Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        Some(_) => return Err(format!("{value:?}: use a unit of s, m, h or d (e.g. 1h)")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 30s, 15m, 1h, 7d or 3600"))?;
    let seconds = n
        .checked_mul(multiplier)
        .filter(|s| (1..=MAX_TTL).contains(s))
        .ok_or_else(|| format!("{value:?}: must be between 1 second and 10 years"))?;
    Ok(seconds)
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    // Never a new secret here: no server would accept what it signs.
    let config = crate::serve::load_config(
        &args.data_dir,
        MissingSecret::Refuse(
            "Start `edgesync serve` once (it generates the secret), or pass the server's \
             --data-dir, or set EDGESYNC_JWT_SECRET to the server's secret.",
        ),
    )?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let expect = Expectations {
        secret: &config.jwt_secret,
        audience: config.jwt_audience.as_deref(),
        issuer: config.jwt_issuer.as_deref(),
    };
    // Not `println!`, which panics when nobody reads the output.
    writeln!(
        std::io::stdout(),
        "{}",
        mint(&expect, &args.sub, now, args.ttl)
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subs_are_what_the_server_accepts() {
        assert_eq!(parse_sub("alice"), Ok("alice".to_owned()));
        assert!(parse_sub(&"a".repeat(256)).is_ok());
        assert!(parse_sub("").is_err());
        assert!(parse_sub(&"a".repeat(257)).is_err());
    }

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("30s"), Ok(30));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert_eq!(parse_ttl("3600"), Ok(3600));
        for bad in [
            "",
            "h",
            "0",
            "1w",
            "-5",
            "1.5h",
            "99999999999999999999d",
            "5y",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn minted_tokens_verify_with_the_same_secret() {
        let secret = vec![9u8; 32];
        let expect = Expectations {
            secret: &secret,
            audience: None,
            issuer: None,
        };
        let token = mint(&expect, "alice", 1_000, 60);
        let claims = edgesync_core::auth::verify(&token, &expect, 1_030).unwrap();
        assert_eq!(claims.sub, "alice");
    }
}
