//! Name rules of the contract, checked at enqueue time so that a bad name is
//! reported to the caller at once instead of failing a whole batch later.

use crate::error::Error;

/// Whether `name` is a valid collection or document id: 1–128 characters of
/// `[A-Za-z0-9._~-]`, not `.` or `..`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

pub(crate) fn check(what: &'static str, name: &str) -> Result<(), Error> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::is_valid_name;

    #[test]
    fn names() {
        for ok in ["a", "todos", "a.b_c~d-e", "..a", &"x".repeat(128)] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
