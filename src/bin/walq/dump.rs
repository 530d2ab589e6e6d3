//! `walq dump`: every record of the log, for humans or as JSON lines.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;

use serde_json::{json, Map, Value};
use walq::format::{
    AckBody, DeliverBody, Disposition, MoveBody, MoveReason, PublishBody, QueueDeclareBody,
    RecordKind, RelocateBody, RollbackBody, SealBody, NO_QUEUE,
};

use crate::access::lock_for_reading;
use crate::output::{json_line, progress, stdout, PayloadStyle};
use crate::scan::{self, Frame, Severity};
use crate::{exit, Failure, KindFilter, Outcome};

/// What to print and how.
#[derive(Debug)]
pub struct Filter {
    /// JSON lines instead of text.
    pub json: bool,
    /// Only records about this queue.
    pub queue: Option<String>,
    /// Only these kinds (all if empty).
    pub kinds: Vec<KindFilter>,
    /// Payload display.
    pub payload: PayloadStyle,
}

/// Runs `walq dump DIR`.
pub fn run(dir: &Path, filter: &Filter) -> Outcome {
    let _lock = lock_for_reading(dir)?;
    let total = scan::list(dir)?
        .segments
        .iter()
        .map(|s| s.file_len)
        .sum::<u64>();
    let bar = progress(total, "dumping");
    let mut out = stdout();
    let mut dumper = Dumper {
        filter,
        queues: HashMap::new(),
        wanted: None,
        messages: HashMap::new(),
    };
    let walked = scan::walk(
        dir,
        &mut |segment, frame| dumper.record(&mut out, segment.id, frame),
        &mut |done| bar.set_position(done),
    );
    bar.finish_and_clear();
    let walk = walked?;
    out.flush()?;
    drop(out);
    let mut stderr = io::stderr().lock();
    let mut code = exit::OK;
    for issue in walk.issues.iter().filter(|i| i.severity > Severity::Note) {
        writeln!(stderr, "walq: {issue}")?;
    }
    match walk.worst() {
        Some(Severity::Problem) => {
            writeln!(
                stderr,
                "walq: the log is damaged; records after each problem were not printed \
                 (run `walq verify {}`)",
                dir.display()
            )?;
            code = exit::PROBLEM;
        }
        Some(Severity::Warning)
            if walk
                .issues
                .iter()
                .any(|i| i.message.starts_with("torn tail")) =>
        {
            code = exit::TORN_TAIL;
        }
        _ => {}
    }
    if let (Some(name), None) = (&filter.queue, dumper.wanted) {
        writeln!(
            stderr,
            "walq: no queue named {name:?} is declared in the log"
        )?;
        code = code.max(exit::PROBLEM);
    }
    if code == exit::OK {
        Ok(())
    } else {
        Err(Failure::Exit(code))
    }
}

/// The walk's state: queue names and the queue each live message is in.
struct Dumper<'a> {
    filter: &'a Filter,
    queues: HashMap<u32, String>,
    /// The id of the `--queue` queue, once declared.
    wanted: Option<u32>,
    /// Live messages (published, not acked or dropped) and their queue.
    messages: HashMap<u64, u32>,
}

fn kind_name(kind: RecordKind) -> (&'static str, KindFilter) {
    match kind {
        RecordKind::Seal => ("seal", KindFilter::Seal),
        RecordKind::Commit => ("commit", KindFilter::Commit),
        RecordKind::QueueDeclare => ("declare", KindFilter::Declare),
        RecordKind::Publish => ("publish", KindFilter::Publish),
        RecordKind::Ack => ("ack", KindFilter::Ack),
        RecordKind::Rollback => ("rollback", KindFilter::Rollback),
        RecordKind::Deliver => ("deliver", KindFilter::Deliver),
        RecordKind::Move => ("move", KindFilter::Move),
        RecordKind::Relocate => ("relocate", KindFilter::Relocate),
    }
}

fn reason_name(reason: MoveReason) -> &'static str {
    match reason {
        MoveReason::Rejected => "rejected",
        MoveReason::Expired => "expired",
        MoveReason::DeliveryLimit => "delivery-limit",
        MoveReason::Overflow => "overflow",
        MoveReason::Redrive => "redrive",
    }
}

/// A record ready to print: text fields and JSON fields side by side.
#[derive(Default)]
struct Line {
    text: Vec<String>,
    json: Map<String, Value>,
}

impl Line {
    fn field(&mut self, key: &str, value: impl Into<Value> + std::fmt::Display) {
        self.text.push(format!("{key}={value}"));
        self.json.insert(key.into(), value.into());
    }

    fn quoted(&mut self, key: &str, value: &str) {
        self.text.push(format!("{key}={value:?}"));
        self.json.insert(key.into(), value.into());
    }
}

impl Dumper<'_> {
    fn queue_name(&self, id: u32) -> Option<&str> {
        self.queues.get(&id).map(String::as_str)
    }

    fn add_queue(&self, line: &mut Line, key: &str, id: u32) {
        line.json.insert(format!("{key}_id"), id.into());
        if let Some(name) = self.queue_name(id) {
            line.quoted(key, name);
        }
    }

    fn record(&mut self, out: &mut impl Write, segment: u64, frame: &Frame<'_>) -> io::Result<()> {
        let Some(kind) = RecordKind::from_u8(frame.kind) else {
            return Ok(()); // reported by the walk as a problem
        };
        let (name, filter_kind) = kind_name(kind);
        let mut line = Line::default();
        // Whether the record concerns the `--queue` queue.
        let mut about_wanted = false;
        let wanted = self.wanted;
        let is_wanted = |q: u32| wanted == Some(q);
        match kind {
            RecordKind::QueueDeclare => {
                let Ok(d) = QueueDeclareBody::decode(frame.body) else {
                    return Ok(());
                };
                if self.filter.queue.as_deref() == Some(d.name.as_str()) {
                    self.wanted = Some(d.queue_id);
                    about_wanted = true;
                }
                self.queues.insert(d.queue_id, d.name.clone());
                line.field("queue_id", d.queue_id);
                line.quoted("queue", &d.name);
                let s = d.settings;
                for (key, value) in [
                    ("ack_timeout_ms", s.ack_timeout_ms),
                    ("message_ttl_ms", s.message_ttl_ms),
                    ("max_deliveries", u64::from(s.max_deliveries)),
                    ("max_length", s.max_length),
                    ("max_bytes", s.max_bytes),
                ] {
                    if value != 0 {
                        line.field(key, value);
                    }
                }
                if s.dead_letter_queue != NO_QUEUE {
                    self.add_queue(&mut line, "dead_letter_queue", s.dead_letter_queue);
                }
                if s.max_length != 0 || s.max_bytes != 0 {
                    let overflow = if s.overflow == 1 {
                        "reject-publish"
                    } else {
                        "drop-head"
                    };
                    line.field("overflow", overflow);
                }
            }
            RecordKind::Publish | RecordKind::Relocate => {
                let p = if kind == RecordKind::Publish {
                    let Ok(p) = PublishBody::decode(frame.body) else {
                        return Ok(());
                    };
                    p
                } else {
                    let Ok(r) = RelocateBody::decode(frame.body) else {
                        return Ok(());
                    };
                    if r.delivery_count != 0 {
                        line.field("delivery_count", r.delivery_count);
                    }
                    if let Some((from, reason)) = r.origin {
                        self.add_queue(&mut line, "origin", from);
                        line.field("origin_reason", reason_name(reason));
                    }
                    PublishBody {
                        header: r.header,
                        payload: r.payload,
                    }
                };
                let h = p.header;
                about_wanted = is_wanted(h.queue_id);
                self.messages.insert(h.id, h.queue_id);
                line.field("id", h.id);
                self.add_queue(&mut line, "queue", h.queue_id);
                line.field("published_ms", h.published_ms);
                if h.expires_ms != 0 {
                    line.field("expires_ms", h.expires_ms);
                }
                if h.not_before_ms != 0 {
                    line.field("not_before_ms", h.not_before_ms);
                }
                if !self.filter.json {
                    line.field("len", p.payload.len());
                    if let Some(shown) = self.filter.payload.human(p.payload) {
                        line.text.push(format!("payload={shown}"));
                    }
                } else {
                    self.filter.payload.json(&mut line.json, p.payload);
                }
            }
            RecordKind::Ack => {
                let Ok(a) = AckBody::decode(frame.body) else {
                    return Ok(());
                };
                let mut text = Vec::new();
                for &(first, last) in &a.ranges {
                    if last - first < self.messages.len() as u64 {
                        for id in first..=last {
                            if let Some(q) = self.messages.remove(&id) {
                                about_wanted |= is_wanted(q);
                            }
                        }
                    } else {
                        // A range wider than the live messages: walk those instead.
                        self.messages.retain(|id, q| {
                            let acked = (first..=last).contains(id);
                            about_wanted |= acked && wanted == Some(*q);
                            !acked
                        });
                    }
                    text.push(if first == last {
                        first.to_string()
                    } else {
                        format!("{first}-{last}")
                    });
                }
                line.text.push(format!("ids={}", text.join(",")));
                line.json.insert("ranges".into(), json!(a.ranges));
            }
            RecordKind::Rollback => {
                let Ok(r) = RollbackBody::decode(frame.body) else {
                    return Ok(());
                };
                let queue = match r.disposition {
                    Disposition::Drop => self.messages.remove(&r.id),
                    Disposition::Requeue => self.messages.get(&r.id).copied(),
                };
                about_wanted = queue.is_some_and(is_wanted);
                line.field("id", r.id);
                if let Some(q) = queue {
                    self.add_queue(&mut line, "queue", q);
                }
                let disposition = match r.disposition {
                    Disposition::Requeue => "requeue",
                    Disposition::Drop => "drop",
                };
                line.field("disposition", disposition);
                if let Some(reason) = r.reason {
                    line.field("reason", reason_name(reason));
                }
                line.field("delivery_count", r.delivery_count);
                if r.not_before_ms != 0 {
                    line.field("not_before_ms", r.not_before_ms);
                }
            }
            RecordKind::Deliver => {
                let Ok(d) = DeliverBody::decode(frame.body) else {
                    return Ok(());
                };
                let queue = self.messages.get(&d.id).copied();
                about_wanted = queue.is_some_and(is_wanted);
                line.field("id", d.id);
                if let Some(q) = queue {
                    self.add_queue(&mut line, "queue", q);
                }
                line.field("delivery_count", d.delivery_count);
            }
            RecordKind::Move => {
                let Ok(m) = MoveBody::decode(frame.body) else {
                    return Ok(());
                };
                let from = self.messages.insert(m.id, m.to_queue);
                about_wanted = from.is_some_and(is_wanted) || is_wanted(m.to_queue);
                line.field("id", m.id);
                if let Some(q) = from {
                    self.add_queue(&mut line, "from_queue", q);
                }
                self.add_queue(&mut line, "to_queue", m.to_queue);
                line.field("reason", reason_name(m.reason));
            }
            RecordKind::Seal => {
                if let Ok(s) = SealBody::decode(frame.body) {
                    line.field("next_segment", s.next_segment_id);
                }
            }
            RecordKind::Commit => {}
        }
        if self.filter.queue.is_some() && !about_wanted {
            return Ok(());
        }
        if !self.filter.kinds.is_empty() && !self.filter.kinds.contains(&filter_kind) {
            return Ok(());
        }
        if self.filter.json {
            let mut object = Map::new();
            object.insert("segment".into(), segment.into());
            object.insert("offset".into(), frame.offset.into());
            object.insert("kind".into(), name.into());
            if frame.continues {
                object.insert("continues".into(), true.into());
            }
            object.append(&mut line.json);
            json_line(out, &Value::Object(object))
        } else {
            let group = if frame.continues { "+" } else { " " };
            let text = format!(
                "{segment}:{:<10}{group}{name:<9}{}",
                frame.offset,
                line.text.join(" ")
            );
            writeln!(out, "{}", text.trim_end())
        }
    }
}
