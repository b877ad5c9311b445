//! Redis-style glob patterns (`KEYS`, `SCAN MATCH`, `PSUBSCRIBE`): `*`, `?`, `[abc]`, `[a-z]`,
//! `[^a]`, and `\` to escape. Matching is on bytes, iterative (no recursion), and linear in the
//! pattern times the subject in the worst case.

/// Does `subject` match `pattern`?
pub fn glob_match(pattern: &[u8], subject: &[u8]) -> bool {
    let (mut p, mut s) = (0usize, 0usize);
    // Where to resume after the most recent `*`: (pattern index after it, subject index).
    let mut star: Option<(usize, usize)> = None;
    while s < subject.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, s));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => match_class(pattern, p, subject[s]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == subject[s]).then_some(p + 2),
            Some(&c) => (c == subject[s]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                s += 1;
            }
            (None, Some((after_star, matched))) => {
                // Let the last `*` swallow one more byte and retry.
                p = after_star;
                s = matched + 1;
                star = Some((after_star, matched + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// Match one byte against the class starting at `pattern[open] == b'['`; returns the index
/// after the class when it matches.
fn match_class(pattern: &[u8], open: usize, byte: u8) -> Option<usize> {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        match pattern.get(i) {
            // An unterminated class ends at the pattern's end, as in Redis.
            None => break,
            Some(b']') => {
                i += 1;
                break;
            }
            Some(b'\\') if i + 1 < pattern.len() => {
                matched |= pattern[i + 1] == byte;
                i += 2;
            }
            Some(&lo)
                if pattern.get(i + 1) == Some(&b'-')
                    && i + 2 < pattern.len()
                    && pattern[i + 2] != b']' =>
            {
                let hi = pattern[i + 2];
                let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                matched |= (lo..=hi).contains(&byte);
                i += 3;
            }
            Some(&c) => {
                matched |= c == byte;
                i += 1;
            }
        }
    }
    (matched != negate).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn redis_glob_semantics() {
        let cases: [(&str, &str, bool); 16] = [
            ("*", "", true),
            ("*", "anything", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h*llo", "hello world", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("*a*b*c*", "xxaxxbxxcxx", true),
            ("news.*", "news.tech", true),
        ];
        for (pattern, subject, expected) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), subject.as_bytes()),
                expected,
                "{pattern} ~ {subject}"
            );
        }
        // Pathological patterns stay fast.
        let subject = vec![b'a'; 10_000];
        assert!(!glob_match(b"*a*a*a*a*a*a*b", &subject));
    }
}
