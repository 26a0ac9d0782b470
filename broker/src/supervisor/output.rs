//! Logging a worker's stdout and stderr, line by line, under its name.
//!
//! A worker holds no file, not even a log: what it prints goes through pipes to the broker, which
//! logs each line with `worker = "<name>"`. The worker is untrusted, so a line is cut at
//! [`MAX_LINE`] bytes (the rest up to the next newline is dropped) and control characters are
//! replaced before the line reaches a terminal or the journal. At most
//! [`LOG_LINES_PER_SECOND`](super::flood::LOG_LINES_PER_SECOND) lines a second of each stream are
//! logged; the rest are counted and summarised in one line when the next second's first line
//! comes or the stream ends.

use std::os::fd::OwnedFd;

use tokio::io::AsyncReadExt;

use super::flood::{LogBudget, LOG_LINES_PER_SECOND};

/// The longest line logged; longer ones are cut here.
pub(crate) const MAX_LINE: usize = 4096;

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes, holding at most that much.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
    /// The current line was already emitted cut short; drop bytes until its newline.
    discarding: bool,
}

impl LineSplitter {
    /// Feeds `data`, calling `emit(line, truncated)` for every line it completes or cuts.
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8], bool)) {
        while !data.is_empty() {
            let (piece, rest, newline) = match data.iter().position(|b| *b == b'\n') {
                Some(at) => (&data[..at], &data[at + 1..], true),
                None => (data, &[][..], false),
            };
            data = rest;
            if self.discarding {
                self.discarding = !newline;
                continue;
            }
            let room = MAX_LINE - self.partial.len();
            if piece.len() > room {
                self.partial.extend_from_slice(&piece[..room]);
                emit(&self.partial, true);
                self.partial.clear();
                self.discarding = !newline;
            } else {
                self.partial.extend_from_slice(piece);
                if newline {
                    emit(&self.partial, false);
                    self.partial.clear();
                }
            }
        }
    }

    /// At end of stream: emits what is left of an unterminated line.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8], bool)) {
        if !self.partial.is_empty() {
            emit(&self.partial, false);
            self.partial.clear();
        }
        self.discarding = false;
    }
}

/// The line as text safe to log: invalid UTF-8 and control characters (but tabs) replaced.
pub(crate) fn sanitize(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line)
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// Which of the worker's streams a pipe carries.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Logs every line from `pipe` until the worker closes it.
pub(crate) async fn log_lines(pipe: OwnedFd, worker: &'static str, stream: Stream) {
    let mut pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) {
        Ok(pipe) => pipe,
        Err(e) => {
            tracing::warn!(worker, "cannot read the worker's {}: {e}", stream.name());
            return;
        }
    };
    let mut budget = LogBudget::default();
    let summary = |suppressed: u64| {
        tracing::warn!(
            worker,
            stream = stream.name(),
            "{suppressed} lines suppressed (at most {LOG_LINES_PER_SECOND} logged a second)"
        );
    };
    let mut emit = |line: &[u8], truncated: bool| {
        let verdict = budget.line(std::time::Instant::now());
        if let Some(suppressed) = verdict.suppressed_before {
            summary(suppressed);
        }
        if !verdict.log {
            return;
        }
        let text = sanitize(line);
        if truncated {
            tracing::info!(worker, stream = stream.name(), truncated, "{text}");
        } else {
            tracing::info!(worker, stream = stream.name(), "{text}");
        }
    };
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => splitter.push(buf.get(..n).unwrap_or_default(), &mut emit),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(worker, "reading the worker's {}: {e}", stream.name());
                break;
            }
        }
    }
    splitter.finish(&mut emit);
    if let Some(suppressed) = budget.take_summary(std::time::Instant::now(), true) {
        summary(suppressed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut lines = Vec::new();
        let mut splitter = LineSplitter::default();
        for chunk in chunks {
            splitter.push(chunk, |line, cut| lines.push((line.to_vec(), cut)));
        }
        splitter.finish(|line, cut| lines.push((line.to_vec(), cut)));
        lines
    }

    #[test]
    fn lines_are_reassembled_across_chunks() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\n\nlast"]),
            vec![
                (b"hello".to_vec(), false),
                (b"world".to_vec(), false),
                (b"".to_vec(), false),
                (b"last".to_vec(), false),
            ]
        );
    }

    #[test]
    fn an_endless_line_is_cut_and_the_splitter_stays_bounded() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        let chunk = vec![b'x'; 1000];
        for _ in 0..10_000 {
            splitter.push(&chunk, |line, cut| lines.push((line.len(), cut)));
            assert!(splitter.partial.len() <= MAX_LINE);
        }
        splitter.push(b"tail\nnext\n", |line, cut| lines.push((line.len(), cut)));
        assert_eq!(
            lines,
            vec![(MAX_LINE, true), (4, false)],
            "rest of the long line dropped"
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_not_cut() {
        let mut line = vec![b'y'; MAX_LINE];
        line.push(b'\n');
        assert_eq!(split(&[&line]), vec![(vec![b'y'; MAX_LINE], false)]);
    }

    #[test]
    fn control_characters_are_neutralised() {
        assert_eq!(sanitize(b"a\x1b[31mred\tok\r"), "a\u{fffd}[31mred\tok");
        assert_eq!(sanitize(b"\xff\xfe"), "\u{fffd}\u{fffd}");
    }
}
