//! The commands that work with messages: `peek` (read-only), `publish`, `consume`,
//! `redrive` and `purge`.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};
use walq::{ConsumerOptions, DeadLetterReason, Error, MessageId, Queue, Store};

use crate::access::{open_for_writing, open_read_only};
use crate::output::{json_line, stdout, unix_ms, PayloadStyle};
use crate::{Failure, Outcome, WriteOptions};

/// The queue called `name`, or a failure listing the queues there are.
fn find_queue(store: &Store, dir: &Path, name: &str, hint: &str) -> Result<Queue, Failure> {
    match store.queue(name) {
        Ok(queue) => Ok(queue),
        Err(Error::QueueNotFound { .. }) => {
            let names: Vec<String> = store
                .queue_names()
                .iter()
                .map(|n| format!("{n:?}"))
                .collect();
            let known = if names.is_empty() {
                "it has no queues".to_owned()
            } else {
                format!("its queues: {}", names.join(", "))
            };
            Err(Failure::Message(format!(
                "queue {name:?} does not exist in {} ({known}){hint}",
                dir.display()
            )))
        }
        Err(e) => Err(Failure::Message(e.to_string())),
    }
}

fn reason_name(reason: DeadLetterReason) -> &'static str {
    match reason {
        DeadLetterReason::Rejected => "rejected",
        DeadLetterReason::Expired => "expired",
        DeadLetterReason::DeliveryLimit => "delivery-limit",
        DeadLetterReason::Overflow => "overflow",
        _ => "other",
    }
}

/// Runs `walq peek DIR QUEUE`.
pub fn peek(dir: &Path, name: &str, count: usize, json: bool, style: PayloadStyle) -> Outcome {
    let opened = open_read_only(dir)?;
    let queue = find_queue(&opened.store, dir, name, "")?;
    let peeked = queue
        .peek(count)
        .map_err(|e| Failure::Message(format!("{}: {e}", dir.display())))?;
    let mut out = stdout();
    for m in &peeked {
        if json {
            let mut object = Map::new();
            object.insert("id".into(), m.id.get().into());
            object.insert("queue".into(), (*m.queue).into());
            object.insert("delivery_count".into(), m.delivery_count.into());
            object.insert("published_ms".into(), unix_ms(m.published_at).into());
            if let Some(at) = m.expires_at {
                object.insert("expires_ms".into(), unix_ms(at).into());
            }
            if let Some(d) = &m.dead_letter {
                object.insert(
                    "dead_letter".into(),
                    json!({"reason": reason_name(d.reason), "original_queue": &*d.original_queue}),
                );
            }
            style.json(&mut object, &m.payload);
            json_line(&mut out, &Value::Object(object))?;
        } else {
            let mut line = format!(
                "id={} deliveries={} len={}",
                m.id.get(),
                m.delivery_count,
                m.payload.len()
            );
            if let Some(d) = &m.dead_letter {
                line.push_str(&format!(
                    " dead_lettered_from={:?} reason={}",
                    &*d.original_queue,
                    reason_name(d.reason)
                ));
            }
            if let Some(shown) = style.human(&m.payload) {
                line.push_str(&format!(" payload={shown}"));
            }
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Bytes of payload per atomic publish group (smaller than the smallest segment).
const BATCH_BYTES: usize = 16 << 10;
/// Messages per atomic publish group.
const BATCH_MESSAGES: usize = 1000;

/// Runs `walq publish DIR QUEUE`.
pub fn publish(dir: &Path, name: &str, raw: bool, create: bool, options: &WriteOptions) -> Outcome {
    let store = open_for_writing(dir, create, options, true)?;
    let result = publish_to(&store, dir, name, raw, create);
    let closed = store.close();
    let (count, first, last) = result?;
    closed.map_err(|e| Failure::Message(e.to_string()))?;
    let mut out = stdout();
    match (first, last) {
        (Some(first), Some(last)) => writeln!(
            out,
            "published {count} message(s) to {name} (ids {}-{})",
            first.get(),
            last.get()
        )?,
        _ => writeln!(out, "published no message (standard input was empty)")?,
    }
    out.flush()?;
    Ok(())
}

type Published = (u64, Option<MessageId>, Option<MessageId>);

fn publish_to(
    store: &Store,
    dir: &Path,
    name: &str,
    raw: bool,
    create: bool,
) -> Result<Published, Failure> {
    let queue = if create {
        store
            .declare_queue(name)
            .map_err(|e| Failure::Message(e.to_string()))?
    } else {
        find_queue(store, dir, name, "; pass --create to declare it")?
    };
    let mut stdin = io::stdin().lock();
    let mut done: Published = (0, None, None);
    let mut record = |ids: &[MessageId]| {
        done.0 += ids.len() as u64;
        if done.1.is_none() {
            done.1 = ids.first().copied();
        }
        if let Some(&last) = ids.last() {
            done.2 = Some(last);
        }
    };
    if raw {
        let mut payload = Vec::new();
        stdin.read_to_end(&mut payload)?;
        let id = queue.publish(&payload).map_err(publish_error)?;
        record(&[id]);
        return Ok(done);
    }
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut batch_bytes = 0;
    loop {
        let mut line = Vec::new();
        let eof = stdin.read_until(b'\n', &mut line)? == 0;
        if !eof {
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            batch_bytes += line.len();
            batch.push(line);
        }
        if !batch.is_empty() && (eof || batch.len() >= BATCH_MESSAGES || batch_bytes >= BATCH_BYTES)
        {
            record(&publish_batch(&queue, &batch)?);
            batch.clear();
            batch_bytes = 0;
        }
        if eof {
            return Ok(done);
        }
    }
}

/// Publishes `batch` atomically, or one by one if it does not fit in a segment.
fn publish_batch(queue: &Queue, batch: &[Vec<u8>]) -> Result<Vec<MessageId>, Failure> {
    match queue.publish_batch(batch) {
        Err(Error::TooLarge { what, .. }) if batch.len() > 1 && what != "message" => batch
            .iter()
            .map(|p| queue.publish(p).map_err(publish_error))
            .collect(),
        other => other.map_err(publish_error),
    }
}

fn publish_error(e: Error) -> Failure {
    match e {
        Error::TooLarge { .. } => Failure::Message(format!(
            "{e}; nothing more was published (--max-message-size raises the limit for this \
             command, up to what one segment holds)"
        )),
        other => Failure::Message(format!("publish failed: {other}")),
    }
}

/// Options of `walq consume`.
#[derive(Debug)]
pub struct ConsumeOptions {
    /// Acknowledge what was printed.
    pub ack: bool,
    /// At most this many messages.
    pub count: usize,
    /// Seconds to wait for each message.
    pub timeout: Option<f64>,
    /// JSON lines.
    pub json: bool,
}

/// Runs `walq consume DIR QUEUE`.
pub fn consume(dir: &Path, name: &str, o: &ConsumeOptions, options: &WriteOptions) -> Outcome {
    let wait = match o.timeout {
        None => None,
        Some(secs) => Some(Duration::try_from_secs_f64(secs).map_err(|_| {
            Failure::Message(format!(
                "--timeout {secs} is not a number of seconds (give e.g. 0.5 or 10)"
            ))
        })?),
    };
    let store = open_for_writing(dir, false, options, true)?;
    let queue = match find_queue(&store, dir, name, "") {
        Ok(queue) => queue,
        Err(e) => {
            let _ = store.close();
            return Err(e);
        }
    };
    let mut held = Vec::new();
    let result = consume_from(&queue, o, wait, &mut held);
    // Whatever was received and not acked goes back, in its order.
    let mut back = Ok(());
    for id in held {
        if let Err(e) = queue.nack(id, true) {
            back = Err(Failure::Message(format!(
                "could not put message {id} back: {e}"
            )));
        }
    }
    let closed = store.close();
    result?;
    back?;
    closed.map_err(|e| Failure::Message(e.to_string()))
}

fn consume_from(
    queue: &Queue,
    o: &ConsumeOptions,
    wait: Option<Duration>,
    held: &mut Vec<MessageId>,
) -> Outcome {
    let mut out = stdout();
    let failed = |e: Error| Failure::Message(format!("receive failed: {e}"));
    for _ in 0..o.count {
        let delivery = match wait {
            Some(timeout) => queue.receive_timeout(timeout).map_err(failed)?,
            None => queue.try_receive().map_err(failed)?,
        };
        let Some(d) = delivery else {
            break;
        };
        held.push(d.id);
        if o.json {
            json_line(
                &mut out,
                &json!({
                    "id": d.id.get(),
                    "delivery_count": d.delivery_count,
                    "redelivered": d.redelivered,
                    "payload": crate::output::escape(&d.payload),
                }),
            )?;
        } else {
            out.write_all(&d.payload)?;
            out.write_all(b"\n")?;
        }
        // Acknowledge only what is out of the process.
        out.flush()?;
        if o.ack {
            queue
                .ack(d.id)
                .map_err(|e| Failure::Message(format!("ack of {} failed: {e}", d.id)))?;
            held.pop();
        }
    }
    Ok(())
}

/// Runs `walq redrive DIR DLQ`.
pub fn redrive(dir: &Path, dlq: &str, options: &WriteOptions) -> Outcome {
    let store = open_for_writing(dir, false, options, true)?;
    let result = find_queue(&store, dir, dlq, "").and_then(|_| {
        store
            .redrive(dlq)
            .map_err(|e| Failure::Message(format!("redrive failed: {e}")))
    });
    let closed = store.close();
    let moved = result?;
    closed.map_err(|e| Failure::Message(e.to_string()))?;
    let mut out = stdout();
    writeln!(
        out,
        "moved {moved} message(s) from {dlq} back to the queues they were dead-lettered from"
    )?;
    out.flush()?;
    Ok(())
}

/// Runs `walq compact DIR`.
pub fn compact(dir: &Path, options: &WriteOptions) -> Outcome {
    let store = open_for_writing(dir, false, options, true)?;
    let spinner = crate::output::spinner("compacting");
    let result = store
        .compact()
        .map_err(|e| Failure::Message(format!("compaction failed: {e}")));
    spinner.finish_and_clear();
    let closed = store.close();
    let report = result?;
    closed.map_err(|e| Failure::Message(e.to_string()))?;
    let mut out = stdout();
    writeln!(
        out,
        "checkpoint {} ({} unsettled messages); relocated {} message(s), {} payload bytes; \
         deleted {} segment(s), {} bytes reclaimed",
        report.checkpoint_sequence,
        report.checkpoint_messages,
        report.relocated_messages,
        report.relocated_bytes,
        report.segments_deleted.len(),
        report.bytes_reclaimed
    )?;
    out.flush()?;
    Ok(())
}

/// Messages acked per atomic group by `purge`.
const PURGE_CHUNK: usize = 1000;

/// Runs `walq purge DIR QUEUE`.
pub fn purge(dir: &Path, name: &str, yes: bool, options: &WriteOptions) -> Outcome {
    let interactive = io::stdin().is_terminal();
    if !yes && !interactive {
        // Refuse before opening: the store is not touched at all.
        return Err(Failure::Message(
            "refusing to purge without --yes: standard input is not a terminal, so nobody can \
             confirm (pass --yes to purge from a script)"
                .into(),
        ));
    }
    // No delivery records: the messages are acked right away.
    let store = open_for_writing(dir, false, options, false)?;
    let result = purge_queue(&store, dir, name, yes);
    let closed = store.close();
    let purged = result?;
    closed.map_err(|e| Failure::Message(e.to_string()))?;
    let Some(purged) = purged else {
        return Err(Failure::Exit(crate::exit::PROBLEM));
    };
    let mut out = stdout();
    writeln!(out, "purged {purged} message(s) from {name}")?;
    out.flush()?;
    Ok(())
}

/// Purges `name`; `None` if the operator declined.
fn purge_queue(store: &Store, dir: &Path, name: &str, yes: bool) -> Result<Option<u64>, Failure> {
    let queue = find_queue(store, dir, name, "")?;
    let ready = queue.stats().ready;
    if !yes {
        let mut err = io::stderr().lock();
        write!(
            err,
            "Remove the {ready} ready message(s) of queue {name:?} in {} for good? [y/N] ",
            dir.display()
        )?;
        err.flush()?;
        let mut answer = String::new();
        io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            writeln!(err, "not purged")?;
            return Ok(None);
        }
    }
    let consumer = queue
        .consumer(ConsumerOptions::new())
        .map_err(|e| Failure::Message(e.to_string()))?;
    let failed = |e: Error| Failure::Message(format!("purge failed: {e}"));
    let mut purged = 0u64;
    loop {
        let mut highest: Option<MessageId> = None;
        for _ in 0..PURGE_CHUNK {
            match consumer.try_receive().map_err(failed)? {
                Some(d) => highest = highest.max(Some(d.id)),
                None => break,
            }
        }
        let Some(highest) = highest else {
            break;
        };
        purged += consumer.ack_multiple(highest).map_err(failed)? as u64;
    }
    consumer.close().map_err(failed)?;
    Ok(Some(purged))
}
