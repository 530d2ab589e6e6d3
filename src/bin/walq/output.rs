//! Output helpers: payload previews, progress bars, and the standard output writer.

use std::fmt::Write as _;
use std::io::{self, BufWriter, IsTerminal, StdoutLock, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};

use crate::PayloadFormat;

/// Buffered standard output. Write errors (a closed pipe included) are returned, never
/// panicked on.
pub fn stdout() -> BufWriter<StdoutLock<'static>> {
    BufWriter::with_capacity(64 << 10, io::stdout().lock())
}

/// A progress bar over `total` bytes on stderr, drawn only when stderr is a terminal.
pub fn progress(total: u64, message: &'static str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A spinner with `message` for an operation of unknown length, shown only when stderr is a
/// terminal.
pub fn spinner(message: &'static str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// How payloads are shown: format and preview length.
#[derive(Debug, Clone, Copy)]
pub struct PayloadStyle {
    /// The format.
    pub format: PayloadFormat,
    /// At most this many bytes (0: all).
    pub max: usize,
}

impl PayloadStyle {
    /// A style.
    pub fn new(format: PayloadFormat, max: usize) -> PayloadStyle {
        PayloadStyle { format, max }
    }

    /// The previewed bytes of `payload`, and whether it was cut.
    fn preview<'a>(&self, payload: &'a [u8]) -> (&'a [u8], bool) {
        if self.max == 0 || payload.len() <= self.max {
            (payload, false)
        } else {
            (payload.get(..self.max).unwrap_or(payload), true)
        }
    }

    /// The payload as text for a human (`None` for [`PayloadFormat::None`]): escaped in
    /// double quotes, or hex; `...` marks a cut.
    pub fn human(&self, payload: &[u8]) -> Option<String> {
        let (shown, cut) = self.preview(payload);
        let more = if cut { "..." } else { "" };
        match self.format {
            PayloadFormat::Escaped => Some(format!("\"{}\"{more}", escape(shown))),
            PayloadFormat::Hex => Some(format!("{}{more}", hex(shown))),
            PayloadFormat::None => None,
        }
    }

    /// Adds the payload fields to a JSON object: `payload` (escaped text) or `payload_hex`,
    /// `payload_len` and `payload_truncated`.
    pub fn json(&self, object: &mut serde_json::Map<String, serde_json::Value>, payload: &[u8]) {
        let (shown, cut) = self.preview(payload);
        object.insert("payload_len".into(), payload.len().into());
        match self.format {
            PayloadFormat::Escaped => {
                object.insert("payload".into(), escape(shown).into());
            }
            PayloadFormat::Hex => {
                object.insert("payload_hex".into(), hex(shown).into());
            }
            PayloadFormat::None => return,
        }
        object.insert("payload_truncated".into(), cut.into());
    }
}

/// Printable ASCII as is (backslash and double quote escaped), `\n`, `\r`, `\t`, and `\xNN`
/// for every other byte.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// Lower-case hex, no separators.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A byte count for humans: `123 B`, `4.0 KiB`, `64.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS.get(unit).copied().unwrap_or("TiB"))
}

/// Writes a line of JSON.
pub fn json_line(out: &mut impl Write, value: &serde_json::Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_previews() {
        assert_eq!(escape(b"a\"b\\\n\x00\xff"), "a\\\"b\\\\\\n\\x00\\xff");
        assert_eq!(hex(b"\x01\xab"), "01ab");
        let style = PayloadStyle::new(PayloadFormat::Escaped, 3);
        assert_eq!(style.human(b"hello").as_deref(), Some("\"hel\"..."));
        assert_eq!(style.human(b"hi").as_deref(), Some("\"hi\""));
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
    }
}
