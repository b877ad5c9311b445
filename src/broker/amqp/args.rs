//! The queue arguments Potok acts on (`x-message-ttl`, `x-max-length`, `x-max-length-bytes`,
//! `x-overflow`, `x-dead-letter-exchange`, `x-dead-letter-routing-key`,
//! `x-single-active-consumer`), checked the way RabbitMQ checks them at declaration.

use amq_protocol::types::{AMQPValue, FieldTable};

/// What happens to a publish into a full queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready messages to make room.
    #[default]
    DropHead,
    /// Refuse the new message (publisher confirms answer with a nack).
    RejectPublish,
    /// Refuse it and dead-letter it.
    RejectPublishDlx,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueArgs {
    pub message_ttl_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub single_active_consumer: bool,
    /// `x-queue-type` = `stream`: an append-only log read from any offset.
    pub stream: bool,
    /// `x-max-priority`: deliver higher `priority` messages first (priorities above it count
    /// as it).
    pub max_priority: Option<u8>,
    /// `x-expires`: delete the queue after this long unused.
    pub expires_ms: Option<u64>,
    /// Stream retention: `x-max-age` (`7D`, `12h`, `30m`, `10s`, `1Y`, `2M`).
    pub max_age: Option<std::time::Duration>,
}

/// A RabbitMQ interval: a number and a unit (`Y` years, `M` months, `D` days, `h` hours,
/// `m` minutes, `s` seconds).
pub fn parse_interval(text: &str) -> Option<std::time::Duration> {
    let unit = text.chars().last()?;
    let number: u64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let seconds = match unit {
        'Y' => 365 * 24 * 3600,
        'M' => 30 * 24 * 3600,
        'D' => 24 * 3600,
        'h' => 3600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(number.checked_mul(seconds)?))
}

/// An AMQP field value as an integer, whichever integer type carried it.
pub fn integer(value: &AMQPValue) -> Option<i64> {
    Some(match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok()?,
        _ => return None,
    })
}

/// An AMQP field value as text, whether sent as a long or a short string.
pub fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

impl QueueArgs {
    /// Read and check the arguments; `Err` is RabbitMQ's explanation, e.g.
    /// `invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}`.
    pub fn parse(name: &str, arguments: &FieldTable) -> Result<QueueArgs, String> {
        let mut args = QueueArgs::default();
        let invalid = |arg: &str, why: String| {
            format!("invalid arg '{arg}' for queue '{name}' in vhost '/': {why}")
        };
        let non_negative = |arg: &str, value: &AMQPValue| -> Result<u64, String> {
            match integer(value) {
                Some(v) if v >= 0 => Ok(v as u64),
                Some(v) => Err(invalid(arg, format!("{{value_negative,{v}}}"))),
                None => Err(invalid(
                    arg,
                    format!("{{unacceptable_type,{}}}", type_of(value)),
                )),
            }
        };
        let get = |key: &str| arguments.inner().get(key);
        if let Some(v) = get("x-message-ttl") {
            args.message_ttl_ms = Some(non_negative("x-message-ttl", v)?);
        }
        if let Some(v) = get("x-max-priority") {
            match integer(v) {
                Some(n) if (0..=255).contains(&n) => args.max_priority = Some(n as u8),
                Some(n) if n < 0 => {
                    return Err(invalid("x-max-priority", format!("{{value_negative,{n}}}")))
                }
                Some(n) => {
                    return Err(invalid(
                        "x-max-priority",
                        format!("{{value_too_large,{n},255}}"),
                    ))
                }
                None => {
                    return Err(invalid(
                        "x-max-priority",
                        format!("{{unacceptable_type,{}}}", type_of(v)),
                    ))
                }
            }
        }
        if let Some(v) = get("x-expires") {
            match integer(v) {
                Some(n) if n > 0 => args.expires_ms = Some(n as u64),
                Some(n) => return Err(invalid("x-expires", format!("{{value_zero_or_less,{n}}}"))),
                None => {
                    return Err(invalid(
                        "x-expires",
                        format!("{{unacceptable_type,{}}}", type_of(v)),
                    ))
                }
            }
        }
        if let Some(v) = get("x-max-length") {
            args.max_length = Some(non_negative("x-max-length", v)?);
        }
        if let Some(v) = get("x-max-length-bytes") {
            args.max_length_bytes = Some(non_negative("x-max-length-bytes", v)?);
        }
        if let Some(v) = get("x-overflow") {
            args.overflow = match text(v).as_deref() {
                Some("drop-head") => Overflow::DropHead,
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                Some(other) => {
                    return Err(invalid(
                        "x-overflow",
                        format!("{{unknown_overflow_type,<<\"{other}\">>}}"),
                    ))
                }
                None => {
                    return Err(invalid(
                        "x-overflow",
                        format!("{{unacceptable_type,{}}}", type_of(v)),
                    ))
                }
            };
        }
        if let Some(v) = get("x-dead-letter-exchange") {
            args.dead_letter_exchange = Some(text(v).ok_or_else(|| {
                invalid(
                    "x-dead-letter-exchange",
                    format!("{{unacceptable_type,{}}}", type_of(v)),
                )
            })?);
        }
        if let Some(v) = get("x-dead-letter-routing-key") {
            if args.dead_letter_exchange.is_none() {
                return Err(invalid(
                    "x-dead-letter-routing-key",
                    "Key x-dead-letter-exchange should also be set".into(),
                ));
            }
            args.dead_letter_routing_key = Some(text(v).ok_or_else(|| {
                invalid(
                    "x-dead-letter-routing-key",
                    format!("{{unacceptable_type,{}}}", type_of(v)),
                )
            })?);
        }
        if let Some(v) = get("x-queue-type") {
            match text(v).as_deref() {
                Some("classic") => {}
                Some("stream") => args.stream = true,
                Some(other) => {
                    return Err(invalid(
                        "x-queue-type",
                        format!("{other} queues are not supported"),
                    ))
                }
                None => {
                    return Err(invalid(
                        "x-queue-type",
                        format!("{{unacceptable_type,{}}}", type_of(v)),
                    ))
                }
            }
        }
        if let Some(v) = get("x-max-age") {
            args.max_age = Some(
                text(v)
                    .as_deref()
                    .and_then(parse_interval)
                    .ok_or_else(|| invalid("x-max-age", "invalid_max_age".into()))?,
            );
        }
        if let Some(v) = get("x-single-active-consumer") {
            args.single_active_consumer = match v {
                AMQPValue::Boolean(b) => *b,
                other => {
                    return Err(invalid(
                        "x-single-active-consumer",
                        format!("{{unacceptable_type,{}}}", type_of(other)),
                    ))
                }
            };
        }
        Ok(args)
    }
}

/// RabbitMQ's name for a value's type in argument errors.
fn type_of(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => "longstr",
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::Double(_) | AMQPValue::Float(_) => "double",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Void => "void",
        _ => "signedint",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn arguments_parse_and_bad_ones_are_explained() {
        let ok = table(&[
            ("x-message-ttl", AMQPValue::LongInt(500)),
            ("x-max-length", AMQPValue::ShortShortUInt(3)),
            (
                "x-overflow",
                AMQPValue::LongString(LongString::from(&b"reject-publish"[..])),
            ),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString(LongString::from(&b"dlx"[..])),
            ),
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
        ]);
        let args = QueueArgs::parse("q", &ok).unwrap();
        assert_eq!(args.message_ttl_ms, Some(500));
        assert_eq!(args.max_length, Some(3));
        assert_eq!(args.overflow, Overflow::RejectPublish);
        assert_eq!(args.dead_letter_exchange.as_deref(), Some("dlx"));
        assert!(args.single_active_consumer);
        let negative = table(&[("x-message-ttl", AMQPValue::LongInt(-1))]);
        assert_eq!(
            QueueArgs::parse("q", &negative).unwrap_err(),
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}"
        );
        let key_alone = table(&[(
            "x-dead-letter-routing-key",
            AMQPValue::LongString(LongString::from(&b"k"[..])),
        )]);
        assert!(QueueArgs::parse("q", &key_alone).is_err());
    }
}
