//! Names clients choose (collections, document ids, idempotency keys) and
//! the escaping that keeps user-controlled strings from ever shaping a key.

/// Longest collection name or document id.
pub const MAX_NAME_LEN: usize = 128;

/// Longest `Idempotency-Key` (and batch item `id`).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Whether `name` is a valid collection name or document id: 1–128
/// characters of `[A-Za-z0-9._~-]` (RFC 3986 "unreserved"), not `.` or `..`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name.bytes().all(is_unreserved)
}

/// Whether `key` is a valid idempotency key: 1–255 visible ASCII characters.
pub fn is_valid_idempotency_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_graphic())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-')
}

/// Percent-encode every byte outside `[A-Za-z0-9._~-]` (so in particular
/// `/` and `%`), making the result safe as one key segment: no escaped
/// string contains the `/` that separates segments, and escaping is
/// injective, so two different user ids never share a key prefix.
pub fn escape_segment(raw: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(raw.len());
    for &b in raw.as_bytes() {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn name_rules() {
        for ok in ["a", "todos", "A-b_c.d~e", "..a", "a..", &"x".repeat(128)] {
            assert!(is_valid_name(ok), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "a/b",
            "%2F",
            "é",
            &"x".repeat(129),
            "a\0",
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn idempotency_key_rules() {
        assert!(is_valid_idempotency_key("a1-B2_c3:{}/"));
        assert!(!is_valid_idempotency_key(""));
        assert!(!is_valid_idempotency_key("has space"));
        assert!(!is_valid_idempotency_key(&"k".repeat(256)));
        assert!(!is_valid_idempotency_key("ü"));
    }

    #[test]
    fn escaping_examples() {
        assert_eq!(escape_segment("alice"), "alice");
        assert_eq!(escape_segment("a/log/1"), "a%2Flog%2F1");
        assert_eq!(escape_segment("100%"), "100%25");
        assert_eq!(escape_segment("é"), "%C3%A9");
    }

    fn unescape(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    proptest! {
        #[test]
        fn escaped_segments_have_no_separator_and_round_trip(s in "\\PC{0,40}") {
            let e = escape_segment(&s);
            prop_assert!(!e.contains('/'));
            prop_assert!(e.bytes().all(|b| is_unreserved(b) || b == b'%'));
            prop_assert_eq!(unescape(&e), s.as_bytes().to_vec());
        }

        #[test]
        fn escaping_is_injective(a in "\\PC{0,12}", b in "\\PC{0,12}") {
            prop_assume!(a != b);
            prop_assert_ne!(escape_segment(&a), escape_segment(&b));
        }
    }
}
