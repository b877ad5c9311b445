//! A cursor over a request's arguments, in the style of mini-redis's `Parse`: commands take
//! what they need and call `finish`, so extra arguments are a syntax error.

use bytes::Bytes;

use super::reply::Reply;

pub struct Args {
    name: &'static str,
    items: std::vec::IntoIter<Bytes>,
}

impl Args {
    /// A whole request: `name` is the command's (lowercase) name for error messages, and the
    /// first element of `request` (the name as sent) is skipped.
    pub fn new(name: &'static str, request: Vec<Bytes>) -> Args {
        let mut items = request.into_iter();
        items.next();
        Args { name, items }
    }

    pub fn name(&self) -> &str {
        self.name
    }

    pub fn remaining(&self) -> usize {
        self.items.len()
    }

    pub fn optional(&mut self) -> Option<Bytes> {
        self.items.next()
    }

    /// The next argument; its absence is an arity error.
    pub fn required(&mut self) -> Result<Bytes, Reply> {
        self.items
            .next()
            .ok_or_else(|| Reply::wrong_arity(self.name))
    }

    /// Consume the next argument if it equals `keyword` (case-insensitively).
    pub fn eat(&mut self, keyword: &str) -> bool {
        let matches = self
            .items
            .as_slice()
            .first()
            .is_some_and(|a| a.eq_ignore_ascii_case(keyword.as_bytes()));
        if matches {
            self.items.next();
        }
        matches
    }

    pub fn rest(&mut self) -> Vec<Bytes> {
        self.items.by_ref().collect()
    }

    pub fn finish(&self) -> Result<(), Reply> {
        if self.items.len() == 0 {
            Ok(())
        } else {
            Err(Reply::syntax_error())
        }
    }
}

/// Parse a whole argument as an i64 the way Redis does (no spaces, no `+`).
pub fn parse_i64(arg: &[u8]) -> Result<i64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .filter(|s| !s.starts_with('+') && !s.is_empty())
        .and_then(|s| s.parse().ok())
        .ok_or_else(Reply::not_an_integer)
}
