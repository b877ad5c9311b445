//! `XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT count]] *|ms-*|id field value
//! [field value ...]`

use std::sync::Arc;

use bytes::Bytes;

use super::xtrim::TrimParser;
use super::{CachedStream, Context, PendingAcks, Reply};
use crate::broker::{AutoAdded, AutoEntry, Broker, IdSpec, Stream, StreamError, StreamId};
use crate::protocol::resp::args::Args;

pub const INVALID_STREAM_ID: &str = "ERR Invalid stream ID specified as stream command argument";

/// `*`, `ms-*`, `ms-seq` or `ms` (meaning `ms-0`).
fn parse_id_spec(arg: &[u8]) -> Result<IdSpec, Reply> {
    if arg == b"*" {
        return Ok(IdSpec::Auto);
    }
    if let Some(ms) = arg.strip_suffix(b"-*") {
        let id = StreamId::parse(ms, 0).filter(|_| !ms.contains(&b'-'));
        return id
            .map(|id| IdSpec::AutoSequence(id.ms))
            .ok_or_else(|| Reply::error(INVALID_STREAM_ID));
    }
    StreamId::parse(arg, 0)
        .map(IdSpec::Explicit)
        .ok_or_else(|| Reply::error(INVALID_STREAM_ID))
}

/// Parse a list of stream IDs (`ms-seq` or `ms`), all of them before anything is done.
pub fn parse_ids(args: Vec<Bytes>) -> Result<Vec<StreamId>, Reply> {
    args.iter()
        .map(|id| StreamId::parse(id, 0).ok_or_else(|| Reply::error(INVALID_STREAM_ID)))
        .collect()
}

pub fn stream_error(e: StreamError) -> Reply {
    Reply::error(format!("ERR {e}"))
}

/// Plain `XADD key * field value ...` requests held back within a round, so that a pipeline's
/// XADDs become one commit (one round of locks, one write-ahead batch) instead of one each:
/// consecutive ones to one stream one log batch, those to other streams a batch each in the
/// same commit. The connection flushes them before any other command runs and at the end of
/// the round, so nothing can observe the difference; each held-back request's reply slot
/// holds a placeholder until then.
#[derive(Default)]
pub struct DeferredAdds {
    /// The streams the held-back entries go to, in order of first use.
    targets: Vec<CachedStream>,
    /// The held-back entries in arrival order: (index into `targets`, fields).
    held: Vec<AutoEntry>,
    /// The reply slot of each held-back entry (parallel to `held`).
    reply_indices: Vec<usize>,
    bytes: usize,
    /// Replies a flush produced: (index in the round, reply).
    settled: Vec<(usize, Reply)>,
}

/// A flush happens at least this often, keeping each append well inside the batch limit (an
/// entry this large or larger is not held back at all).
const DEFERRED_BYTES_MAX: usize = 1024 * 1024;
const DEFERRED_ENTRIES_MAX: usize = 1024;
/// Streams held back at once (a pipeline spread over more flushes more often).
const DEFERRED_TARGETS_MAX: usize = 64;

impl DeferredAdds {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Append what is held back, as one commit, and settle its replies (see
    /// [`DeferredAdds::settle_into`]).
    pub fn flush(&mut self, broker: &Broker, pending: &mut PendingAcks) {
        self.bytes = 0;
        if self.held.is_empty() {
            self.targets.clear();
            return;
        }
        // Deleted or renamed since (by another client): the appends land where the key points
        // now, as they would have had they run then. A target that cannot be had answers its
        // entries with the error (`None` in `found`).
        let mut streams: Vec<Arc<Stream>> = Vec::with_capacity(self.targets.len());
        let mut keys: Vec<Bytes> = Vec::with_capacity(self.targets.len());
        let mut found: Vec<Result<usize, Reply>> = Vec::with_capacity(self.targets.len());
        for target in self.targets.drain(..) {
            let stream = if target.is_live() {
                Ok(target.stream)
            } else {
                broker
                    .stream_or_create(&target.key)
                    .map_err(|e| Reply::error(format!("ERR {e}")))
            };
            found.push(stream.map(|stream| {
                streams.push(stream);
                keys.push(target.key);
                streams.len() - 1
            }));
        }
        let mut entries = Vec::with_capacity(self.held.len());
        let mut indices = Vec::with_capacity(self.held.len());
        for ((target, fields), index) in self.held.drain(..).zip(self.reply_indices.drain(..)) {
            match &found[target] {
                Ok(stream) => {
                    entries.push((*stream, fields));
                    indices.push(index);
                }
                Err(reply) => self.settled.push((index, reply.clone())),
            }
        }
        // A stream deleted or renamed over since it was looked up refuses only its own
        // entries: they are added once more, where their key points now (as they would have
        // been had they run then).
        for attempt in 0..2 {
            let request: Vec<&Stream> = streams.iter().map(|s| &**s).collect();
            let (added, commit) = match Stream::add_auto_entries(&request, &mut entries) {
                Ok(done) => done,
                Err(e) => {
                    let reply = stream_error(e);
                    self.settled
                        .extend(indices.into_iter().map(|index| (index, reply.clone())));
                    return;
                }
            };
            let mut again = Vec::new();
            for ((outcome, index), entry) in added.into_iter().zip(indices).zip(entries) {
                let reply = match outcome {
                    AutoAdded::Id(id) => {
                        pending.add(commit, index);
                        Reply::Id(id)
                    }
                    AutoAdded::Exhausted => stream_error(StreamError::IdsExhausted),
                    AutoAdded::Deleted if attempt == 0 => {
                        again.push((entry, index));
                        continue;
                    }
                    AutoAdded::Deleted => stream_error(StreamError::deleted()),
                };
                self.settled.push((index, reply));
            }
            if again.is_empty() {
                return;
            }
            // Each deleted stream's key, looked up (or created) again, once.
            let mut renewed: Vec<(usize, Result<usize, Reply>)> = Vec::new();
            let (mut next_streams, mut next_keys) = (Vec::new(), Vec::new());
            entries = Vec::with_capacity(again.len());
            indices = Vec::with_capacity(again.len());
            for ((old, fields), index) in again {
                let slot = match renewed.iter().find(|(was, _)| *was == old) {
                    Some((_, slot)) => slot.clone(),
                    None => {
                        let slot = broker
                            .stream_or_create(&keys[old])
                            .map(|stream| {
                                next_streams.push(stream);
                                next_keys.push(keys[old].clone());
                                next_streams.len() - 1
                            })
                            .map_err(|e| Reply::error(format!("ERR {e}")));
                        renewed.push((old, slot.clone()));
                        slot
                    }
                };
                match slot {
                    Ok(stream) => {
                        entries.push((stream, fields));
                        indices.push(index);
                    }
                    Err(reply) => self.settled.push((index, reply)),
                }
            }
            (streams, keys) = (next_streams, next_keys);
        }
    }

    /// Put the replies of flushed requests into their slots of the round.
    pub fn settle_into(&mut self, replies: &mut [Reply]) {
        for (index, reply) in self.settled.drain(..) {
            if let Some(slot) = replies.get_mut(index) {
                *slot = reply;
            }
        }
    }
}

/// Hold back a plain XADD for the round's next flush (creating the stream if need be): returns
/// the placeholder reply, or the fields back when the request must run now (the entry is large,
/// or the stream cannot be created).
fn defer(
    deferred: &mut DeferredAdds,
    context: &mut Context<'_>,
    key: &Bytes,
    fields: Vec<(Bytes, Bytes)>,
) -> Result<Reply, Vec<(Bytes, Bytes)>> {
    let entry_bytes: usize = fields.iter().map(|(f, v)| f.len() + v.len()).sum();
    if entry_bytes >= DEFERRED_BYTES_MAX {
        // A large entry gains nothing from company and must not push a batch over its limit.
        deferred.flush(context.broker, context.pending);
        return Err(fields);
    }
    // One target per key: a held target whose stream was deleted, renamed or evicted since is
    // looked up again when flushed.
    let held = deferred
        .targets
        .iter()
        .position(|target| target.key == *key);
    let target = match held {
        Some(target) => target,
        None => {
            if deferred.targets.len() >= DEFERRED_TARGETS_MAX {
                deferred.flush(context.broker, context.pending);
            }
            let (stream, binding) = match context.take_cached_stream(key) {
                Some(found) => found,
                // Looked up, or created now if new (empty until the flush commits the entry,
                // as every entry is invisible until its commit is durable); a refusal (a name
                // too long) is the ordinary path's to answer.
                None => match context.broker.stream_or_create_bound(key) {
                    Ok(found) => found,
                    Err(_) => {
                        deferred.flush(context.broker, context.pending);
                        return Err(fields);
                    }
                },
            };
            deferred.targets.push(CachedStream {
                key: key.clone(),
                stream,
                binding,
            });
            deferred.targets.len() - 1
        }
    };
    deferred.held.push((target, fields));
    deferred.reply_indices.push(context.reply_index);
    deferred.bytes += entry_bytes;
    if deferred.bytes >= DEFERRED_BYTES_MAX || deferred.held.len() >= DEFERRED_ENTRIES_MAX {
        deferred.flush(context.broker, context.pending);
    }
    Ok(Reply::Silent)
}

pub fn xadd(args: &mut Args, context: &mut Context<'_>) -> Result<Reply, Reply> {
    let key = args.required()?;
    let mut make_stream = true;
    let mut trim = TrimParser::default();
    loop {
        if args.eat("NOMKSTREAM") {
            make_stream = false;
        } else if !trim.parse_one(args)? {
            break;
        }
    }
    let trim = trim.finish()?;
    let spec = parse_id_spec(&args.required()?)?;
    let values = args.remaining();
    if values == 0 || !values.is_multiple_of(2) {
        return Err(Reply::wrong_arity("xadd"));
    }
    // Checked before the stream is created, so a bad request changes nothing.
    if spec == IdSpec::Explicit(StreamId::MIN) {
        return Err(stream_error(StreamError::IdZero));
    }
    let mut fields: Vec<(Bytes, Bytes)> = Vec::with_capacity(values / 2);
    while let (Some(field), Some(value)) = (args.optional(), args.optional()) {
        fields.push((field, value));
    }
    // Taken out of the context: this request uses it once, either way.
    if let Some(deferred) = context.deferred.take() {
        let plain = spec == IdSpec::Auto && trim.is_none() && make_stream;
        if plain && context.session.reply_mode == super::ReplyMode::On {
            match defer(deferred, context, &key, fields) {
                Ok(placeholder) => return Ok(placeholder),
                Err(back) => fields = back,
            }
        } else {
            // Anything else on the same stream must come after what is held back.
            deferred.flush(context.broker, context.pending);
        }
    }
    let (stream, binding) = match context.take_stream(&key) {
        Some(found) => found,
        None if !make_stream => return Ok(Reply::Nil),
        None => {
            // Large entries only reach this path (they are not held back): one too large for a
            // batch is refused before its stream is created.
            context
                .broker
                .check_entry_size(&fields)
                .map_err(stream_error)?;
            context
                .broker
                .stream_or_create_bound(&key)
                .map_err(|e| Reply::error(format!("ERR {e}")))?
        }
    };
    let added = stream.add(spec, fields).map_err(stream_error)?;
    // The reply waits for the commit (shared by the pipeline); under `interval` and `never`
    // the broker's policy is to acknowledge once written, and the wait returns at once.
    context.pending.add(added.commit, context.reply_index);
    if let Some(trim) = trim {
        let (_, commit) = stream
            .trim(trim.strategy, trim.approximate, trim.limit)
            .map_err(stream_error)?;
        context.pending.add(commit, context.reply_index);
    }
    context.keep_stream(key, stream, binding);
    Ok(Reply::Id(added.id))
}
