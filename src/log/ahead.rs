//! Record checksums verified ahead of the recovery scan, on a second thread.
//!
//! Checksumming every byte of the log is most of what recovery costs, and one core reads
//! memory only so fast. So, for a large segment, a helper thread walks the same chain of
//! frames as the scan and verifies the checksums of every other window of `window` bytes
//! (the odd-numbered ones; a frame belongs to the window its first byte is in); in the other
//! windows it only follows the lengths. The scan verifies the even windows itself and, in
//! an odd window, skips the checksum of the frames the helper verified. Nothing else
//! changes: the scan still makes every other check on every frame, in log order, and stops
//! at the first invalid frame; a frame's checksum is skipped only if the helper verified
//! that very frame.
//!
//! Why a verified range is enough: both walks start at the segment's first frame, and the
//! offset of the next frame is a function of the bytes of the frame at hand, the same in
//! both. So while the scan keeps finding valid frames, its frames are the helper's. The
//! helper reports, per odd window, the first frame it found there and where its run of
//! verified frames ended; the scan trusts a window only if its own first frame there is
//! that same first frame (the chains meet), and then only the frames before the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::format::{decode_frame_with, FrameError, RecordView, SEGMENT_HEADER_LEN};

/// Windows of this many bytes alternate between the scan and the helper.
pub(super) const WINDOW: u64 = 1 << 20;

/// Segments shorter than this are scanned by one thread: starting the helper costs more
/// than it saves.
pub(super) const MIN_SEGMENT: u64 = 4 * WINDOW;

/// What the helper found in one odd window: the offset of the first frame that starts in it,
/// and the end of the run of frames from there whose checksums verified.
type Verdict = (u64, u64);

#[derive(Default)]
struct Progress {
    /// By window number (odd ones only are ever set).
    verdicts: Vec<Option<Verdict>>,
    /// The helper has stopped: windows without a verdict will never get one.
    finished: bool,
}

/// What the scan and the helper share.
#[derive(Default)]
pub(super) struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
    /// Set by the scan when it is done: the helper stops.
    cancel: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, window: u64, verdict: Verdict) {
        let Ok(index) = usize::try_from(window) else {
            return;
        };
        let mut progress = self.lock();
        if progress.verdicts.len() <= index {
            progress.verdicts.resize(index + 1, None);
        }
        if let Some(slot) = progress.verdicts.get_mut(index) {
            *slot = Some(verdict);
        }
        drop(progress);
        self.changed.notify_all();
    }

    /// Waits for the verdict of `window`; `None` if the helper stopped before it.
    fn wait(&self, window: u64) -> Option<Verdict> {
        let index = usize::try_from(window).ok()?;
        let mut progress = self.lock();
        loop {
            if let Some(&Some(verdict)) = progress.verdicts.get(index) {
                return Some(verdict);
            }
            if progress.finished {
                return None;
            }
            progress = self
                .changed
                .wait(progress)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Tells the helper to stop.
    pub(super) fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Marks the helper finished when it returns (or unwinds), so that the scan never waits
/// for a verdict that will not come.
struct Finished<'a>(&'a Shared);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.lock().finished = true;
        self.0.changed.notify_all();
    }
}

/// The helper thread's work: walks the frames of `view` from the first one, verifying the
/// checksums of those in odd windows, until a frame is invalid, the view ends, or the scan
/// cancels.
pub(super) fn verify(view: &[u8], salt: u64, segment_id: u64, window: u64, shared: &Shared) {
    let _finished = Finished(shared);
    let window = window.max(1);
    let mut offset = SEGMENT_HEADER_LEN as u64;
    // The odd window being verified and its first frame.
    let mut current: Option<(u64, u64)> = None;
    while !shared.cancel.load(Ordering::Relaxed) {
        let k = offset / window;
        if let Some((w, first)) = current.filter(|&(w, _)| w != k) {
            shared.publish(w, (first, offset));
            current = None;
        }
        let mine = k % 2 == 1;
        if mine && current.is_none() {
            current = Some((k, offset));
        }
        let rest = usize::try_from(offset)
            .ok()
            .and_then(|o| view.get(o..))
            .unwrap_or_default();
        match decode_frame_with(rest, offset, mine.then_some((salt, segment_id))) {
            Ok(frame) => offset = frame.next_offset,
            Err(_) => break,
        }
    }
    if let Some((w, first)) = current {
        shared.publish(w, (first, offset));
    }
}

/// Decodes frames for the scan: in full, or without the checksum where the helper verified
/// it.
pub(super) struct Checker<'s> {
    salt: u64,
    segment_id: u64,
    ahead: Option<Ahead<'s>>,
}

struct Ahead<'s> {
    shared: &'s Shared,
    window: u64,
    /// The odd window the scan is in, and the end of the frames it may trust there (`None`
    /// if it may trust none).
    current: Option<(u64, Option<u64>)>,
}

impl<'s> Checker<'s> {
    /// A checker that verifies every checksum itself.
    pub(super) fn alone(salt: u64, segment_id: u64) -> Checker<'static> {
        Checker {
            salt,
            segment_id,
            ahead: None,
        }
    }

    /// A checker that relies on the helper running [`verify`] with the same `window` and
    /// `shared`.
    pub(super) fn with_helper(
        salt: u64,
        segment_id: u64,
        window: u64,
        shared: &'s Shared,
    ) -> Checker<'s> {
        Checker {
            salt,
            segment_id,
            ahead: Some(Ahead {
                shared,
                window: window.max(1),
                current: None,
            }),
        }
    }

    /// [`decode_frame`](crate::format::decode_frame) of the frame at `offset` (`rest` runs
    /// from it to the end of the segment). Offsets must come in increasing order.
    pub(super) fn decode<'v>(
        &mut self,
        rest: &'v [u8],
        offset: u64,
    ) -> Result<RecordView<'v>, FrameError> {
        let verified = self.ahead.as_mut().is_some_and(|a| a.verified(offset));
        let checksum = (!verified).then_some((self.salt, self.segment_id));
        decode_frame_with(rest, offset, checksum)
    }
}

impl Ahead<'_> {
    /// Whether the helper verified the checksum of the frame at `offset`, the scan's next
    /// frame.
    fn verified(&mut self, offset: u64) -> bool {
        let k = offset / self.window;
        if k % 2 == 0 {
            return false;
        }
        let trusted_end = match self.current {
            Some((w, end)) if w == k => end,
            _ => {
                // The scan's first frame in this window: trust the helper's run only if it
                // starts at this very frame.
                let end = self
                    .shared
                    .wait(k)
                    .and_then(|(first, end)| (first == offset).then_some(end));
                self.current = Some((k, end));
                end
            }
        };
        trusted_end.is_some_and(|end| offset < end)
    }
}
