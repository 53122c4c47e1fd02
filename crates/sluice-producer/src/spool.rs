//! The durable spool: a bounded, append-only log of SQS messages on local disk, written while
//! the queue is unreachable or throttling and replayed in order once it takes messages again.
//!
//! Layout of the spool directory:
//!
//! - `spool-<16 hex digits>.seg`: segments, numbered in write order. Each starts with the 8-byte
//!   header `SLSPOOL` + format version (1), then records: `len: u32 LE`, `crc32: u32 LE` (of the
//!   payload), `payload: len bytes`.
//! - `cursor`: `<segment number> <offset>` of the first record not yet delivered, replaced
//!   atomically (write, fsync, rename).
//!
//! A record's payload is `flags: u8` (bit 0 group id, bit 1 dedup id, bit 2 delay), then for each
//! flag set, in that order, `u16 LE length + bytes` (ids) or `u32 LE` (delay seconds), then the
//! message body to the end. On open, a torn record at the tail of the newest segment (a crash
//! mid-write) is cut off; a record that fails its checksum anywhere else ends that segment's
//! replay with an error log and a count in `sluice_producer_spool_corrupt_total`.
//!
//! A power cut can leave more than a torn record: a file extended with zeros the data never
//! reached, a cursor that points past what survived. So: a record always has a payload (its
//! flags byte) and known flags, so a zero-filled region is never read as records but cut off like
//! a torn tail; the directory is fsynced after a segment is created and after the cursor is
//! renamed, so neither vanishes; and a cursor past the end of what survived is moved back to it,
//! so new records are never written behind it.

use sluice_common::catalog;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::OutMessage;
use crate::events::SpoolDamage;

/// What a record failing its checksum means to the reader.
const CHECKSUM_FAILED: &str =
    "spool record fails its checksum; the rest of this segment is skipped";

const MAGIC: &[u8; 8] = b"SLSPOOL\x01";
const RECORD_HEADER: u64 = 8;
/// A record larger than this is not a record: the length field is garbage.
const MAX_RECORD: u32 = 16 * 1024 * 1024;

/// When appended records are forced to disk. A kill -9 loses nothing in any mode (the bytes are
/// in the kernel's page cache once `append` returns); the policy decides what a power loss or a
/// kernel crash can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync after every append: nothing acknowledged is lost even on power loss.
    Always,
    /// fsync at most once per interval: a power loss loses at most that much.
    Interval(Duration),
    /// Leave it to the kernel.
    Never,
}

/// Where the spool lives and how big and how durable it is. [`SpoolConfig::new`] gives the
/// defaults.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool's directory, created if missing. One producer per directory: a second one fails
    /// with [`SpoolError::Locked`].
    pub dir: PathBuf,
    /// Bytes of undelivered records the spool may hold; appends beyond it fail with
    /// [`SpoolError::Full`].
    pub max_bytes: u64,
    /// A new segment starts once the current one reaches this size.
    pub segment_bytes: u64,
    /// When appends are forced to disk (default [`FsyncPolicy::Always`]).
    pub fsync: FsyncPolicy,
}

impl SpoolConfig {
    /// A spool in `dir` holding at most 1 GiB, in segments of 64 MiB, fsynced after every append.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            fsync: FsyncPolicy::Always,
        }
    }
}

/// Why a spool operation failed. Nothing is lost by a failed append: it adds all or none.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The append would pass `max_bytes`; nothing of it was written.
    #[error(
        "the spool is full ({pending} of {max} bytes hold undelivered messages); raise producer.spool_max_bytes or fix the queue"
    )]
    Full {
        /// Bytes already waiting in the spool.
        pending: u64,
        /// The spool's `max_bytes`.
        max: u64,
    },
    /// Reading or writing a spool file failed (disk full, permissions, ...).
    #[error("spool I/O error in {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another process holds the directory's LOCK file.
    #[error(
        "the spool {} is in use by another process (its LOCK file is held); give each producer its own producer.spool_dir",
        dir.display()
    )]
    Locked {
        /// The spool directory.
        dir: PathBuf,
    },
}

/// Makes a directory entry (a new file, a rename) durable: without it a power cut can take the
/// entry even though the file's data was fsynced.
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A position in the spool: segment number and byte offset inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The segment's number (its file name's 16 hex digits).
    pub segment: u64,
    /// Byte offset in the segment file, its 8-byte header included.
    pub offset: u64,
}

/// What [`Spool::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Undelivered messages found, to be replayed.
    pub records: u64,
    /// Their size on disk in bytes, record headers included.
    pub bytes: u64,
    /// Bytes cut from the tail of the newest segment (a record torn by a crash).
    pub torn_bytes: u64,
    /// Segments whose replay ended early at a record that failed its checksum.
    pub corrupt_segments: u64,
}

/// The open spool: appends at the tail, reads and commits at the cursor, in order. Not shared: one
/// owner (the producer's task), and a lock file keeps other processes out of the directory.
pub struct Spool {
    config: SpoolConfig,
    /// First undelivered record.
    cursor: Position,
    /// Where the next record goes.
    write: Position,
    writer: File,
    /// Undelivered records and their bytes (headers included).
    records: u64,
    bytes: u64,
    last_sync: Instant,
    dirty: bool,
    /// Segment whose replay stopped at a bad record: the reader moves on to the next one.
    segment_ends: Vec<(u64, u64)>,
    /// Held (flock) for as long as the spool is open.
    _lock: File,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("spool-{n:016x}.seg"))
}

/// One process per spool: two writers would interleave records and fight over the cursor. The
/// lock is the kernel's (flock), so it goes with the process, kill -9 included.
fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let lock_path = dir.join("LOCK");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(SpoolError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io_err(&lock_path)(e)),
    }
}

/// Where replay resumes: the cursor file, or the start when there is none (or it is unreadable:
/// duplicates are safe, losses are not).
fn read_cursor(dir: &Path) -> Result<Position, SpoolError> {
    let start = Position {
        segment: 0,
        offset: MAGIC.len() as u64,
    };
    let cursor_path = dir.join("cursor");
    match fs::read_to_string(&cursor_path) {
        Ok(text) => {
            let mut parts = text.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(segment)), Some(Ok(offset))) => Ok(Position { segment, offset }),
                _ => {
                    tracing::error!(path = %cursor_path.display(), "spool cursor file is unreadable; replaying every segment (duplicates are safe, losses are not)");
                    Ok(start)
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(start),
        Err(e) => Err(io_err(&cursor_path)(e)),
    }
}

/// Removes segments wholly before the cursor (delivered: leftovers of an interrupted cleanup).
/// Returns the segments left and the cursor, moved to the first of them if its own is gone.
fn drop_delivered(dir: &Path, cursor: Position) -> Result<(Vec<u64>, Position), SpoolError> {
    let mut segments = list_segments(dir)?;
    for &s in segments.iter().filter(|&&s| s < cursor.segment) {
        let p = segment_path(dir, s);
        fs::remove_file(&p).map_err(io_err(&p))?;
    }
    segments.retain(|&s| s >= cursor.segment);
    let cursor = match segments.first() {
        Some(&first) if first > cursor.segment => Position {
            segment: first,
            offset: MAGIC.len() as u64,
        },
        _ => cursor,
    };
    Ok((segments, cursor))
}

/// Counts the records of segment `s` from `from` into `recovery`. A torn tail of the newest
/// segment (`newest`: a crash mid-write, never acknowledged) is cut, as is a newest segment
/// whose header never reached the disk. Returns where damage the reader must skip begins
/// (a bad header: 0; a bad checksum in an older segment: its offset), if any.
fn scan_segment(
    dir: &Path,
    s: u64,
    newest: bool,
    from: u64,
    recovery: &mut Recovery,
) -> Result<Option<u64>, SpoolError> {
    let p = segment_path(dir, s);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .map_err(io_err(&p))?;
    let file_len = f.metadata().map_err(io_err(&p))?.len();
    let mut magic = [0u8; 8];
    let header_ok = f.read_exact(&mut magic).is_ok() && &magic == MAGIC;
    if !header_ok {
        let zeros = magic.iter().all(|&b| b == 0);
        if newest && (file_len <= MAGIC.len() as u64 || zeros) {
            // Created but its header never reached the disk (torn, or left zero-filled by a
            // power cut): nothing in it was ever fsynced. Start it again.
            f.set_len(0).map_err(io_err(&p))?;
            f.seek(SeekFrom::Start(0)).map_err(io_err(&p))?;
            f.write_all(MAGIC).map_err(io_err(&p))?;
            f.sync_data().map_err(io_err(&p))?;
            return Ok(None);
        }
        SpoolDamage {
            path: &p,
            offset: None,
            what: "spool segment has no valid header (not a sluice spool, or a newer format); skipped",
        }
        .emit();
        recovery.corrupt_segments += 1;
        return Ok(Some(0));
    }
    f.seek(SeekFrom::Start(from)).map_err(io_err(&p))?;
    let mut r = BufReader::new(&mut f);
    let mut pos = from;
    loop {
        match read_record(&mut r).map_err(io_err(&p))? {
            Ok(Some(payload)) => {
                pos += RECORD_HEADER + payload.len() as u64;
                recovery.records += 1;
                recovery.bytes += RECORD_HEADER + payload.len() as u64;
            }
            Ok(None) => return Ok(None),
            Err(()) if newest => {
                drop(r);
                recovery.torn_bytes = file_len - pos;
                tracing::warn!(path = %p.display(), offset = pos, bytes = file_len - pos, "spool: cutting a torn record at the tail (a crash mid-write; the caller was never told it was accepted)");
                f.set_len(pos).map_err(io_err(&p))?;
                return Ok(None);
            }
            Err(()) => {
                SpoolDamage {
                    path: &p,
                    offset: Some(pos),
                    what: CHECKSUM_FAILED,
                }
                .emit();
                recovery.corrupt_segments += 1;
                return Ok(Some(pos));
            }
        }
    }
}

/// Opens segment `segment` for appending (writing and syncing its header if it is new) and
/// says where the next record goes.
fn open_writer(dir: &Path, segment: u64) -> Result<(File, Position), SpoolError> {
    let wp = segment_path(dir, segment);
    let mut writer = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&wp)
        .map_err(io_err(&wp))?;
    let mut offset = writer.metadata().map_err(io_err(&wp))?.len();
    if offset == 0 {
        writer.write_all(MAGIC).map_err(io_err(&wp))?;
        writer.sync_data().map_err(io_err(&wp))?;
        sync_dir(dir)?;
        offset = MAGIC.len() as u64;
    }
    Ok((writer, Position { segment, offset }))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(hex) = name
            .strip_prefix("spool-")
            .and_then(|s| s.strip_suffix(".seg"))
            && let Ok(n) = u64::from_str_radix(hex, 16)
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads one record at the reader's position. `Ok(None)` at a clean end of file; `Err(len)` when
/// what follows is not a whole, valid record (torn or corrupt) of which `len` bytes exist.
fn read_record(r: &mut impl Read) -> io::Result<Result<Option<Vec<u8>>, ()>> {
    let mut header = [0u8; 8];
    let mut got = 0;
    while got < header.len() {
        let n = r.read(&mut header[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got == 0 {
        return Ok(Ok(None));
    }
    if got < header.len() {
        return Ok(Err(()));
    }
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default());
    // Every payload holds at least its flags byte: a zero length is not a record but bytes
    // that never arrived (a region a power cut left zero-filled has length and checksum 0).
    if len == 0 || len > MAX_RECORD {
        return Ok(Err(()));
    }
    let mut payload = vec![0u8; len as usize];
    match r.read_exact(&mut payload) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Err(())),
        Err(e) => return Err(e),
    }
    if crc32fast::hash(&payload) != crc || payload[0] & !0b111 != 0 {
        return Ok(Err(()));
    }
    Ok(Ok(Some(payload)))
}

pub(crate) fn encode(m: &OutMessage, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    let mut flags = 0u8;
    if m.group_id.is_some() {
        flags |= 1;
    }
    if m.dedup_id.is_some() {
        flags |= 2;
    }
    if m.delay_seconds.is_some() {
        flags |= 4;
    }
    out.push(flags);
    for id in [&m.group_id, &m.dedup_id].into_iter().flatten() {
        // SQS ids are at most 128 characters, well inside u16.
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id.as_bytes());
    }
    if let Some(d) = m.delay_seconds {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(m.body.as_bytes());
    let payload = &out[start + 8..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn decode(payload: &[u8]) -> Option<OutMessage> {
    let (&flags, mut rest) = payload.split_first()?;
    let mut take_id = |present: bool| -> Option<Option<String>> {
        if !present {
            return Some(None);
        }
        let len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let id = std::str::from_utf8(rest.get(2..2 + len)?).ok()?.to_owned();
        rest = &rest[2 + len..];
        Some(Some(id))
    };
    let group_id = take_id(flags & 1 != 0)?;
    let dedup_id = take_id(flags & 2 != 0)?;
    let delay_seconds = if flags & 4 != 0 {
        let d = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        Some(d)
    } else {
        None
    };
    Some(OutMessage {
        body: String::from_utf8(rest.to_vec()).ok()?,
        group_id,
        dedup_id,
        delay_seconds,
    })
}

impl Spool {
    /// Opens (or creates) the spool in `config.dir`, checks every undelivered record, and cuts a
    /// torn tail.
    pub fn open(config: SpoolConfig) -> Result<(Spool, Recovery), SpoolError> {
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock = lock_dir(&dir)?;
        let (segments, mut cursor) = drop_delivered(&dir, read_cursor(&dir)?)?;
        let mut recovery = Recovery::default();
        let mut segment_ends = Vec::new();
        let last = segments.last().copied();
        for &s in &segments {
            let from = if s == cursor.segment {
                cursor.offset
            } else {
                MAGIC.len() as u64
            };
            if let Some(end) = scan_segment(&dir, s, Some(s) == last, from, &mut recovery)? {
                segment_ends.push((s, end));
            }
        }
        // New records never go behind damage the reader will skip: a damaged newest segment is
        // left as it is and writing goes on in a fresh one.
        let mut write_segment = last.unwrap_or(cursor.segment);
        if segment_ends.iter().any(|&(s, _)| s == write_segment) {
            write_segment += 1;
        }
        let (writer, write) = open_writer(&dir, write_segment)?;
        // A cursor past the end of what survived (a power cut took the tail it pointed into, or
        // the segment itself): everything before it was delivered, so it moves back to the end;
        // otherwise new records would be written behind it and never replayed.
        if cursor > write {
            tracing::warn!(cursor = ?cursor, end = ?write, "spool cursor points past the end of the spool (a power cut took the tail); moving it to the end");
            cursor = write;
        }
        let spool = Spool {
            config,
            cursor,
            write,
            writer,
            records: recovery.records,
            bytes: recovery.bytes,
            last_sync: Instant::now(),
            dirty: false,
            segment_ends,
            _lock: lock,
        };
        spool.publish();
        Ok((spool, recovery))
    }

    fn publish(&self) {
        metrics::gauge!(catalog::PRODUCER_SPOOL_BYTES).set(self.bytes as f64);
        metrics::gauge!(catalog::PRODUCER_SPOOL_MESSAGES).set(self.records as f64);
    }

    /// Undelivered messages.
    pub fn len(&self) -> u64 {
        self.records
    }

    /// True when every message appended has been committed as delivered.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes of undelivered messages on disk.
    pub fn pending_bytes(&self) -> u64 {
        self.bytes
    }

    /// The most bytes the spool may hold undelivered (`SpoolConfig::max_bytes`).
    pub fn max_bytes(&self) -> u64 {
        self.config.max_bytes
    }

    /// Appends messages, all or none, and applies the fsync policy. Once this returns `Ok` the
    /// messages survive the process being killed.
    pub fn append(&mut self, messages: &[OutMessage]) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        for m in messages {
            encode(m, &mut buf);
        }
        let size = buf.len() as u64;
        if self.bytes + size > self.config.max_bytes {
            return Err(SpoolError::Full {
                pending: self.bytes,
                max: self.config.max_bytes,
            });
        }
        if self.write.offset > MAGIC.len() as u64
            && self.write.offset + size > self.config.segment_bytes
        {
            self.roll()?;
        }
        let path = segment_path(&self.config.dir, self.write.segment);
        if let Err(e) = self.writer.write_all(&buf) {
            // Leave no half record behind: cut back to the last whole one.
            let _ = self.writer.set_len(self.write.offset);
            return Err(io_err(&path)(e));
        }
        self.write.offset += size;
        self.records += messages.len() as u64;
        self.bytes += size;
        self.dirty = true;
        match self.config.fsync {
            FsyncPolicy::Always => self.sync()?,
            FsyncPolicy::Interval(every) if self.last_sync.elapsed() >= every => self.sync()?,
            _ => {}
        }
        self.publish();
        Ok(())
    }

    /// Forces appended records to disk if the policy is `Interval` and the interval has passed.
    pub fn tick(&mut self) -> Result<(), SpoolError> {
        if let FsyncPolicy::Interval(every) = self.config.fsync
            && self.dirty
            && self.last_sync.elapsed() >= every
        {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SpoolError> {
        let path = segment_path(&self.config.dir, self.write.segment);
        self.writer.sync_data().map_err(io_err(&path))?;
        self.last_sync = Instant::now();
        self.dirty = false;
        Ok(())
    }

    fn roll(&mut self) -> Result<(), SpoolError> {
        if self.config.fsync != FsyncPolicy::Never {
            self.sync()?;
        }
        let next = self.write.segment + 1;
        let path = segment_path(&self.config.dir, next);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.write_all(MAGIC).map_err(io_err(&path))?;
        if self.config.fsync != FsyncPolicy::Never {
            f.sync_data().map_err(io_err(&path))?;
            sync_dir(&self.config.dir)?;
        }
        self.writer = f;
        self.write = Position {
            segment: next,
            offset: MAGIC.len() as u64,
        };
        Ok(())
    }

    /// Reads up to `max` undelivered messages (and at most `max_bytes` of bodies, but always at
    /// least one) from the cursor, without consuming them. Returns them with the position just
    /// after the last one, to pass to [`Spool::commit`] once they are delivered.
    pub fn peek(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<OutMessage>, Position), SpoolError> {
        let mut out = Vec::new();
        let mut body_bytes = 0;
        let mut pos = self.cursor;
        while out.len() < max && pos < self.write {
            let path = segment_path(&self.config.dir, pos.segment);
            let end_here = self
                .segment_ends
                .iter()
                .find(|(s, _)| *s == pos.segment)
                .map(|&(_, e)| e);
            let next_segment = Position {
                segment: pos.segment + 1,
                offset: MAGIC.len() as u64,
            };
            if end_here.is_some_and(|e| pos.offset >= e) {
                pos = next_segment;
                continue;
            }
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    pos = next_segment;
                    continue;
                }
                Err(e) => return Err(io_err(&path)(e)),
            };
            f.seek(SeekFrom::Start(pos.offset)).map_err(io_err(&path))?;
            let mut r = BufReader::new(f);
            let mut moved = false;
            while out.len() < max {
                if pos.segment == self.write.segment && pos.offset >= self.write.offset {
                    break;
                }
                match read_record(&mut r).map_err(io_err(&path))? {
                    Ok(Some(payload)) => {
                        let Some(m) = decode(&payload) else {
                            SpoolDamage {
                                path: &path,
                                offset: Some(pos.offset),
                                what: "spool record has a valid checksum but does not decode; skipped",
                            }
                            .emit();
                            pos.offset += RECORD_HEADER + payload.len() as u64;
                            continue;
                        };
                        if !out.is_empty() && body_bytes + m.body.len() > max_bytes {
                            return Ok((out, pos));
                        }
                        body_bytes += m.body.len();
                        pos.offset += RECORD_HEADER + payload.len() as u64;
                        out.push(m);
                        moved = true;
                    }
                    Ok(None) => break,
                    Err(()) => {
                        SpoolDamage {
                            path: &path,
                            offset: Some(pos.offset),
                            what: CHECKSUM_FAILED,
                        }
                        .emit();
                        self.segment_ends.push((pos.segment, pos.offset));
                        if pos.segment == self.write.segment {
                            // New appends must not land behind the damage.
                            self.roll()?;
                        }
                        break;
                    }
                }
            }
            if out.len() >= max {
                break;
            }
            if pos.segment < self.write.segment {
                pos = next_segment;
            } else if !moved {
                break;
            }
        }
        Ok((out, pos))
    }

    /// Marks everything before `upto` delivered (`count` messages), persists the cursor and
    /// removes segments wholly delivered.
    pub fn commit(&mut self, upto: Position, count: u64) -> Result<(), SpoolError> {
        if upto <= self.cursor {
            return Ok(());
        }
        let delivered = if upto.segment == self.cursor.segment {
            upto.offset - self.cursor.offset
        } else {
            // Crossing segments: recount from what is left.
            0
        };
        let old = self.cursor;
        self.cursor = upto;
        self.records = self.records.saturating_sub(count);
        if upto >= self.write {
            self.records = 0;
            self.bytes = 0;
        } else if delivered > 0 {
            self.bytes = self.bytes.saturating_sub(delivered);
        } else {
            self.bytes = self.recount()?;
        }
        let dir = self.config.dir.clone();
        let tmp = dir.join("cursor.tmp");
        let cursor_path = dir.join("cursor");
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            writeln!(f, "{} {}", upto.segment, upto.offset).map_err(io_err(&tmp))?;
            if self.config.fsync != FsyncPolicy::Never {
                f.sync_data().map_err(io_err(&tmp))?;
            }
        }
        fs::rename(&tmp, &cursor_path).map_err(io_err(&cursor_path))?;
        if self.config.fsync != FsyncPolicy::Never {
            sync_dir(&dir)?;
        }
        for s in old.segment..upto.segment {
            let p = segment_path(&dir, s);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
            self.segment_ends.retain(|(seg, _)| *seg != s);
        }
        // Everything delivered and the segment grown large: start a fresh one so the disk is
        // given back.
        if self.records == 0 && self.write.offset > self.config.segment_bytes / 2 {
            self.roll()?;
            self.cursor = self.write;
            let p = segment_path(&dir, self.write.segment - 1);
            let _ = fs::remove_file(&p);
        }
        self.publish();
        Ok(())
    }

    /// Bytes from the cursor to the end of the log, skipping cut segment tails.
    fn recount(&self) -> Result<u64, SpoolError> {
        let mut total = 0;
        for s in self.cursor.segment..=self.write.segment {
            let p = segment_path(&self.config.dir, s);
            let len = if s == self.write.segment {
                self.write.offset
            } else {
                match fs::metadata(&p) {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&p)(e)),
                }
            };
            let start = if s == self.cursor.segment {
                self.cursor.offset
            } else {
                MAGIC.len() as u64
            };
            total += len.saturating_sub(start);
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: usize) -> OutMessage {
        OutMessage {
            body: format!("{{\"request_id\":\"r{i}\"}}"),
            group_id: i.is_multiple_of(2).then(|| format!("g{}", i % 3)),
            dedup_id: i.is_multiple_of(3).then(|| format!("d{i}")),
            delay_seconds: i.is_multiple_of(5).then_some(i as u32),
        }
    }

    fn config(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 20,
            segment_bytes: 512,
            fsync: FsyncPolicy::Never,
        }
    }

    fn drain(spool: &mut Spool) -> Vec<OutMessage> {
        let mut all = Vec::new();
        loop {
            let (batch, pos) = spool.peek(3, usize::MAX).unwrap();
            if batch.is_empty() {
                return all;
            }
            spool.commit(pos, batch.len() as u64).unwrap();
            all.extend(batch);
        }
    }

    #[test]
    fn a_second_process_cannot_open_a_spool_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = Spool::open(config(dir.path())).unwrap();
        let second = Spool::open(config(dir.path()));
        assert!(matches!(second, Err(SpoolError::Locked { .. })));
        drop(first);
        Spool::open(config(dir.path())).expect("free again once the first is closed");
    }

    #[test]
    fn round_trips_in_order_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let sent: Vec<_> = (0..40).map(msg).collect();
        {
            let (mut s, rec) = Spool::open(config(dir.path())).unwrap();
            assert_eq!(rec, Recovery::default());
            for chunk in sent.chunks(4) {
                s.append(chunk).unwrap();
            }
            assert_eq!(s.len(), 40);
            assert!(
                list_segments(dir.path()).unwrap().len() > 3,
                "segments roll"
            );
            // Deliver the first 10, then "crash".
            let (batch, pos) = s.peek(10, usize::MAX).unwrap();
            assert_eq!(batch, sent[..10]);
            s.commit(pos, 10).unwrap();
        }
        let (mut s, rec) = Spool::open(config(dir.path())).unwrap();
        assert_eq!(rec.records, 30);
        assert_eq!(s.len(), 30);
        assert_eq!(s.pending_bytes(), rec.bytes);
        assert_eq!(drain(&mut s), sent[10..]);
        assert!(s.is_empty());
        assert_eq!(s.pending_bytes(), 0);
        // Delivered segments are gone.
        assert!(list_segments(dir.path()).unwrap().len() <= 2);
        // And it keeps working after being emptied.
        s.append(&sent[..2]).unwrap();
        assert_eq!(drain(&mut s), sent[..2]);
    }

    #[test]
    fn cuts_a_torn_tail_and_keeps_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.segment_bytes = 1 << 20;
        {
            let (mut s, _) = Spool::open(cfg.clone()).unwrap();
            s.append(&[msg(1), msg(2)]).unwrap();
        }
        // A crash mid-write: half of a third record.
        let seg = segment_path(dir.path(), 0);
        let mut extra = Vec::new();
        encode(&msg(3), &mut extra);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&extra[..extra.len() / 2]).unwrap();
        drop(f);
        let (mut s, rec) = Spool::open(cfg.clone()).unwrap();
        assert_eq!(rec.records, 2);
        assert_eq!(rec.torn_bytes, (extra.len() / 2) as u64);
        s.append(&[msg(4)]).unwrap();
        assert_eq!(drain(&mut s), vec![msg(1), msg(2), msg(4)]);
    }

    #[test]
    fn a_flipped_bit_is_detected_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        {
            let (mut s, _) = Spool::open(cfg.clone()).unwrap();
            for i in 0..30 {
                s.append(&[msg(i)]).unwrap();
            }
        }
        let seg = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[MAGIC.len() + 10] ^= 0x40;
        fs::write(&seg, bytes).unwrap();
        let (mut s, rec) = Spool::open(cfg).unwrap();
        assert_eq!(rec.corrupt_segments, 1);
        let got = drain(&mut s);
        assert!(!got.contains(&msg(0)), "the damaged record is not replayed");
        assert!(got.ends_with(&[msg(29)]), "later segments still are");
    }

    #[test]
    fn refuses_appends_beyond_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.max_bytes = 200;
        let (mut s, _) = Spool::open(cfg).unwrap();
        let mut n = 0;
        let err = loop {
            match s.append(&[msg(1)]) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
        };
        assert!(n >= 1);
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        assert!(s.pending_bytes() <= 200);
        let (b, pos) = s.peek(1, usize::MAX).unwrap();
        s.commit(pos, b.len() as u64).unwrap();
        s.append(&[msg(1)]).unwrap();
    }

    #[test]
    fn peek_respects_byte_budget_but_returns_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(config(dir.path())).unwrap();
        s.append(&[msg(1), msg(2), msg(3)]).unwrap();
        let (b, _) = s.peek(10, 1).unwrap();
        assert_eq!(b.len(), 1);
        let (b, _) = s.peek(10, msg(1).body.len() + msg(2).body.len()).unwrap();
        assert_eq!(b.len(), 2);
    }

    /// A power cut at every byte of the last segment: truncated there, or zero-filled from there
    /// to the end (the file kept its length, the data never reached the disk). Records wholly
    /// before the damage (their fsync completed) are replayed exactly once; nothing else is read;
    /// a record appended after reopening is replayed too; nothing panics. With `delivered`
    /// records committed first, a cursor the damage leaves pointing past the end is repaired.
    #[test]
    fn a_power_cut_at_any_byte_of_the_last_segment_loses_only_what_was_not_fsynced() {
        let sent: Vec<OutMessage> = (0..6).map(msg).collect();
        for delivered in [0usize, 2] {
            // Build the spool once, to learn the record boundaries.
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = config(dir.path());
            cfg.segment_bytes = 1 << 20;
            cfg.fsync = FsyncPolicy::Always;
            let mut ends = Vec::new();
            {
                let (mut s, _) = Spool::open(cfg.clone()).unwrap();
                for m in &sent {
                    s.append(std::slice::from_ref(m)).unwrap();
                    ends.push(s.write.offset);
                }
                if delivered > 0 {
                    let (batch, pos) = s.peek(delivered, usize::MAX).unwrap();
                    s.commit(pos, batch.len() as u64).unwrap();
                }
            }
            let seg = segment_path(dir.path(), 0);
            let pristine = fs::read(&seg).unwrap();
            let cursor = fs::read(dir.path().join("cursor")).ok();
            for cut in 0..=pristine.len() {
                for zero_fill in [false, true] {
                    let case = tempfile::tempdir().unwrap();
                    let mut damaged = pristine[..cut].to_vec();
                    if zero_fill {
                        damaged.resize(pristine.len(), 0);
                    }
                    fs::write(segment_path(case.path(), 0), &damaged).unwrap();
                    if let Some(c) = &cursor {
                        fs::write(case.path().join("cursor"), c).unwrap();
                    }
                    let mut ccfg = cfg.clone();
                    ccfg.dir = case.path().to_path_buf();
                    let what =
                        format!("cut at {cut}, zero-filled {zero_fill}, {delivered} delivered");
                    let (mut s, _) =
                        Spool::open(ccfg.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
                    let whole = ends.iter().filter(|&&e| e as usize <= cut).count();
                    let want: Vec<OutMessage> = sent[delivered.min(whole)..whole].to_vec();
                    assert_eq!(s.len() as usize, want.len(), "{what}: count");
                    s.append(&[msg(99)]).unwrap();
                    let mut want = want;
                    want.push(msg(99));
                    assert_eq!(drain(&mut s), want, "{what}");
                    drop(s);
                    // Reopened again, nothing comes back twice.
                    let (mut s, _) = Spool::open(ccfg).unwrap();
                    assert!(drain(&mut s).is_empty(), "{what}: replayed twice");
                }
            }
        }
    }
}
