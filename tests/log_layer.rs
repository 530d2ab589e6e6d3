//! The segmented log works on its own: records and groups read back by position, roll over
//! at the segment size without spanning segments, oversized records write nothing, reopen
//! replays everything at the same positions, `truncate_from` and `purge_before` cut the log
//! durably, and `sync` makes the durable position reach the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use walq::format::{frame_len, SEGMENT_HEADER_LEN};
use walq::io::MemVfs;
use walq::log::{Log, Record};
use walq::{Error, FsyncPolicy, LogOptions, Position, RecoveryReport, SegmentId};

const SEGMENT_SIZE: u64 = 64 << 10;

fn dir() -> PathBuf {
    PathBuf::from("/log")
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

fn opts() -> LogOptions {
    LogOptions::new().segment_size(SEGMENT_SIZE)
}

/// A record as written or replayed: position, kind, body.
type Entry = (Position, u8, Vec<u8>);

fn open_collect(vfs: &MemVfs, options: LogOptions) -> (Log, RecoveryReport, Vec<Entry>) {
    let mut seen = Vec::new();
    let (log, report) = Log::open(Arc::new(vfs.clone()), &dir(), options, &mut |rec| {
        seen.push((rec.position, rec.kind, rec.body.to_vec()));
        Ok(())
    })
    .expect("open log");
    (log, report, seen)
}

fn body(i: usize, len: usize) -> Vec<u8> {
    let mut b = format!("record {i}:").into_bytes();
    b.resize(len, (i % 251) as u8);
    b
}

/// Appends one record of kind `16 + i % 8` and returns what was written.
fn append_one(log: &Log, i: usize, len: usize) -> Entry {
    let b = body(i, len);
    let kind = 16 + (i % 8) as u8;
    let appended = log.append(&[Record { kind, body: &[&b] }]).expect("append");
    assert_eq!(appended.positions.len(), 1);
    (appended.positions[0], kind, b)
}

fn assert_readable(log: &Log, entries: &[Entry]) {
    for (pos, kind, b) in entries {
        let rec = log.read(*pos).unwrap_or_else(|e| panic!("read {pos}: {e}"));
        assert_eq!((rec.kind, &rec.body), (*kind, b), "record at {pos}");
    }
}

#[test]
fn single_records_and_groups_read_back() {
    let vfs = MemVfs::new();
    let (log, report, seen) = open_collect(&vfs, opts());
    assert!(seen.is_empty());
    assert_eq!(report.truncated, None);
    let start = log.end_position();
    assert_eq!(
        start.offset, SEGMENT_HEADER_LEN as u64,
        "first record after the header"
    );

    // A record whose body is given in several parts is stored as their concatenation.
    let appended = log
        .append(&[Record {
            kind: 16,
            body: &[b"hello, ", b"", b"log"],
        }])
        .expect("append");
    assert_eq!(appended.positions, vec![start]);
    let rec = log.read(start).expect("read");
    assert_eq!((rec.kind, rec.body.as_slice()), (16, &b"hello, log"[..]));
    assert_eq!(rec.next, appended.end);
    assert_eq!(appended.end.offset, start.offset + frame_len(10) as u64);

    // Empty bodies are fine.
    let empty = log
        .append(&[Record {
            kind: 200,
            body: &[],
        }])
        .expect("append empty");
    let rec = log.read(empty.positions[0]).expect("read empty");
    assert_eq!((rec.kind, rec.body.len()), (200, 0));

    // A group: consecutive positions, each record's `next` is the following one.
    let bodies: Vec<Vec<u8>> = (0..5).map(|i| body(i, 7 + i * 13)).collect();
    let parts: Vec<[&[u8]; 1]> = bodies.iter().map(|b| [b.as_slice()]).collect();
    let records: Vec<Record<'_>> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| Record {
            kind: 30 + i as u8,
            body: p,
        })
        .collect();
    let group = log.append(&records).expect("append group");
    assert_eq!(group.positions.len(), 5);
    assert_eq!(group.positions[0], empty.end);
    for (i, pos) in group.positions.iter().enumerate() {
        let rec = log.read(*pos).expect("read group record");
        assert_eq!(rec.kind, 30 + i as u8);
        assert_eq!(rec.body, bodies[i]);
        let next = group.positions.get(i + 1).copied().unwrap_or(group.end);
        assert_eq!(rec.next, next);
    }
    assert_eq!(log.end_position(), group.end);

    // An empty group is refused.
    assert!(matches!(log.append(&[]), Err(Error::EmptyBatch)));
    assert_eq!(log.end_position(), group.end);
}

#[test]
fn rolls_over_at_the_segment_size_and_never_spans_segments() {
    let vfs = MemVfs::new();
    let (log, _, _) = open_collect(&vfs, opts());
    assert_eq!(log.segments().len(), 1);
    let mut entries = Vec::new();
    let mut counts = vec![log.segments().len()];
    for i in 0..60 {
        entries.push(append_one(&log, i, 3000 + (i * 37) % 500));
        counts.push(log.segments().len());
    }
    // Groups of four 2500-byte records.
    let mut groups = Vec::new();
    for g in 0..20 {
        let bodies: Vec<Vec<u8>> = (0..4).map(|i| body(1000 + g * 4 + i, 2500)).collect();
        let parts: Vec<[&[u8]; 1]> = bodies.iter().map(|b| [b.as_slice()]).collect();
        let records: Vec<Record<'_>> = parts.iter().map(|p| Record { kind: 99, body: p }).collect();
        let appended = log.append(&records).expect("append group");
        let seg = appended.positions[0].segment;
        assert!(
            appended.positions.iter().all(|p| p.segment == seg),
            "group {g} spans segments: {:?}",
            appended.positions
        );
        for (p, b) in appended.positions.iter().zip(bodies) {
            entries.push((*p, 99, b));
        }
        groups.push(appended);
        counts.push(log.segments().len());
    }
    let segments = log.segments();
    // About 220 KB of records in 64 KiB segments.
    assert!(segments.len() >= 4, "only {} segments", segments.len());
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "segments() never shrinks"
    );
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s.id, SegmentId(i as u64), "segment ids are consecutive");
        assert_eq!(s.path, seg_path(&dir(), i as u64));
        assert!(s.data_end <= SEGMENT_SIZE, "segment {i} overflows: {s:?}");
        assert_eq!(s.file_len, SEGMENT_SIZE, "preallocated");
    }
    // Positions increase, and every record lies wholly inside its segment's data.
    for w in entries.windows(2) {
        assert!(w[0].0 < w[1].0, "positions increase");
    }
    for (pos, _, b) in &entries {
        let seg = &segments[pos.segment.0 as usize];
        assert!(pos.offset + frame_len(b.len()) as u64 <= seg.data_end);
    }
    assert_readable(&log, &entries);
    // A rolled segment ends with a seal record (kind 1) right after its last record, and
    // the seal ends exactly at the segment's data end.
    for s in &segments[..segments.len() - 1] {
        let last = entries
            .iter()
            .rfind(|(p, _, _)| p.segment == s.id)
            .expect("records in every segment");
        let seal = log.read(last.0).expect("read").next;
        let rec = log.read(seal).expect("read seal");
        assert_eq!(
            rec.kind, 1,
            "a seal follows the last record of segment {}",
            s.id
        );
        assert_eq!(rec.next.offset, s.data_end);
    }
}

#[test]
fn too_large_records_and_groups_write_nothing() {
    let vfs = MemVfs::new();
    let (log, _, _) = open_collect(&vfs, opts());
    let first = append_one(&log, 0, 100);
    let end = log.end_position();
    let before = vfs.read_file(&seg_path(&dir(), 0)).expect("segment");

    let max = log.max_body_len();
    assert!(max < SEGMENT_SIZE);
    let big = vec![7u8; max as usize + 1];
    let err = log
        .append(&[Record {
            kind: 16,
            body: &[&big],
        }])
        .expect_err("too large");
    match err {
        Error::TooLarge { len, max: m, .. } => assert_eq!((len, m), (max + 1, max)),
        other => panic!("expected TooLarge, got {other}"),
    }
    // Split across parts, the same size is refused the same way.
    let (a, b) = big.split_at(1000);
    assert!(matches!(
        log.append(&[Record {
            kind: 16,
            body: &[a, b],
        }]),
        Err(Error::TooLarge { .. })
    ));
    // A group of records that each fit but together exceed one segment.
    let third = vec![1u8; (SEGMENT_SIZE / 3) as usize];
    let third_parts: [&[u8]; 1] = [&third];
    let records = [Record {
        kind: 16,
        body: &third_parts,
    }; 4];
    assert!(matches!(log.append(&records), Err(Error::TooLarge { .. })));

    assert_eq!(log.end_position(), end, "nothing written");
    assert_eq!(log.segments().len(), 1, "no roll-over for a refused record");
    assert_eq!(
        vfs.read_file(&seg_path(&dir(), 0)).expect("segment"),
        before
    );
    assert_readable(&log, std::slice::from_ref(&first));

    // The log is not poisoned, and the largest record does fit (in a fresh segment).
    let exact = vec![9u8; max as usize];
    let appended = log
        .append(&[Record {
            kind: 17,
            body: &[&exact],
        }])
        .expect("max_body_len fits");
    assert_eq!(appended.positions[0].segment, SegmentId(1));
    assert_eq!(appended.positions[0].offset, SEGMENT_HEADER_LEN as u64);
    assert_readable(&log, &[first, (appended.positions[0], 17, exact)]);
}

#[test]
fn reopen_replays_every_record_in_order_at_the_same_positions() {
    let vfs = MemVfs::new();
    let mut entries = Vec::new();
    {
        let (log, _, _) = open_collect(&vfs, opts());
        for i in 0..80 {
            entries.push(append_one(&log, i, 1 + (i * 997) % 4000));
        }
        let bodies: Vec<Vec<u8>> = (0..3).map(|i| body(500 + i, 50)).collect();
        let parts: Vec<[&[u8]; 1]> = bodies.iter().map(|b| [b.as_slice()]).collect();
        let records: Vec<Record<'_>> = parts.iter().map(|p| Record { kind: 77, body: p }).collect();
        let appended = log.append(&records).expect("group");
        for (p, b) in appended.positions.iter().zip(bodies) {
            entries.push((*p, 77, b));
        }
        assert!(log.segments().len() >= 3);
        // Dropped without close.
    }
    let end_before;
    {
        let (log, report, seen) = open_collect(&vfs, opts());
        assert_eq!(seen, entries, "replay after drop");
        assert_eq!(report.records, entries.len() as u64);
        assert_eq!(report.truncated, None);
        assert!(report.segments >= 3);
        assert_readable(&log, &entries);
        // Appends continue after the replayed records.
        let e = append_one(&log, 1000, 10);
        assert!(e.0 > entries.last().expect("entries").0);
        entries.push(e);
        log.close().expect("close");
        assert!(matches!(
            log.append(&[Record {
                kind: 16,
                body: &[]
            }]),
            Err(Error::Closed)
        ));
        end_before = log.end_position();
    }
    let (log, report, seen) = open_collect(&vfs, opts());
    assert_eq!(
        seen, entries,
        "replay after close (the commit marker is not visited)"
    );
    assert_eq!(report.records, entries.len() as u64);
    assert_readable(&log, &entries);
    assert!(log.end_position() >= end_before);
}

#[test]
fn a_visitor_error_aborts_open_and_a_second_open_is_locked() {
    let vfs = MemVfs::new();
    {
        let (log, _, _) = open_collect(&vfs, opts());
        for i in 0..5 {
            append_one(&log, i, 10);
        }
        let second = Log::open(Arc::new(vfs.clone()), &dir(), opts(), &mut |_| Ok(()));
        assert!(matches!(second, Err(Error::Locked { .. })), "{second:?}");
    }
    let mut n = 0;
    let result = Log::open(Arc::new(vfs.clone()), &dir(), opts(), &mut |_| {
        n += 1;
        if n == 3 {
            Err(Error::InvalidOptions("visitor says no".into()))
        } else {
            Ok(())
        }
    });
    assert!(
        matches!(&result, Err(Error::InvalidOptions(m)) if m == "visitor says no"),
        "{result:?}"
    );
    // The failed open released the lock and changed nothing.
    let (_, _, seen) = open_collect(&vfs, opts());
    assert_eq!(seen.len(), 5);
}

#[test]
fn truncate_from_removes_the_record_and_everything_after() {
    let vfs = MemVfs::new();
    let mut entries: Vec<Entry>;
    {
        let (log, _, _) = open_collect(&vfs, opts());
        entries = (0..20).map(|i| append_one(&log, i, 200)).collect();
        // Cut in the middle of the single segment.
        let cut = entries[12].0;
        log.truncate_from(cut).expect("truncate");
        entries.truncate(12);
        assert_eq!(log.end_position(), cut);
        assert_eq!(log.durable_position(), cut, "durable when it returns");
        assert!(log.read(cut).is_err(), "the cut record is gone");
        assert_readable(&log, &entries);
        // New appends go exactly to the cut position.
        let e = append_one(&log, 100, 300);
        assert_eq!(e.0, cut);
        entries.push(e);
        // Truncating at the current end is allowed and changes nothing.
        let end = log.end_position();
        log.truncate_from(end).expect("truncate at end");
        assert_eq!(log.end_position(), end);
        // A position that is not a record boundary is refused.
        let inside = Position {
            segment: cut.segment,
            offset: cut.offset + 8,
        };
        assert!(log.truncate_from(inside).is_err());
        assert_readable(&log, &entries);
    }
    let (_, report, seen) = open_collect(&vfs, opts());
    assert_eq!(seen, entries, "the truncation survives reopen");
    assert_eq!(report.truncated, None, "a truncated log is clean, not torn");
}

#[test]
fn truncate_from_across_segment_boundaries() {
    let vfs = MemVfs::new();
    let mut entries: Vec<Entry>;
    {
        let (log, _, _) = open_collect(&vfs, opts());
        entries = (0..100).map(|i| append_one(&log, i, 3000)).collect();
        let segs = log.segments().len();
        assert!(segs >= 4, "{segs} segments");
        // A record in segment 1: segments 2.. are deleted, segment 1 is cut.
        let idx = entries
            .iter()
            .position(|(p, _, _)| p.segment == SegmentId(1))
            .expect("records in segment 1")
            + 5;
        let cut = entries[idx].0;
        log.truncate_from(cut).expect("truncate");
        entries.truncate(idx);
        assert_eq!(log.segments().len(), 2);
        assert_eq!(log.end_position(), cut);
        for id in 2..segs as u64 {
            assert!(
                vfs.read_file(&seg_path(&dir(), id)).is_none(),
                "segment {id} deleted"
            );
        }
        assert_readable(&log, &entries);
        // Appending fills segment 1 again and rolls into a new segment 2.
        for i in 0..30 {
            let e = append_one(&log, 200 + i, 3000);
            if i == 0 {
                assert_eq!(e.0, cut, "appends continue at the cut");
            }
            entries.push(e);
        }
        assert!(log.segments().len() >= 3);
        assert_readable(&log, &entries);
    }
    {
        let (log, report, seen) = open_collect(&vfs, opts());
        assert_eq!(seen, entries);
        assert_eq!(report.truncated, None);
        // Truncate at the very first record of a segment other than the first.
        let first_of_2 = entries
            .iter()
            .position(|(p, _, _)| p.segment == SegmentId(2))
            .expect("records in segment 2");
        let cut = entries[first_of_2].0;
        assert_eq!(cut.offset, SEGMENT_HEADER_LEN as u64);
        log.truncate_from(cut).expect("truncate at a segment start");
        entries.truncate(first_of_2);
        let e = append_one(&log, 999, 10);
        assert_eq!(e.0, cut);
        entries.push(e);
    }
    let (_, _, seen) = open_collect(&vfs, opts());
    assert_eq!(seen, entries);
}

/// The end of a sealed segment (just past its seal) is not where the log can continue:
/// truncating there must be refused, or whatever is appended next must survive reopen.
#[test]
fn truncate_at_the_end_of_a_sealed_segment_loses_nothing() {
    let vfs = MemVfs::new();
    let mut entries: Vec<Entry>;
    {
        let (log, _, _) = open_collect(&vfs, opts());
        entries = (0..50).map(|i| append_one(&log, i, 3000)).collect();
        let sealed = log.segments()[0].clone();
        let pos = Position {
            segment: sealed.id,
            offset: sealed.data_end,
        };
        if log.truncate_from(pos).is_ok() {
            entries.retain(|(p, _, _)| p.segment == sealed.id);
            let e = append_one(&log, 77, 10);
            assert_readable(&log, std::slice::from_ref(&e));
            entries.push(e);
        } else {
            assert_readable(&log, &entries);
        }
    }
    let (_, _, seen) = open_collect(&vfs, opts());
    assert_eq!(seen, entries);
}

#[test]
fn purge_before_deletes_older_segments() {
    let vfs = MemVfs::new();
    let entries: Vec<Entry>;
    {
        let (log, _, _) = open_collect(&vfs, opts());
        entries = (0..100).map(|i| append_one(&log, i, 3000)).collect();
        let segs = log.segments().len();
        assert!(segs >= 4);
        assert_eq!(log.purge_before(SegmentId(2)).expect("purge"), 2);
        let ids: Vec<SegmentId> = log.segments().iter().map(|s| s.id).collect();
        assert_eq!(ids.first(), Some(&SegmentId(2)));
        assert_eq!(ids.len(), segs - 2);
        assert!(vfs.read_file(&seg_path(&dir(), 0)).is_none());
        assert!(vfs.read_file(&seg_path(&dir(), 1)).is_none());
        for (pos, kind, b) in &entries {
            if pos.segment < SegmentId(2) {
                assert!(log.read(*pos).is_err(), "{pos} was purged but reads");
            } else {
                let rec = log.read(*pos).expect("kept record");
                assert_eq!((rec.kind, &rec.body), (*kind, b));
            }
        }
        // Purging again is a no-op; purging everything keeps the active segment.
        assert_eq!(log.purge_before(SegmentId(2)).expect("purge"), 0);
        let active = log.end_position().segment;
        assert_eq!(
            log.purge_before(SegmentId(u64::MAX)).expect("purge all"),
            active.0 as usize - 2
        );
        assert_eq!(log.segments().len(), 1);
        assert_eq!(log.segments()[0].id, active);
        let e = append_one(&log, 5000, 10);
        assert_eq!(e.0.segment, active);
        assert_readable(&log, &[e]);
    }
    // Reopen replays only what is left.
    let (log, report, seen) = open_collect(&vfs, opts());
    assert!(seen
        .iter()
        .all(|(p, _, _)| p.segment == log.segments()[0].id));
    assert_eq!(report.segments, 1);
    let last_active: Vec<&Entry> = entries
        .iter()
        .filter(|(p, _, _)| p.segment == log.segments()[0].id)
        .collect();
    assert_eq!(seen.len(), last_active.len() + 1);
}

#[test]
fn purge_before_then_reopen_keeps_the_rest() {
    let vfs = MemVfs::new();
    let entries: Vec<Entry>;
    {
        let (log, _, _) = open_collect(&vfs, opts());
        entries = (0..100).map(|i| append_one(&log, i, 3000)).collect();
        assert_eq!(log.purge_before(SegmentId(2)).expect("purge"), 2);
    }
    let kept: Vec<Entry> = entries
        .iter()
        .filter(|(p, _, _)| p.segment >= SegmentId(2))
        .cloned()
        .collect();
    let (log, report, seen) = open_collect(&vfs, opts());
    assert_eq!(seen, kept);
    assert_eq!(report.truncated, None);
    assert_readable(&log, &kept);
    let gone = entries[0].0;
    assert!(log.read(gone).is_err());
}

#[test]
fn sync_makes_the_durable_position_reach_the_end() {
    let vfs = MemVfs::new();
    let (log, _, _) = open_collect(&vfs, opts().fsync(FsyncPolicy::Never));
    assert_eq!(log.durable_position(), log.end_position(), "fresh log");
    for i in 0..10 {
        append_one(&log, i, 100);
    }
    assert!(
        log.durable_position() < log.end_position(),
        "Never does not sync"
    );
    log.sync().expect("sync");
    assert_eq!(log.durable_position(), log.end_position());

    // Under Always every append returns durable.
    drop(log);
    let (log, _, _) = open_collect(&vfs, opts().fsync(FsyncPolicy::Always));
    assert_eq!(log.durable_position(), log.end_position(), "recovery syncs");
    for i in 0..5 {
        append_one(&log, i, 100);
        assert_eq!(log.durable_position(), log.end_position());
    }
    // `write` alone does not make a record durable; `commit` does under Always.
    let appended = log
        .write(&[Record {
            kind: 16,
            body: &[b"w"],
        }])
        .expect("write");
    assert!(log.durable_position() < appended.end);
    log.commit(&appended).expect("commit");
    assert!(log.durable_position() >= appended.end);
}

/// Kinds 0 to 15 are not user kinds (0 is invalid on disk, 1 to 15 belong to the log:
/// 1 is a seal, 2 a commit marker). Appending one must be refused with nothing written;
/// accepting it would make recovery misread the log (a fake seal ends a segment, a fake
/// commit vanishes, kind 0 or 3..15 makes the whole log unopenable).
#[test]
fn reserved_kinds_are_refused_by_append() {
    let mut problems = Vec::new();
    for kind in [0u8, 1, 2, 3, 15] {
        let vfs = MemVfs::new();
        let (log, _, _) = open_collect(&vfs, opts());
        let good = append_one(&log, 0, 20);
        let end = log.end_position();
        // A body that would even decode as a seal body.
        let fake_seal = 1u64.to_le_bytes();
        let result = log.append(&[Record {
            kind,
            body: &[&fake_seal],
        }]);
        let after = log.end_position();
        let later = append_one(&log, 1, 20);
        drop(log);
        let reopened = Log::open(Arc::new(vfs.clone()), &dir(), opts(), &mut |_| Ok(()))
            .map(|_| ())
            .map_err(|e| e.to_string());
        let mut seen = Vec::new();
        if reopened.is_ok() {
            seen = open_collect(&vfs, opts()).2;
        }
        if result.is_ok() || after != end || seen != vec![good, later] {
            problems.push(format!(
                "kind {kind}: append {} (end {end} -> {after}); reopen {reopened:?} \
                 replaying {} of 2 user records",
                if result.is_ok() {
                    "accepted"
                } else {
                    "refused"
                },
                seen.len()
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
