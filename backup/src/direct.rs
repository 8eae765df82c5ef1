//! Reading a local file around the page cache (`O_DIRECT`), for files read
//! once to be checked: a restore hashes every object of a filesystem store,
//! gigabytes that would otherwise push Cassandra's hot pages out of the
//! cache, and the kernel's work to fill and drop those pages costs more CPU
//! than the hash itself.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Alignment of the buffer, of the file offset and of each read's length
/// that `O_DIRECT` asks for: the largest logical block size in use.
const ALIGN: usize = 4096;

/// The most one read asks for: large reads keep the disk busy without the
/// kernel's readahead, and bound the memory of each file being read.
const MAX_BUFFER: usize = 4 * 1024 * 1024;

/// A file read with `O_DIRECT` in aligned chunks of up to [`MAX_BUFFER`].
pub struct DirectReader {
    file: File,
    /// `ALIGN` bytes more than the chunk, so that an aligned chunk fits.
    buffer: Vec<u8>,
    start: usize,
    size: usize,
    pos: usize,
    filled: usize,
    eof: bool,
}

impl DirectReader {
    /// Opens `path` for direct reads, or `None` where the filesystem does
    /// not take `O_DIRECT` (then read it the usual way).
    pub fn open(path: &Path) -> io::Result<Option<Self>> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
        let size = len.div_ceil(ALIGN).clamp(1, MAX_BUFFER / ALIGN) * ALIGN;
        let buffer = vec![0u8; size + ALIGN];
        let start = buffer.as_ptr().align_offset(ALIGN);
        Ok(Some(Self {
            file,
            buffer,
            start,
            size,
            pos: 0,
            filled: 0,
            eof: false,
        }))
    }
}

impl BufRead for DirectReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.filled && !self.eof {
            let chunk = &mut self.buffer[self.start..self.start + self.size];
            let mut filled = 0;
            // Reads go on at aligned offsets into the aligned rest of the
            // chunk; a read that ends off the alignment ends the file.
            while filled < chunk.len() {
                match self.file.read(&mut chunk[filled..]) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => {
                        filled += n;
                        if n % ALIGN != 0 {
                            self.eof = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.pos = 0;
            self.filled = filled;
        }
        Ok(&self.buffer[self.start + self.pos..self.start + self.filled])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.filled);
    }
}

impl Read for DirectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// `path` to read once, around the page cache where its filesystem can,
/// else through a buffer of `capacity` bytes.
pub fn open_once(path: &Path, capacity: usize) -> io::Result<Box<dyn BufRead + Send>> {
    Ok(match DirectReader::open(path)? {
        Some(direct) => Box::new(direct),
        None => Box::new(io::BufReader::with_capacity(capacity, File::open(path)?)),
    })
}

/// Copies everything `reader` holds into `out`, a buffer at a time (no
/// copy into a buffer of its own, as `io::copy` makes from any reader but
/// std's). Returns the bytes copied.
pub fn copy_buffered(reader: &mut dyn BufRead, out: &mut dyn io::Write) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let chunk = match reader.fill_buf() {
            Ok([]) => return Ok(total),
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(chunk)?;
        let n = chunk.len();
        total += n as u64;
        reader.consume(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes around the alignment and the chunk read back whole, through
    /// both the buffered and the plain interface.
    #[test]
    fn reads_files_of_any_size_whole() {
        // On the repository's filesystem: a tmpfs before Linux 6.6 has no
        // O_DIRECT.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        for size in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            MAX_BUFFER - 1,
            MAX_BUFFER,
            2 * MAX_BUFFER + 12345,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4099) as u8).collect();
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &data).unwrap();
            let mut reader = DirectReader::open(&path)
                .unwrap()
                .expect("this filesystem takes O_DIRECT");
            let mut back = Vec::new();
            assert_eq!(copy_buffered(&mut reader, &mut back).unwrap(), size as u64);
            assert!(back == data, "size {size}");
            let mut reader = DirectReader::open(&path).unwrap().unwrap();
            let mut back = Vec::new();
            reader.read_to_end(&mut back).unwrap();
            assert!(back == data, "size {size}, read_to_end");
        }
    }
}
