//! `XLEN key`

use super::{existing_stream, Context, Reply};
use crate::protocol::resp::args::Args;

pub fn xlen(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let key = args.required()?;
    let len = existing_stream(context, &key).map_or(0, |s| s.len());
    Ok(Reply::Integer(len as i64))
}
