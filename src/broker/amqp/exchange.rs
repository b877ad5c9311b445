//! Exchanges and how they match bindings: direct, fanout, topic (`*` one word, `#` zero or
//! more words) and headers (`x-match` all / any / all-with-x / any-with-x), as RabbitMQ does.

use amq_protocol::types::{AMQPValue, FieldTable};

/// The four exchange types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(name: &str) -> Option<ExchangeKind> {
        match name {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Queue(String),
    Exchange(String),
}

impl Destination {
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(name) | Destination::Exchange(name) => name,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
}

#[derive(Clone, Debug)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    pub bindings: Vec<Binding>,
}

impl Exchange {
    pub fn new(name: &str, kind: ExchangeKind, durable: bool) -> Exchange {
        Exchange {
            name: name.to_string(),
            kind,
            durable,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
            bindings: Vec::new(),
        }
    }

    /// The `alternate-exchange` argument, if set.
    pub fn alternate_exchange(&self) -> Option<String> {
        self.arguments
            .inner()
            .get("alternate-exchange")
            .and_then(super::args::text)
    }

    /// The destinations of the bindings a message with this key and these headers matches.
    pub fn matching<'a>(
        &'a self,
        routing_key: &'a str,
        headers: Option<&'a FieldTable>,
    ) -> impl Iterator<Item = &'a Destination> + 'a {
        self.bindings
            .iter()
            .filter(move |b| match self.kind {
                ExchangeKind::Direct => b.routing_key == routing_key,
                ExchangeKind::Fanout => true,
                ExchangeKind::Topic => topic_matches(&b.routing_key, routing_key),
                ExchangeKind::Headers => headers_match(&b.arguments, headers),
            })
            .map(|b| &b.destination)
    }
}

/// Topic matching: words are separated by `.`; `*` matches exactly one word, `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    };
    // An empty routing key is zero words, but a binding key "" is one empty word in RabbitMQ
    // only matching the empty key; treat both as zero words for consistency.
    let pattern: Vec<&str> = if pattern == [""] { Vec::new() } else { pattern };
    matches_from(&pattern, &key)
}

fn matches_from(pattern: &[&str], key: &[&str]) -> bool {
    // Iterative with memo-free backtracking on `#`; patterns are short.
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| matches_from(rest, &key[skip..])),
        Some((&word, rest)) => match key.split_first() {
            Some((&k, key_rest)) => (word == "*" || word == k) && matches_from(rest, key_rest),
            None => false,
        },
    }
}

/// Headers matching, RabbitMQ style. The binding's `x-match` is `all` (default), `any`,
/// `all-with-x` or `any-with-x`; binding arguments starting with `x-` are ignored unless a
/// `-with-x` mode is used. A binding argument of type void matches on presence alone.
pub fn headers_match(binding: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = binding
        .inner()
        .get("x-match")
        .and_then(super::args::text)
        .unwrap_or_else(|| "all".to_string());
    let (any, with_x) = match mode.as_str() {
        "any" => (true, false),
        "all-with-x" => (false, true),
        "any-with-x" => (true, true),
        _ => (false, false),
    };
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty).inner();
    let mut considered = binding
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")));
    let matches = |(k, v): (&amq_protocol::types::ShortString, &AMQPValue)| match v {
        AMQPValue::Void => headers.contains_key(k),
        v => headers.get(k).is_some_and(|h| values_equal(h, v)),
    };
    if any {
        considered.any(matches)
    } else {
        considered.all(matches)
    }
}

/// Header values compare by content; strings match whether sent short or long.
fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    let text = |v: &AMQPValue| match v {
        AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
        _ => None,
    };
    match (text(a), text(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{LongString, ShortString};

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#", "", true),
            ("#", "anything.at.all", true),
            ("#.c", "c", true),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.x.y.c", true),
            ("a.#.c", "a.x.y.d", false),
            ("*", "", false),
            ("*", "a", true),
            ("*.*", "a", false),
            ("a.*.#", "a.b", true),
            ("a.*.#", "a", false),
            ("#.#", "a.b", true),
            ("", "", true),
            ("", "a", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} vs {key}");
        }
    }

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    fn text(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s.as_bytes()))
    }

    #[test]
    fn headers_match_all_any_and_with_x() {
        let headers = table(&[("a", text("1")), ("b", text("2")), ("x-k", text("v"))]);
        let all = table(&[("x-match", text("all")), ("a", text("1")), ("b", text("2"))]);
        assert!(headers_match(&all, Some(&headers)));
        let all_miss = table(&[("a", text("1")), ("c", text("3"))]);
        assert!(!headers_match(&all_miss, Some(&headers)), "default is all");
        let any = table(&[("x-match", text("any")), ("a", text("1")), ("c", text("3"))]);
        assert!(headers_match(&any, Some(&headers)));
        let x_ignored = table(&[("x-match", text("all")), ("x-k", text("other"))]);
        assert!(headers_match(&x_ignored, Some(&headers)), "x- args ignored");
        let with_x = table(&[("x-match", text("all-with-x")), ("x-k", text("other"))]);
        assert!(!headers_match(&with_x, Some(&headers)));
        let any_with_x = table(&[("x-match", text("any-with-x")), ("x-k", text("v"))]);
        assert!(headers_match(&any_with_x, Some(&headers)));
        let presence = table(&[("b", AMQPValue::Void)]);
        assert!(headers_match(&presence, Some(&headers)));
        let short = table(&[("a", AMQPValue::ShortString("1".into()))]);
        assert!(
            headers_match(&short, Some(&headers)),
            "short and long strings compare"
        );
        assert!(!headers_match(&all, None));
        let any_none = table(&[("x-match", text("any"))]);
        assert!(
            !headers_match(&any_none, Some(&headers)),
            "any of nothing is false"
        );
    }
}
