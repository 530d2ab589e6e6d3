//! Record checksums verified ahead of the recovery scan, on a second thread.
//!
//! Checksumming every byte of the log is most of what recovery costs, and one core reads
//! memory only so fast. So, for a large segment, a helper thread walks the same chain of
//! frames as the scan, window by window (`window` bytes; a frame belongs to the window its
//! first byte is in), and verifies the checksums of every window the scan has not reached
//! yet; in windows the scan has reached it only follows the lengths. The scan, on entering
//! a window, takes the helper's verdict for it if there is one already, and otherwise
//! verifies that window itself: it never waits. The helper does nothing but checksums,
//! the scan also replays, so the helper runs ahead and the scan mostly skips checksums; on
//! a machine where the helper gets no core, the scan does what it did alone. Nothing else
//! changes: the scan still makes every other check on every frame, in log order, and stops
//! at the first invalid frame; a frame's checksum is skipped only if the helper verified
//! that very frame.
//!
//! Why a verified range is enough: both walks start at the segment's first frame, and the
//! offset of the next frame is a function of the bytes of the frame at hand, the same in
//! both. So while the scan keeps finding valid frames, its frames are the helper's. The
//! helper reports, per window, the first frame it found there and where its run of verified
//! frames ended; the scan trusts a window only if its own first frame there is that same
//! first frame (the chains meet), and then only the frames before the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::format::{decode_frame_with, FrameError, RecordView, SEGMENT_HEADER_LEN};

/// The scan and the helper divide the segment into windows of this many bytes.
pub(super) const WINDOW: u64 = 1 << 20;

/// Segments shorter than this are scanned by one thread: starting the helper costs more
/// than it saves.
pub(super) const MIN_SEGMENT: u64 = 4 * WINDOW;

/// What the helper found in one window: the offset of the first frame that starts in it,
/// and the end of the run of frames from there whose checksums verified.
type Verdict = (u64, u64);

/// What the scan and the helper share.
#[derive(Default)]
pub(super) struct Shared {
    /// By window number: the helper's verdicts.
    verdicts: Mutex<Vec<Option<Verdict>>>,
    /// The window the scan is in: the helper verifies only windows after it.
    scan_window: AtomicU64,
    /// Set by the scan when it is done: the helper stops.
    cancel: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<Option<Verdict>>> {
        self.verdicts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, window: u64, verdict: Verdict) {
        let Ok(index) = usize::try_from(window) else {
            return;
        };
        let mut verdicts = self.lock();
        if verdicts.len() <= index {
            verdicts.resize(index + 1, None);
        }
        if let Some(slot) = verdicts.get_mut(index) {
            *slot = Some(verdict);
        }
    }

    /// The verdict of `window`, if the helper has given one.
    fn verdict(&self, window: u64) -> Option<Verdict> {
        let index = usize::try_from(window).ok()?;
        self.lock().get(index).copied().flatten()
    }

    /// Tells the helper to stop.
    pub(super) fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// The helper thread's work: walks the frames of `view` from the first one, verifying the
/// checksums of those in windows the scan has not reached, until a frame is invalid, the
/// view ends, or the scan cancels.
pub(super) fn verify(view: &[u8], salt: u64, segment_id: u64, window: u64, shared: &Shared) {
    let window = window.max(1);
    let mut offset = SEGMENT_HEADER_LEN as u64;
    // The window being verified and its first frame.
    let mut current: Option<(u64, u64)> = None;
    // The window being walked, and whether its checksums are verified.
    let mut walking: Option<(u64, bool)> = None;
    while !shared.cancel.load(Ordering::Relaxed) {
        let k = offset / window;
        if let Some((w, first)) = current.filter(|&(w, _)| w != k) {
            shared.publish(w, (first, offset));
            current = None;
        }
        let mine = match walking {
            Some((w, mine)) if w == k => mine,
            _ => {
                let mine = k > shared.scan_window.load(Ordering::Relaxed);
                walking = Some((k, mine));
                if mine {
                    current = Some((k, offset));
                }
                mine
            }
        };
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
    /// The window the scan is in, and the end of the frames it may trust there (`None` if it
    /// may trust none).
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
        let trusted_end = match self.current {
            Some((w, end)) if w == k => end,
            _ => {
                // The scan's first frame in this window: from here on the helper leaves the
                // window alone. Trust its run only if it has one here already and it starts
                // at this very frame.
                self.shared.scan_window.store(k, Ordering::Relaxed);
                let end = self
                    .shared
                    .verdict(k)
                    .and_then(|(first, end)| (first == offset).then_some(end));
                self.current = Some((k, end));
                end
            }
        };
        trusted_end.is_some_and(|end| offset < end)
    }
}
