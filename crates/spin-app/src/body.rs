//! Reading a request body without trusting its size.

use futures::{Stream, StreamExt};

/// Collect the chunks of `body` until it ends or more than `limit` bytes
/// have arrived, whichever is first. An oversized body comes back cut to
/// exactly `limit + 1` bytes: the core sees that it is too long and answers
/// 413, and the rest is never read (nor buffered).
pub async fn read_limited<S, E>(body: S, limit: usize) -> Result<Vec<u8>, E>
where
    S: Stream<Item = Result<Vec<u8>, E>>,
{
    let cap = limit.saturating_add(1);
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let room = cap - out.len();
        if chunk.len() >= room {
            out.extend_from_slice(&chunk[..room]);
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Whether the request announces (in `content-length`) more than `limit`
/// bytes. Such a body is not read at all: waiting for a client that sends
/// a huge announced body, or none, would only delay the 413.
pub fn announced_too_large(headers: &[(String, Vec<u8>)], limit: usize) -> bool {
    headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .filter_map(|(_, value)| std::str::from_utf8(value).ok()?.trim().parse::<u64>().ok())
        .any(|len| len > limit as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::stream;

    #[test]
    fn announced_lengths_over_the_limit_are_caught() {
        let h = |v: &str| vec![("Content-Length".to_string(), v.as_bytes().to_vec())];
        assert!(announced_too_large(&h("11"), 10));
        assert!(!announced_too_large(&h("10"), 10));
        assert!(!announced_too_large(&h("junk"), 10));
        assert!(!announced_too_large(&[], 10));
    }

    fn chunks(sizes: &[usize]) -> Vec<Result<Vec<u8>, ()>> {
        sizes.iter().map(|&n| Ok(vec![b'x'; n])).collect()
    }

    #[test]
    fn bodies_up_to_the_limit_arrive_whole() {
        for sizes in [&[][..], &[0], &[10], &[4, 6], &[3, 0, 3, 4]] {
            let body = block_on(read_limited(stream::iter(chunks(sizes)), 10)).unwrap();
            assert_eq!(body.len(), sizes.iter().sum::<usize>());
        }
    }

    #[test]
    fn oversized_bodies_stop_at_limit_plus_one() {
        for sizes in [&[11][..], &[10, 1], &[5, 5, 5], &[1_000_000]] {
            let body = block_on(read_limited(stream::iter(chunks(sizes)), 10)).unwrap();
            assert_eq!(body.len(), 11, "{sizes:?}");
        }
    }

    #[test]
    fn nothing_is_read_after_the_limit_is_passed() {
        // A stream that would fail if polled once more.
        let items = vec![Ok(vec![0u8; 6]), Ok(vec![0u8; 6]), Err("read too far")];
        let body = block_on(read_limited(stream::iter(items), 10)).unwrap();
        assert_eq!(body.len(), 11);
    }

    #[test]
    fn read_errors_are_returned() {
        let items = vec![Ok(vec![0u8; 3]), Err("reset")];
        assert_eq!(
            block_on(read_limited(stream::iter(items), 10)),
            Err("reset")
        );
    }
}
