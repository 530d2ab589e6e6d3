//! `walq stat`: queues, segments and disk use.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::access::open_read_only;
use crate::output::{bytes, json_line, progress, stdout};
use crate::scan::{self, Severity};
use crate::{Failure, Outcome};

/// One row of the segment table.
struct SegmentRow {
    id: u64,
    file_bytes: u64,
    record_bytes: u64,
    /// Unsettled messages whose payload record is in the segment, and their framed bytes.
    live_messages: u64,
    live_fraction: f64,
}

/// The segment table's headers, in the order of [`SegmentRow::cells`].
const SEGMENT_COLUMNS: [&str; 5] = ["SEGMENT", "FILE BYTES", "RECORD BYTES", "LIVE MSGS", "LIVE"];

impl SegmentRow {
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.file_bytes.to_string(),
            self.record_bytes.to_string(),
            self.live_messages.to_string(),
            format!("{:.1}%", self.live_fraction * 100.0),
        ]
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "file_bytes": self.file_bytes,
            "record_bytes": self.record_bytes,
            "live_messages": self.live_messages,
            "live_fraction": self.live_fraction,
        })
    }
}

const QUEUE_COLUMNS: [&str; 7] = [
    "QUEUE",
    "READY",
    "DELAYED",
    "UNACKED",
    "DEAD-LETTERED",
    "DROPPED",
    "BYTES",
];

/// Runs `walq stat DIR`.
pub fn run(dir: &Path, as_json: bool) -> Outcome {
    let opened = open_read_only(dir)?;
    let stats = opened.store.stats();
    let truncated = opened.store.recovery_report().truncated.clone();
    // Per-segment sizes come from the files themselves: the overlay may hold a segment that
    // exists only in memory.
    let total = scan::list(dir)?
        .segments
        .iter()
        .map(|s| s.file_len)
        .sum::<u64>();
    let bar = progress(total, "reading segments");
    let walked = scan::walk(dir, &mut |_, _| Ok(()), &mut |done| bar.set_position(done));
    bar.finish_and_clear();
    let walk = walked?;
    let live: std::collections::HashMap<u64, (u64, f64)> = opened
        .store
        .segment_stats()
        .iter()
        .map(|s| (s.id.0, (s.live_messages, s.live_fraction())))
        .collect();
    drop(opened);
    let segments: Vec<SegmentRow> = walk
        .scans
        .iter()
        .map(|(file, scan)| {
            let (live_messages, live_fraction) = live.get(&file.id).copied().unwrap_or((0, 0.0));
            SegmentRow {
                id: file.id,
                file_bytes: file.file_len,
                record_bytes: scan.data_end,
                live_messages,
                live_fraction,
            }
        })
        .collect();
    let file_bytes: u64 = segments.iter().map(|s| s.file_bytes).sum();
    let record_bytes: u64 = segments.iter().map(|s| s.record_bytes).sum();
    let mut out = stdout();
    if as_json {
        let queues: Vec<Value> = stats
            .queues
            .iter()
            .map(|q| {
                json!({
                    "name": &*q.name,
                    "ready": q.ready,
                    "delayed": q.delayed,
                    "unacked": q.unacked,
                    "bytes": q.bytes,
                    "published": q.published,
                    "acked": q.acked,
                    "rejected": q.rejected,
                    "expired": q.expired,
                    "dead_lettered": q.dead_lettered,
                    "dropped": q.dropped,
                })
            })
            .collect();
        let value = json!({
            "dir": dir.display().to_string(),
            "queues": queues,
            "ready": stats.ready,
            "unacked": stats.unacked,
            "next_message_id": stats.next_message_id,
            "acked": stats.acked,
            "rejected": stats.rejected,
            "segments": segments.iter().map(SegmentRow::json).collect::<Vec<_>>(),
            "record_bytes": record_bytes,
            "bytes_on_disk": file_bytes,
            "torn_tail": truncated.as_ref().map(|t| json!({
                "segment": t.segment.0,
                "offset": t.offset,
                "reason": t.reason,
            })),
        });
        json_line(&mut out, &value)?;
        out.flush()?;
        return Ok(());
    }
    writeln!(
        out,
        "store {}: {} queue(s), {} segment(s), {} of records, {} on disk",
        dir.display(),
        stats.queues.len(),
        segments.len(),
        bytes(record_bytes),
        bytes(file_bytes)
    )?;
    writeln!(
        out,
        "messages: {} ready, {} unacked; next id {}, {} acked and {} rejected in the log",
        stats.ready, stats.unacked, stats.next_message_id, stats.acked, stats.rejected
    )?;
    writeln!(out)?;
    let rows: Vec<Vec<String>> = stats
        .queues
        .iter()
        .map(|q| {
            vec![
                q.name.to_string(),
                q.ready.to_string(),
                q.delayed.to_string(),
                q.unacked.to_string(),
                q.dead_lettered.to_string(),
                q.dropped.to_string(),
                q.bytes.to_string(),
            ]
        })
        .collect();
    table(&mut out, &QUEUE_COLUMNS, &rows)?;
    writeln!(out)?;
    let rows: Vec<Vec<String>> = segments.iter().map(SegmentRow::cells).collect();
    table(&mut out, &SEGMENT_COLUMNS, &rows)?;
    if let Some(t) = truncated {
        writeln!(
            out,
            "\nnote: the log ends in a torn tail at segment {} offset {} ({}); the next open \
             cuts it",
            t.segment, t.offset, t.reason
        )?;
    }
    for issue in walk
        .issues
        .iter()
        .filter(|i| i.severity >= Severity::Warning)
    {
        if !issue.message.starts_with("torn tail") {
            writeln!(out, "{issue}")?;
        }
    }
    out.flush().map_err(Failure::from)
}

/// Prints a table: the first column left-aligned, the others right-aligned.
fn table(out: &mut impl Write, headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &w))| {
                if i == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}
