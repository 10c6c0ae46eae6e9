//! Small HTTP parsing helpers: query strings, entity tags, media types,
//! `Prefer`.

use http::HeaderValue;

use crate::engine::Cond;

/// The byte two hex digits spell (`from_str_radix` alone would also take
/// a sign: `%+1`).
fn hex_byte(hex: &str) -> Option<u8> {
    if hex.len() == 2 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        u8::from_str_radix(hex, 16).ok()
    } else {
        None
    }
}

/// Decode one `application/x-www-form-urlencoded` component; `None` if it
/// is not valid percent-encoding of UTF-8.
pub(crate) fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(hex_byte(raw.get(i + 1..i + 3)?)?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The value of a field that a request may carry once (`Authorization`,
/// `Content-Type`, `Idempotency-Key`); `Err(Repeated)` when it carries
/// more: which of them an intermediary acted on is unknowable, so none is
/// taken.
pub(crate) fn single_field<'a>(
    headers: &'a http::HeaderMap,
    name: &http::HeaderName,
) -> Result<Option<&'a HeaderValue>, Repeated> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (first, None) => Ok(first),
        _ => Err(Repeated),
    }
}

/// A singleton header field appeared more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Repeated;

/// A path segment with the percent-encoded octets that stand for
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded, as RFC 3986
/// §6.2.2.2 has it: `a%7Eb` and `a~b` name the same document. Every other
/// escape stays as sent, so it still fails name validation: `%2F` never
/// becomes a separator (and `%2E%2E` decodes to `..`, which is no name).
pub(crate) fn normalize_segment(raw: &str) -> std::borrow::Cow<'_, str> {
    if !raw.contains('%') {
        return raw.into();
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let decoded = rest
            .get(at + 1..at + 3)
            .and_then(hex_byte)
            .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        match decoded {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[at + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out.into()
}

/// The query parameters, each name once. Names are decoded here, so that a
/// parameter spelled with escapes (`%6cimit`) is still found twice; a value
/// is decoded only when its parameter is read, so an unknown parameter is
/// ignored whatever it carries (a cache-buster `_=%FF` included), and so is
/// a name that does not decode (it cannot be one the server knows).
pub(crate) fn query_params(query: Option<&str>) -> Result<Query<'_>, QueryError> {
    let mut out: Vec<(String, &str)> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(key) = percent_decode(k) else {
            continue;
        };
        // Which of two values a server picks differs between servers (and
        // proxies): refusing both is the only answer that cannot surprise.
        if out.iter().any(|(existing, _)| *existing == key) {
            return Err(QueryError::Repeated(key));
        }
        out.push((key, v));
    }
    Ok(Query(out))
}

/// Query parameters, each name once, values still percent-encoded.
#[derive(Debug, Default)]
pub(crate) struct Query<'a>(Vec<(String, &'a str)>);

impl Query<'_> {
    /// The decoded value of `name`, if given.
    pub fn get(&self, name: &str) -> Result<Option<String>, QueryError> {
        let Some((_, raw)) = self.0.iter().find(|(k, _)| k == name) else {
            return Ok(None);
        };
        percent_decode(raw)
            .map(Some)
            .ok_or_else(|| QueryError::Malformed(name.to_owned()))
    }
}

/// Why a query string was refused; each names the parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueryError {
    /// Not valid percent-encoded UTF-8.
    Malformed(String),
    /// Given more than once.
    Repeated(String),
}

/// Parse a non-negative decimal integer written plainly (no sign, no
/// spaces, no leading `+`).
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The version an entity tag's opaque part names, if it is one this server
/// could have issued: `"<n>"` with `n` in canonical decimal. Tags compare
/// character by character (RFC 9110 §8.8.3.2), so `"07"` is not `"7"`.
pub(crate) fn parse_version_tag(opaque: &str) -> Option<u64> {
    if opaque.len() > 1 && opaque.starts_with('0') {
        return None;
    }
    parse_u64(opaque)
}

/// One entity tag from an `If-Match`/`If-None-Match` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ETag {
    pub weak: bool,
    pub opaque: String,
}

/// An `If-Match`/`If-None-Match` header: `*` or a list of tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ETagList {
    Any,
    Tags(Vec<ETag>),
}

/// Parse an entity-tag list (RFC 9110 §8.8.3, §13.1.1). Several header
/// lines are joined with commas first. `Err` on syntax errors (e.g. an
/// unquoted tag). A field that is present but empty (or only commas) is a
/// valid empty list, `Some(Tags([]))`: what it means is up to the header.
pub(crate) fn parse_etag_list<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
) -> Result<Option<ETagList>, ()> {
    let mut joined = String::new();
    let mut any_line = false;
    for v in values {
        any_line = true;
        let s = v.to_str().map_err(|_| ())?;
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(s);
    }
    if !any_line {
        return Ok(None);
    }
    let trimmed = joined.trim();
    if trimmed == "*" {
        return Ok(Some(ETagList::Any));
    }
    let mut tags = Vec::new();
    let mut rest = trimmed;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        if rest.is_empty() {
            break;
        }
        let (weak, after) = match rest.strip_prefix("W/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let after = after.strip_prefix('"').ok_or(())?;
        let end = after.find('"').ok_or(())?;
        let opaque = &after[..end];
        if opaque.bytes().any(|b| b < 0x21 || b == 0x7f) {
            return Err(());
        }
        tags.push(ETag {
            weak,
            opaque: opaque.to_owned(),
        });
        rest = &after[end + 1..];
        let next = rest.trim_start();
        if !(next.is_empty() || next.starts_with(',')) {
            return Err(());
        }
    }
    Ok(Some(ETagList::Tags(tags)))
}

impl ETagList {
    /// As a write precondition on versions: `If-Match` compares strongly
    /// (weak tags never match), `If-None-Match` weakly.
    pub fn to_cond(&self, strong: bool) -> Cond {
        match self {
            ETagList::Any => Cond::Any,
            ETagList::Tags(tags) => Cond::Versions(
                tags.iter()
                    .filter(|t| !(strong && t.weak))
                    .filter_map(|t| parse_version_tag(&t.opaque))
                    .collect(),
            ),
        }
    }

    /// Whether the list matches the current tag `"n"` under weak
    /// comparison (`If-None-Match` on GET/HEAD).
    pub fn matches_weakly(&self, n: u64) -> bool {
        match self {
            ETagList::Any => true,
            ETagList::Tags(tags) => tags.iter().any(|t| parse_version_tag(&t.opaque) == Some(n)),
        }
    }

    /// Whether `If-Match` holds for a representation whose tag is `"n"`
    /// (`None`: it has no tag). Strong comparison: weak tags never match.
    pub fn matches_strongly(&self, current: Option<u64>) -> bool {
        match self {
            ETagList::Any => true,
            ETagList::Tags(tags) => current.is_some_and(|n| {
                tags.iter()
                    .any(|t| !t.weak && parse_version_tag(&t.opaque) == Some(n))
            }),
        }
    }
}

/// The media type of a `Content-Type` value, lower-cased, without
/// parameters.
pub(crate) fn media_type(value: Option<&HeaderValue>) -> Option<String> {
    let s = value?.to_str().ok()?;
    let essence = s.split(';').next()?.trim().to_ascii_lowercase();
    (!essence.is_empty()).then_some(essence)
}

/// The `wait` preference of a `Prefer` header (RFC 7240 §4.3), if any.
/// Other preferences are ignored as the RFC requires, whatever they carry
/// (a quoted value may hold `,`, `;` or `=`, and bytes that are not
/// UTF-8); a `wait` whose value is not a non-negative integer is an error
/// (docs/protocol-decisions.md).
pub(crate) fn prefer_wait<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
) -> Result<Option<u64>, ()> {
    for value in values {
        for preference in split_unquoted(value.as_bytes(), b',') {
            // Parameters (`; ...`) qualify a preference; wait has none.
            let token = split_unquoted(preference, b';')[0].trim_ascii();
            let (name, v) = match token.iter().position(|&b| b == b'=') {
                Some(at) => (&token[..at], &token[at + 1..]),
                None => (token, &b""[..]),
            };
            if name.trim_ascii().eq_ignore_ascii_case(b"wait") {
                let v = v.trim_ascii();
                let v = v
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v);
                let v = std::str::from_utf8(v).map_err(|_| ())?;
                return parse_u64(v).map(Some).ok_or(());
            }
        }
    }
    Ok(None)
}

/// `s` split at each `sep` outside quoted-strings (RFC 9110 §5.6.4: a
/// backslash inside quotes escapes the next byte).
fn split_unquoted(s: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in s.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn segments_decode_only_unreserved_escapes() {
        for (raw, normal) in [
            ("a~b", "a~b"),
            ("a%7Eb", "a~b"),
            ("a%7eb", "a~b"),
            ("%61%2D%5F%2e", "a-_."),
            ("a%2Fb", "a%2Fb"),
            ("%2E%2E", ".."),
            ("a%20b", "a%20b"),
            ("a%25b", "a%25b"),
            ("a%257E", "a%257E"),
            ("a%", "a%"),
            ("a%7", "a%7"),
            ("a%zz", "a%zz"),
            ("a%+7E", "a%+7E"),
            ("caf%C3%A9", "caf%C3%A9"),
        ] {
            assert_eq!(normalize_segment(raw), normal, "{raw}");
        }
    }

    #[test]
    fn etag_lists() {
        let parse = |s: &str| parse_etag_list(std::iter::once(&hv(s)));
        assert_eq!(parse("*"), Ok(Some(ETagList::Any)));
        let list = parse(r#""1", W/"2" ,"x""#).unwrap().unwrap();
        assert_eq!(list.to_cond(true), Cond::Versions(vec![1]));
        assert_eq!(list.to_cond(false), Cond::Versions(vec![1, 2]));
        assert!(list.matches_weakly(2));
        assert!(!list.matches_weakly(3));
        assert_eq!(parse("5"), Err(()));
        assert_eq!(parse(r#""5" "6""#), Err(()));
        assert_eq!(parse(r#""unterminated"#), Err(()));
        assert_eq!(parse(""), Ok(Some(ETagList::Tags(vec![]))));
        assert_eq!(parse(" , "), Ok(Some(ETagList::Tags(vec![]))));
        assert_eq!(parse_etag_list(std::iter::empty()), Ok(None));
        // Tags compare as strings: a number spelled another way is
        // another tag, whatever it means as a number.
        let padded = parse(r#""07", "0", W/"8""#).unwrap().unwrap();
        assert_eq!(padded.to_cond(true), Cond::Versions(vec![0]));
        assert!(!padded.matches_weakly(7));
        assert!(padded.matches_weakly(0));
        assert!(padded.matches_weakly(8));
        assert!(padded.matches_strongly(Some(0)));
        assert!(!padded.matches_strongly(Some(7)));
        assert!(
            !padded.matches_strongly(Some(8)),
            "weak tags never match strongly"
        );
        assert!(!padded.matches_strongly(None));
        assert!(ETagList::Any.matches_strongly(None));
        let two = [hv(r#""1""#), hv(r#""2""#)];
        assert_eq!(
            parse_etag_list(two.iter()).unwrap().unwrap().to_cond(true),
            Cond::Versions(vec![1, 2])
        );
    }

    #[test]
    fn query_strings() {
        let q = query_params(Some("since=5&limit=&after=todos%2Fa1&x&_=%FF&%ZZ=1")).unwrap();
        let get = |name| q.get(name).unwrap();
        assert_eq!(get("since").as_deref(), Some("5"));
        assert_eq!(get("limit").as_deref(), Some(""));
        assert_eq!(get("after").as_deref(), Some("todos/a1"));
        assert_eq!(get("x").as_deref(), Some(""));
        assert_eq!(get("wait"), None);
        assert_eq!(
            q.get("_").unwrap_err(),
            QueryError::Malformed("_".into()),
            "a bad value is an error only where it is read"
        );
        assert_eq!(
            query_params(Some("since=5&since=9")).unwrap_err(),
            QueryError::Repeated("since".into())
        );
        assert_eq!(
            query_params(Some("since=5&%73ince=5")).unwrap_err(),
            QueryError::Repeated("since".into())
        );
        for bad in ["a=%ZZ", "a=%C3", "a=%+1"] {
            assert_eq!(
                query_params(Some(bad)).unwrap().get("a").unwrap_err(),
                QueryError::Malformed("a".into()),
                "{bad} (a sign is no hex digit)"
            );
        }
        assert_eq!(parse_u64("007"), Some(7));
        for bad in ["", "-1", "+1", "1.0", " 1", "99999999999999999999999"] {
            assert_eq!(parse_u64(bad), None, "{bad}");
        }
    }

    #[test]
    fn prefer_and_media_types() {
        assert_eq!(
            prefer_wait(std::iter::once(&hv("respond-async, wait=10"))),
            Ok(Some(10))
        );
        assert_eq!(prefer_wait(std::iter::once(&hv("wait=abc"))), Err(()));
        assert_eq!(prefer_wait(std::iter::once(&hv("wait"))), Err(()));
        assert_eq!(
            prefer_wait(std::iter::once(&hv("Wait = 3 ; x=y"))),
            Ok(Some(3))
        );
        assert_eq!(prefer_wait(std::iter::once(&hv("respond-async"))), Ok(None));
        assert_eq!(
            prefer_wait(std::iter::once(&hv(r#"wait="7""#))),
            Ok(Some(7))
        );
        // Quoted values of other preferences are opaque: no `wait` hides
        // in them, and a bad one there is not this server's business.
        assert_eq!(
            prefer_wait(std::iter::once(&hv(r#"foo="x,wait=7", bar="a;wait=abc""#))),
            Ok(None)
        );
        assert_eq!(
            prefer_wait(std::iter::once(&hv(r#"foo="x\"wait=1, y", wait=4"#))),
            Ok(Some(4)),
            "an escaped quote does not end the quoted-string"
        );
        let obs_text = HeaderValue::from_bytes(b"foo=\"caf\xe9\", wait=2").unwrap();
        assert_eq!(prefer_wait(std::iter::once(&obs_text)), Ok(Some(2)));
        assert_eq!(
            media_type(Some(&hv("Application/JSON; charset=utf-8"))).as_deref(),
            Some("application/json")
        );
        assert_eq!(media_type(None), None);
    }

    proptest! {
        #[test]
        fn etag_parsing_never_panics(s in "[ -~]{0,40}") {
            let _ = parse_etag_list(std::iter::once(&hv(&s)));
        }

        #[test]
        fn strong_versions_round_trip(vs in prop::collection::vec(0u64..1_000_000, 1..5)) {
            let header = vs.iter().map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(", ");
            let list = parse_etag_list(std::iter::once(&hv(&header))).unwrap().unwrap();
            prop_assert_eq!(list.to_cond(true), Cond::Versions(vs));
        }
    }
}
