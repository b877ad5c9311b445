//! `XTRIM key MAXLEN|MINID [=|~] threshold [LIMIT count]`, and the same trimming options of XADD.

use super::xadd::{stream_error, INVALID_STREAM_ID};
use super::{existing_stream, Context, Reply};
use crate::broker::{StreamId, TrimStrategy};
use crate::protocol::resp::args::{parse_i64, Args};

/// Parsed trimming options.
#[derive(Clone, Copy, Debug)]
pub struct TrimOptions {
    pub strategy: TrimStrategy,
    pub approximate: bool,
    pub limit: Option<u64>,
}

/// After `MAXLEN` or `MINID` was eaten: `[=|~] threshold`.
pub fn parse_threshold(args: &mut Args, maxlen: bool) -> Result<(TrimStrategy, bool), Reply> {
    let approximate = if args.eat("~") {
        true
    } else {
        args.eat("=");
        false
    };
    let threshold = args.optional().ok_or_else(Reply::syntax_error)?;
    let strategy = if maxlen {
        let n = parse_i64(&threshold)?;
        if n < 0 {
            return Err(Reply::error("ERR The MAXLEN argument must be >= 0."));
        }
        TrimStrategy::MaxLen(n as u64)
    } else {
        TrimStrategy::MinId(
            StreamId::parse(&threshold, 0).ok_or_else(|| Reply::error(INVALID_STREAM_ID))?,
        )
    };
    Ok((strategy, approximate))
}

/// After `LIMIT` was eaten: `count`.
pub fn parse_limit(args: &mut Args) -> Result<u64, Reply> {
    let value = args.optional().ok_or_else(Reply::syntax_error)?;
    let limit = parse_i64(&value)?;
    if limit < 0 {
        return Err(Reply::error("ERR The LIMIT argument must be >= 0."));
    }
    Ok(limit as u64)
}

/// Trimming options as they are parsed, before [`combine`] checks them together.
#[derive(Default)]
pub struct TrimParser {
    trim: Option<(TrimStrategy, bool)>,
    limit: Option<u64>,
}

impl TrimParser {
    /// Consume one `MAXLEN|MINID [=|~] threshold` or `LIMIT count`; false if the next argument
    /// is neither.
    pub fn parse_one(&mut self, args: &mut Args) -> Result<bool, Reply> {
        if args.eat("MAXLEN") {
            self.trim = Some(parse_threshold(args, true)?);
        } else if args.eat("MINID") {
            self.trim = Some(parse_threshold(args, false)?);
        } else if args.eat("LIMIT") {
            self.limit = Some(parse_limit(args)?);
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    pub fn finish(self) -> Result<Option<TrimOptions>, Reply> {
        combine(self.trim, self.limit)
    }
}

/// Check the combination, as Redis does after parsing all options.
pub fn combine(
    trim: Option<(TrimStrategy, bool)>,
    limit: Option<u64>,
) -> Result<Option<TrimOptions>, Reply> {
    match (trim, limit) {
        (None, Some(_)) => Err(Reply::error(
            "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy",
        )),
        (Some((_, false)), Some(_)) => Err(Reply::error(
            "ERR syntax error, LIMIT cannot be used without the special ~ option",
        )),
        (Some((strategy, approximate)), limit) => Ok(Some(TrimOptions {
            strategy,
            approximate,
            limit,
        })),
        (None, None) => Ok(None),
    }
}

pub fn xtrim(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let key = args.required()?;
    let mut parser = TrimParser::default();
    while args.remaining() > 0 {
        if !parser.parse_one(args)? {
            return Err(Reply::syntax_error());
        }
    }
    let Some(options) = parser.finish()? else {
        return Err(Reply::syntax_error());
    };
    let Some(stream) = existing_stream(context, &key) else {
        return Ok(Reply::Integer(0));
    };
    let (removed, commit) = stream
        .trim(options.strategy, options.approximate, options.limit)
        .map_err(stream_error)?;
    context.pending.add(commit, context.reply_index);
    Ok(Reply::Integer(removed as i64))
}
