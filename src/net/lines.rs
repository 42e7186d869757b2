//! Incremental ndjson line splitting with bounded memory.
//!
//! A download arrives as chunks of arbitrary size; lines straddle chunk boundaries. The splitter
//! hands every complete line to a callback as soon as its `\n` arrives, borrowing straight from
//! the chunk when the line lies inside it and copying only the pieces of lines that straddle a
//! boundary into one reusable buffer. The buffer never grows past the longest accepted line, and
//! a longer line is an error rather than an unbounded allocation. Line numbers are 1-based and
//! count every line of the file (blank ones too), so they match what an editor shows.

use crate::net::NetError;

/// Splits a byte stream into lines; see the module docs.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max_line: usize,
    line_no: u64,
    url: String,
}

impl LineSplitter {
    /// A splitter rejecting lines longer than `max_line` bytes; `url` (already redacted) names
    /// the file in errors.
    pub fn new(max_line: usize, url: impl Into<String>) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max_line,
            line_no: 0,
            url: url.into(),
        }
    }

    /// Feed the next chunk; `f(line_number, line)` is called for each line it completes, without
    /// the `\n` and without a trailing `\r`.
    pub fn feed<F>(&mut self, mut chunk: &[u8], f: &mut F) -> Result<(), NetError>
    where
        F: FnMut(u64, &[u8]) -> Result<(), NetError> + ?Sized,
    {
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n') {
            let head = &chunk[..pos];
            chunk = &chunk[pos + 1..];
            self.line_no += 1;
            if self.buf.is_empty() {
                self.check_len(head.len())?;
                f(self.line_no, strip_cr(head))?;
            } else {
                self.check_len(self.buf.len() + head.len())?;
                self.buf.extend_from_slice(head);
                f(self.line_no, strip_cr(&self.buf))?;
                self.buf.clear();
            }
        }
        if !chunk.is_empty() {
            let pending = self.buf.len() + chunk.len();
            if pending > self.max_line {
                return Err(self.too_long(self.line_no + 1));
            }
            self.buf.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// End of input: deliver a final line that had no `\n`.
    pub fn finish<F>(&mut self, f: &mut F) -> Result<(), NetError>
    where
        F: FnMut(u64, &[u8]) -> Result<(), NetError> + ?Sized,
    {
        if !self.buf.is_empty() {
            self.line_no += 1;
            f(self.line_no, strip_cr(&self.buf))?;
            self.buf.clear();
        }
        Ok(())
    }

    /// The bytes after the last `\n` (a final line not terminated yet).
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Lines completed so far.
    pub fn lines_seen(&self) -> u64 {
        self.line_no
    }

    /// Capacity of the carry-over buffer (for memory checks).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn check_len(&self, len: usize) -> Result<(), NetError> {
        if len > self.max_line {
            Err(self.too_long(self.line_no))
        } else {
            Ok(())
        }
    }

    fn too_long(&self, line: u64) -> NetError {
        NetError::LineTooLong {
            url: self.url.clone(),
            line,
            limit: self.max_line,
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_in_chunks(
        data: &[u8],
        chunk: usize,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, NetError> {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(max, "test");
        let mut f = |n: u64, l: &[u8]| {
            out.push((n, l.to_vec()));
            Ok(())
        };
        for c in data.chunks(chunk) {
            s.feed(c, &mut f)?;
        }
        s.finish(&mut f)?;
        Ok(out)
    }

    #[test]
    fn same_lines_for_every_chunk_size() {
        let data = b"{\"a\":1}\r\n\n{\"b\":22}\nlast-no-newline";
        let expected: Vec<(u64, Vec<u8>)> = vec![
            (1, b"{\"a\":1}".to_vec()),
            (2, b"".to_vec()),
            (3, b"{\"b\":22}".to_vec()),
            (4, b"last-no-newline".to_vec()),
        ];
        for size in 1..=data.len() {
            assert_eq!(
                split_in_chunks(data, size, 1024).unwrap(),
                expected,
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn trailing_newline_gives_no_extra_line() {
        let out = split_in_chunks(b"a\nb\n", 3, 10).unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn rejects_a_line_longer_than_the_limit_wherever_it_is_cut() {
        let data = b"short\n0123456789ABC\nx\n";
        for size in 1..=data.len() {
            let e = split_in_chunks(data, size, 10).unwrap_err();
            match e {
                NetError::LineTooLong { line, limit, .. } => {
                    assert_eq!((line, limit), (2, 10), "chunk size {size}")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Exactly at the limit is fine.
        assert!(split_in_chunks(b"0123456789\n", 4, 10).is_ok());
    }

    #[test]
    fn memory_stays_bounded_by_the_longest_line() {
        let line = b"{\"resourceType\":\"Bundle\",\"entry\":[]}\n";
        let mut s = LineSplitter::new(1 << 20, "test");
        let mut count = 0u64;
        let mut f = |_: u64, l: &[u8]| {
            assert_eq!(l.len(), line.len() - 1);
            count += 1;
            Ok(())
        };
        let body: Vec<u8> = line.repeat(20_000); // ~740 KB
        for c in body.chunks(7) {
            s.feed(c, &mut f).unwrap();
        }
        s.finish(&mut f).unwrap();
        assert_eq!(count, 20_000);
        assert!(
            s.buffer_capacity() <= 2 * line.len(),
            "{}",
            s.buffer_capacity()
        );
    }

    #[test]
    fn callback_errors_stop_the_split() {
        let mut s = LineSplitter::new(100, "test");
        let mut f = |n: u64, _: &[u8]| {
            if n == 2 {
                Err(NetError::Ingest {
                    line: n,
                    message: "bad".into(),
                })
            } else {
                Ok(())
            }
        };
        let e = s.feed(b"a\nb\nc\n", &mut f).unwrap_err();
        assert!(matches!(e, NetError::Ingest { line: 2, .. }));
    }
}
