//! Format, encoding and delimiter detection, and a streaming Windows-1252 → UTF-8 reader.
//!
//! Encoding is decided by a pre-scan of the whole file in fixed-size blocks: if every byte is
//! valid UTF-8 the file is read as UTF-8 (BOM skipped), otherwise it is read through
//! [`DecodingReader`] as Windows-1252 (a superset of printable Latin-1). Memory stays bounded
//! either way.

use std::io::{self, Read};

use encoding_rs::{CoderResult, Decoder, WINDOWS_1252};

pub(crate) const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
const BLOCK: usize = 256 * 1024;

/// Whether the whole stream is valid UTF-8, checked block by block.
pub(crate) fn is_utf8<R: Read>(mut r: R) -> io::Result<bool> {
    let mut buf = vec![0u8; BLOCK + 4];
    let mut carry = 0usize;
    loop {
        let n = r.read(&mut buf[carry..carry + BLOCK])?;
        let len = carry + n;
        if n == 0 {
            // A truncated sequence at the very end is invalid.
            return Ok(carry == 0);
        }
        match std::str::from_utf8(&buf[..len]) {
            Ok(_) => carry = 0,
            Err(e) => {
                if e.error_len().is_some() {
                    return Ok(false);
                }
                // Incomplete sequence at the end of the block: keep it for the next round.
                let valid = e.valid_up_to();
                let rest = len - valid;
                buf.copy_within(valid..len, 0);
                carry = rest;
            }
        }
    }
}

/// Reads Windows-1252 bytes from `inner` and yields UTF-8.
pub(crate) struct DecodingReader<R> {
    inner: R,
    decoder: Decoder,
    input: Vec<u8>,
    in_start: usize,
    in_end: usize,
    eof: bool,
    output: Vec<u8>,
    out_start: usize,
    out_end: usize,
    finished: bool,
}

impl<R: Read> DecodingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        DecodingReader {
            inner,
            decoder: WINDOWS_1252.new_decoder_without_bom_handling(),
            input: vec![0u8; 64 * 1024],
            in_start: 0,
            in_end: 0,
            eof: false,
            // Each Windows-1252 byte becomes at most 3 UTF-8 bytes.
            output: vec![0u8; 3 * 64 * 1024 + 16],
            out_start: 0,
            out_end: 0,
            finished: false,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        while self.out_start == self.out_end && !self.finished {
            if self.in_start == self.in_end && !self.eof {
                let n = self.inner.read(&mut self.input)?;
                self.in_start = 0;
                self.in_end = n;
                if n == 0 {
                    self.eof = true;
                }
            }
            let (result, read, written, _) = self.decoder.decode_to_utf8(
                &self.input[self.in_start..self.in_end],
                &mut self.output,
                self.eof,
            );
            self.in_start += read;
            self.out_start = 0;
            self.out_end = written;
            if self.eof && matches!(result, CoderResult::InputEmpty) {
                self.finished = true;
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for DecodingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill()?;
        let n = (self.out_end - self.out_start).min(buf.len());
        buf[..n].copy_from_slice(&self.output[self.out_start..self.out_start + n]);
        self.out_start += n;
        Ok(n)
    }
}

/// Delimiters we detect, in tie-break order.
pub(crate) const DELIMITERS: [u8; 4] = [b',', b'\t', b';', b'|'];

/// Guess the delimiter from the first lines of `sample` (raw bytes; every candidate and the
/// quote are ASCII, so this works for UTF-8 and Windows-1252 alike). Separators inside double
/// quotes are not counted. The winner appears on the header line and the same number of times on
/// the most following lines; a file with none of them is read as comma-separated (one column).
pub(crate) fn sniff_delimiter(sample: &[u8]) -> u8 {
    const MAX_LINES: usize = 50;
    // counts[line][delimiter]
    let mut counts: Vec<[usize; 4]> = Vec::new();
    let mut cur = [0usize; 4];
    let mut in_quotes = false;
    let mut line_has_content = false;
    let mut complete_lines = 0usize;
    for &b in sample {
        match b {
            b'"' => {
                in_quotes = !in_quotes;
                line_has_content = true;
            }
            b'\n' if !in_quotes => {
                if line_has_content {
                    counts.push(cur);
                    complete_lines += 1;
                }
                cur = [0; 4];
                line_has_content = false;
                if complete_lines >= MAX_LINES {
                    break;
                }
            }
            b'\r' => {}
            _ => {
                if !in_quotes && let Some(i) = DELIMITERS.iter().position(|d| *d == b) {
                    cur[i] += 1;
                }
                line_has_content = true;
            }
        }
    }
    // A last line without a newline counts only if the sample is the whole file (short files);
    // a cut-off line would skew the counts, so it is used only when it is the only line.
    if line_has_content && counts.is_empty() {
        counts.push(cur);
    }
    let Some(header) = counts.first() else {
        return b',';
    };
    let mut best = (b',', 0usize, 0usize);
    for (i, &d) in DELIMITERS.iter().enumerate() {
        let n = header[i];
        if n == 0 {
            continue;
        }
        let agree = counts.iter().filter(|c| c[i] == n).count();
        if agree > best.1 || (agree == best.1 && n > best.2) {
            best = (d, agree, n);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_check_across_block_boundaries() {
        // "ñ" is two bytes; place one across the block boundary.
        let mut v = vec![b'a'; BLOCK - 1];
        v.extend_from_slice("ñ".as_bytes());
        v.extend_from_slice(b"end");
        assert!(is_utf8(&v[..]).unwrap());
        let mut bad = v.clone();
        bad.push(0xF1);
        assert!(!is_utf8(&bad[..]).unwrap());
        let mut bad = vec![b'a'; 10];
        bad.extend_from_slice(b"Mu\xf1oz");
        assert!(!is_utf8(&bad[..]).unwrap());
        assert!(is_utf8(&b""[..]).unwrap());
    }

    #[test]
    fn decoding_reader_decodes_1252() {
        let mut src = b"Mu\xf1oz,Ren\xe9e,\x80\n".repeat(20_000);
        src.extend_from_slice(b"last\xe9");
        let mut out = String::new();
        DecodingReader::new(&src[..])
            .read_to_string(&mut out)
            .unwrap();
        assert!(out.starts_with("Muñoz,Renée,€\n"));
        assert!(out.ends_with("lasté"));
        assert_eq!(out.lines().count(), 20_001);
    }

    #[test]
    fn delimiters() {
        assert_eq!(sniff_delimiter(b"a,b,c\n1,2,3\n"), b',');
        assert_eq!(sniff_delimiter(b"a\tb\tc\n1\t2,5\t3\n"), b'\t');
        assert_eq!(sniff_delimiter(b"a;b;c\n\"x;y\";2;3\n1,5;2;3\n"), b';');
        assert_eq!(sniff_delimiter(b"a|b|c\r\n1|2|3\r\n"), b'|');
        // Commas only inside quotes do not count.
        assert_eq!(
            sniff_delimiter(b"name|note\n\"Doe, Jane\"|\"a,b,c\"\nx|y\n"),
            b'|'
        );
        assert_eq!(sniff_delimiter(b"single\nx\n"), b',');
        assert_eq!(sniff_delimiter(b""), b',');
        assert_eq!(sniff_delimiter(b"a;b;c"), b';');
    }
}
