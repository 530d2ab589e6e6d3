//! `walq verify`: every checksum and format rule, then the library's own recovery and
//! replay as a cross-check, all without writing.

use std::io::Write;
use std::path::Path;

use walq::Error;

use crate::access::{lock_for_reading, overlay_store};
use crate::output::{bytes, progress, stdout};
use crate::scan::{self, Issue, Severity};
use crate::{exit, Failure, Outcome};

/// Runs `walq verify DIR`.
pub fn run(dir: &Path) -> Outcome {
    let _lock = lock_for_reading(dir)?;
    let total = scan::list(dir)?
        .segments
        .iter()
        .map(|s| s.file_len)
        .sum::<u64>();
    let bar = progress(total, "verifying");
    let walked = scan::walk(dir, &mut |_, _| Ok(()), &mut |done| bar.set_position(done));
    bar.set_message("replaying");
    let mut walk = match walked {
        Ok(walk) => walk,
        Err(e) => {
            bar.finish_and_clear();
            return Err(Failure::Message(format!(
                "cannot read {}: {e}",
                dir.display()
            )));
        }
    };
    // The library's recovery and replay over a copy-on-write view: it also checks what only
    // the queue state can tell (dense message ids, references to declared queues and
    // published messages).
    let library = overlay_store(dir);
    bar.finish_and_clear();
    cross_check(&mut walk.issues, library);

    let mut out = stdout();
    for issue in &walk.issues {
        writeln!(out, "{issue}")?;
    }
    let count = |severity| {
        walk.issues
            .iter()
            .filter(|i| i.severity == severity)
            .count()
    };
    let torn = walk
        .issues
        .iter()
        .any(|i| i.severity == Severity::Warning && i.message.starts_with("torn tail"));
    let summary = format!(
        "{} segment(s), {} record(s), {} of records",
        walk.scans.len(),
        walk.records(),
        bytes(walk.data_bytes())
    );
    let code = match walk.worst() {
        Some(Severity::Problem) => {
            writeln!(
                out,
                "FAILED: {}: {} problem(s), {} warning(s) in {summary}; the store does not \
                 open as it is (see docs/operations.md, \"When verify reports corruption\")",
                dir.display(),
                count(Severity::Problem),
                count(Severity::Warning),
            )?;
            exit::PROBLEM
        }
        Some(Severity::Warning) if torn => {
            writeln!(
                out,
                "torn tail: {}: {summary} verified, no damage; the log ends in the torn \
                 remains of unconfirmed writes, which the next open cuts",
                dir.display()
            )?;
            exit::TORN_TAIL
        }
        _ => {
            writeln!(
                out,
                "ok: {}: {summary} verified, no problem found",
                dir.display()
            )?;
            exit::OK
        }
    };
    out.flush()?;
    if code == exit::OK {
        Ok(())
    } else {
        Err(Failure::Exit(code))
    }
}

/// Adds what the library's recovery found and the walk did not (a finding at the same
/// segment and offset is the same one).
fn cross_check(issues: &mut Vec<Issue>, library: walq::Result<walq::Store>) {
    let has = |issues: &[Issue], segment: u64, offset: u64| {
        issues
            .iter()
            .any(|i| i.segment == Some(segment) && i.offset == Some(offset))
    };
    match library {
        Ok(store) => {
            if let Some(cut) = &store.recovery_report().truncated {
                if !has(issues, cut.segment.0, cut.offset) {
                    issues.push(Issue {
                        severity: Severity::Warning,
                        segment: Some(cut.segment.0),
                        offset: Some(cut.offset),
                        path: None,
                        message: format!("{} (reported by recovery)", cut.reason),
                    });
                }
            }
        }
        Err(Error::Corruption {
            segment,
            offset,
            reason,
        }) => {
            if !has(issues, segment.0, offset) {
                issues.push(Issue {
                    severity: Severity::Problem,
                    segment: Some(segment.0),
                    offset: Some(offset),
                    path: None,
                    message: format!("{reason} (found by replay)"),
                });
            }
        }
        Err(e) => {
            // A foreign file, a newer format: the walk reports those with their paths.
            if !issues.iter().any(|i| i.severity == Severity::Problem) {
                issues.push(Issue {
                    severity: Severity::Problem,
                    segment: None,
                    offset: None,
                    path: None,
                    message: format!("the store does not open: {e}"),
                });
            }
        }
    }
}
