//! Reading and writing local files around the page cache (`O_DIRECT`), for
//! files read or written once: a backup reads every SSTable and writes a
//! filesystem store's objects, a restore hashes every object, gigabytes that
//! would otherwise push Cassandra's hot pages out of the cache, and the
//! kernel's work to fill and drop those pages costs more CPU than the hash
//! itself.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Alignment of the buffer, of the file offset and of each read's length
/// that `O_DIRECT` asks for: the largest logical block size in use.
const ALIGN: usize = 4096;

/// The most one read or write asks for: large reads keep the disk busy
/// without the kernel's readahead, and bound the memory of each file.
pub const MAX_BUFFER: usize = 4 * 1024 * 1024;

/// Opens `path` with `options` and `O_DIRECT`, or `None` where the
/// filesystem does not take that flag.
fn open_direct(options: &mut std::fs::OpenOptions, path: &Path) -> io::Result<Option<File>> {
    match options
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
    {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An aligned chunk of memory whose size is a multiple of the alignment,
/// the bytes a direct read or write moves; derefs to the chunk.
struct AlignedBuffer {
    /// `ALIGN` bytes more than the chunk, so that an aligned chunk fits.
    memory: Vec<u8>,
    start: usize,
    size: usize,
}

impl AlignedBuffer {
    /// `bytes` rounded up to the alignment, one block to [`MAX_BUFFER`].
    fn new(bytes: usize) -> Self {
        let size = bytes.div_ceil(ALIGN).clamp(1, MAX_BUFFER / ALIGN) * ALIGN;
        let memory = vec![0u8; size + ALIGN];
        let start = memory.as_ptr().align_offset(ALIGN);
        Self {
            memory,
            start,
            size,
        }
    }
}

impl Deref for AlignedBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.memory[self.start..self.start + self.size]
    }
}

impl DerefMut for AlignedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.memory[self.start..self.start + self.size]
    }
}

/// A file read with `O_DIRECT` in aligned chunks of up to [`MAX_BUFFER`].
pub struct DirectReader {
    file: File,
    /// The file's size when it was opened.
    len: u64,
    buffer: AlignedBuffer,
    pos: usize,
    filled: usize,
    eof: bool,
}

impl DirectReader {
    /// Opens `path` for direct reads of up to `capacity` bytes (rounded up
    /// to the alignment, at most [`MAX_BUFFER`], no more than the file
    /// needs), or `None` where the filesystem does not take `O_DIRECT`
    /// (then read it the usual way).
    pub fn open(path: &Path, capacity: usize) -> io::Result<Option<Self>> {
        let Some(file) = open_direct(std::fs::OpenOptions::new().read(true), path)? else {
            return Ok(None);
        };
        let len = file.metadata()?.len();
        let buffer = AlignedBuffer::new(usize::try_from(len).unwrap_or(usize::MAX).min(capacity));
        Ok(Some(Self {
            file,
            len,
            buffer,
            pos: 0,
            filled: 0,
            eof: false,
        }))
    }
}

impl BufRead for DirectReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.filled && !self.eof {
            let chunk = &mut *self.buffer;
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
        Ok(&self.buffer[self.pos..self.filled])
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

/// A new file written with `O_DIRECT` from an aligned buffer of up to
/// [`MAX_BUFFER`]: each full buffer goes to the disk as one write; the
/// tail is written padded to the alignment, then the file is cut to its
/// length.
pub struct DirectWriter {
    file: File,
    buffer: AlignedBuffer,
    filled: usize,
    /// Bytes of the full buffers written so far.
    written: u64,
}

impl DirectWriter {
    /// Creates (or truncates) `path` for direct writes, or `None` where the
    /// filesystem does not take `O_DIRECT`. `capacity` is rounded up to the
    /// alignment and held to [`MAX_BUFFER`].
    pub fn create(path: &Path, capacity: usize) -> io::Result<Option<Self>> {
        // A file `open` made before refusing the flag is truncated by the
        // buffered fallback.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        let Some(file) = open_direct(&mut options, path)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            file,
            buffer: AlignedBuffer::new(capacity),
            filled: 0,
            written: 0,
        }))
    }

    /// Writes what is left and gives the file back at its exact length (not
    /// synced).
    pub fn finish(mut self) -> io::Result<File> {
        let tail = self.filled;
        if tail > 0 {
            let padded = tail.div_ceil(ALIGN) * ALIGN;
            self.buffer[tail..padded].fill(0);
            self.file.write_all(&self.buffer[..padded])?;
            self.file.set_len(self.written + tail as u64)?;
        }
        Ok(self.file)
    }
}

impl Write for DirectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.buffer.len() - self.filled);
        self.buffer[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == self.buffer.len() {
            self.file.write_all(&self.buffer)?;
            self.written += self.buffer.len() as u64;
            self.filled = 0;
        }
        Ok(n)
    }

    /// Only whole aligned buffers can go before [`DirectWriter::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A new file written once: around the page cache where its filesystem
/// can ([`DirectWriter`]), else through a buffer.
pub enum OnceWriter {
    Direct(DirectWriter),
    Buffered(io::BufWriter<File>),
}

impl OnceWriter {
    /// Creates (or truncates) `path`, with a buffer of `capacity` bytes.
    pub fn create(path: &Path, capacity: usize) -> io::Result<Self> {
        Ok(match DirectWriter::create(path, capacity)? {
            Some(direct) => Self::Direct(direct),
            None => Self::Buffered(io::BufWriter::with_capacity(capacity, File::create(path)?)),
        })
    }

    /// Writes what is buffered and gives the file back (not synced).
    pub fn finish(self) -> io::Result<File> {
        match self {
            Self::Direct(direct) => direct.finish(),
            Self::Buffered(buffered) => buffered.into_inner().map_err(|e| e.into_error()),
        }
    }
}

impl Write for OnceWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Self::Direct(direct) => direct.write(data),
            Self::Buffered(buffered) => buffered.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Direct(direct) => direct.flush(),
            Self::Buffered(buffered) => buffered.flush(),
        }
    }
}

/// `path` to read once, around the page cache where its filesystem can,
/// `capacity` bytes at a time; with the size the file had when it was
/// opened.
pub fn open_once(path: &Path, capacity: usize) -> io::Result<(Box<dyn BufRead + Send>, u64)> {
    Ok(match DirectReader::open(path, capacity)? {
        Some(direct) => {
            let len = direct.len;
            (Box::new(direct), len)
        }
        None => {
            let file = File::open(path)?;
            let len = file.metadata()?.len();
            (Box::new(io::BufReader::with_capacity(capacity, file)), len)
        }
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

    /// File sizes around the alignment and the largest chunk.
    const SIZES: [usize; 8] = [
        0,
        1,
        ALIGN - 1,
        ALIGN,
        ALIGN + 1,
        MAX_BUFFER - 1,
        MAX_BUFFER,
        2 * MAX_BUFFER + 12345,
    ];

    /// Bytes that differ from one block to the next.
    fn pattern(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    /// Sizes around the alignment and the chunk read back whole, in chunks
    /// of one block and of the largest size, through both the buffered and
    /// the plain interface.
    #[test]
    fn reads_files_of_any_size_whole() {
        // On the repository's filesystem: a tmpfs before Linux 6.6 has no
        // O_DIRECT.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        for size in SIZES {
            let data = pattern(size);
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &data).unwrap();
            for capacity in [ALIGN, MAX_BUFFER] {
                let mut reader = DirectReader::open(&path, capacity)
                    .unwrap()
                    .expect("this filesystem takes O_DIRECT");
                let mut back = Vec::new();
                assert_eq!(copy_buffered(&mut reader, &mut back).unwrap(), size as u64);
                assert!(back == data, "size {size}, capacity {capacity}");
                let mut reader = DirectReader::open(&path, capacity).unwrap().unwrap();
                let mut back = Vec::new();
                reader.read_to_end(&mut back).unwrap();
                assert!(
                    back == data,
                    "size {size}, capacity {capacity}, read_to_end"
                );
            }
        }
    }

    /// Files of every size around the alignment and the buffer, written in
    /// pieces of odd sizes over a longer file of the same name, hold exactly
    /// what was written (no padding, nothing of the old file).
    #[test]
    fn writes_files_of_any_size_exactly() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("out");
        for size in SIZES {
            std::fs::write(&path, vec![0xAA; 3 * MAX_BUFFER]).unwrap();
            let data = pattern(size);
            let mut writer = DirectWriter::create(&path, MAX_BUFFER)
                .unwrap()
                .expect("this filesystem takes O_DIRECT");
            for piece in data.chunks(777_777) {
                writer.write_all(piece).unwrap();
            }
            let file = writer.finish().unwrap();
            assert_eq!(file.metadata().unwrap().len(), size as u64);
            drop(file);
            assert!(std::fs::read(&path).unwrap() == data, "size {size}");
        }
    }
}
