//! The rules numeric flags obey, checked where the values enter.
//!
//! Each rule is a clap value parser, so `--batch-size 0` is refused before
//! anything runs. Settings that arrive another way — a key of `--config
//! run.toml`, a `[base]` or `[grid]` entry of a sweep file, the `args.json`
//! of a run being resumed — go through the same parser of the same flag
//! ([`check_setting`]), so one rule serves every way a value can arrive.

use std::path::Path;
use std::str::FromStr;

use ept::{Error, Result};

/// A count: an integer ≥ 1 (batch sizes, lengths, steps, limits).
pub fn count<T: FromStr + PartialOrd + From<u8>>(s: &str) -> std::result::Result<T, String> {
    match s.trim().parse::<T>() {
        Ok(v) if v >= T::from(1) => Ok(v),
        _ => Err("expected an integer ≥ 1".into()),
    }
}

/// A rate: a finite real > 0 (learning rates, LoRA's alpha).
pub fn rate(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err("expected a finite number > 0".into()),
    }
}

/// A finite real ≥ 0 (weight decay, a clipping norm where 0 turns it off).
pub fn non_negative(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err("expected a finite number ≥ 0".into()),
    }
}

/// A share: a real from 0 to 1.
pub fn fraction(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err("expected a number from 0 to 1".into()),
    }
}

/// Checks one number that did not come from the command line (`key` in the
/// file `origin`, written as `text`) with the value parser of the flag of the
/// same name in `cmd`. Other types are checked when the settings are
/// deserialised. The error names the file, the key and the rule.
pub fn check_setting(cmd: &clap::Command, origin: &Path, key: &str, text: &str) -> Result<()> {
    let id = key.replace('-', "_");
    let Some(long) = cmd
        .get_arguments()
        .find(|a| a.get_id() == id.as_str())
        .and_then(|a| a.get_long())
    else {
        return Ok(());
    };
    // The flag alone on a command line of its own: its parser, nothing else, runs.
    cmd.clone()
        .try_get_matches_from([cmd.get_name().to_string(), format!("--{long}={text}")])
        .map(drop)
        .map_err(|e| {
            let why = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| one_line(&e));
            Error::field(origin, key, format!("{why} (the value given is {text})"))
        })
}

/// clap's message without its `error: ` prefix, usage and hints: its first line.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_accept_their_range_and_refuse_the_rest() {
        assert_eq!(count::<usize>("3"), Ok(3));
        for bad in ["0", "-1", "1.5", "x", ""] {
            assert!(count::<usize>(bad).is_err(), "{bad}");
        }
        assert_eq!(rate("3e-4"), Ok(3e-4));
        for bad in ["0", "-0.1", "nan", "inf", "x"] {
            assert!(rate(bad).is_err(), "{bad}");
        }
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(non_negative("-1e-9").is_err() && non_negative("NaN").is_err());
        assert_eq!(fraction("1"), Ok(1.0));
        assert!(fraction("1.01").is_err() && fraction("nan").is_err());
    }
}
