//! File operations behind a trait: real files, and a memory backend that can crash.
//!
//! The store only ever touches one flat directory (the data folder) through [`Backend`], and files
//! through [`FileHandle`]. [`MemBackend`] keeps files in memory and models what a power loss does:
//! bytes written but not synced may vanish (all of them, or a torn prefix), and directory changes
//! (create, remove, rename) not followed by a directory sync may be undone. Tests crash it at any
//! moment and reopen the store on what survived, deterministically from a seed.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

/// One open file. Methods take `&self` so one thread can sync while another appends.
pub trait FileHandle: Send + Sync + fmt::Debug {
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset` (an error if the file is shorter).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`, extending the file as needed.
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Cuts (or extends with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
}

/// A flat directory of files.
pub trait Backend: Send + Sync + fmt::Debug {
    /// The names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing, creating it (empty) if `create` is set.
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn FileHandle>>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` atomically.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, removals and renames in the directory durable (fsync of the directory).
    fn sync_dir(&self) -> io::Result<()>;
}

/// The lock file in a data folder: one process at a time holds an exclusive `flock` on it.
pub const LOCK_FILE: &str = "LOCK";

/// Real files in a directory (created if missing), locked against other processes.
#[derive(Debug, Clone)]
pub struct FileBackend {
    dir: PathBuf,
    /// The open lock file; the `flock` on it lasts as long as any clone of this backend (and
    /// ends with the process, however it dies, so a killed broker leaves no stale lock).
    _lock: Arc<File>,
}

impl FileBackend {
    /// Uses `dir` as the data folder, creating it if needed, and takes its lock: two processes
    /// sharing a data folder would interleave appends to one log and corrupt it. Fails with
    /// [`io::ErrorKind::WouldBlock`] while another process (or another `FileBackend` of this
    /// one) holds the folder.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<FileBackend> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))?;
        // flock (not fcntl locks, which a process would silently share with itself): the lock
        // belongs to this open file, so a second open in the same process is refused too.
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |errno| {
                let error = io::Error::from(errno);
                if error.kind() == io::ErrorKind::WouldBlock {
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "another Warren process holds the lock on {}",
                            dir.join(LOCK_FILE).display()
                        ),
                    )
                } else {
                    error
                }
            },
        )?;
        Ok(FileBackend {
            dir,
            _lock: Arc::new(lock),
        })
    }
}

#[derive(Debug)]
struct OsFile(File);

impl FileHandle for OsFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, offset)
    }
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, data, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Backend for FileBackend {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
                && name != LOCK_FILE
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn FileHandle>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .open(self.dir.join(name))?;
        Ok(Arc::new(OsFile(file)))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// The files of another backend whose names start with `prefix`, seen without it: a namespace
/// inside the data folder (the spill log uses `spill-`).
#[derive(Debug)]
pub(crate) struct Prefixed {
    pub(crate) inner: Arc<dyn Backend>,
    pub(crate) prefix: &'static str,
}

impl Backend for Prefixed {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self
            .inner
            .list()?
            .into_iter()
            .filter_map(|name| name.strip_prefix(self.prefix).map(str::to_owned))
            .collect())
    }

    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn FileHandle>> {
        self.inner.open(&format!("{}{name}", self.prefix), create)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(&format!("{}{name}", self.prefix))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(
            &format!("{}{from}", self.prefix),
            &format!("{}{to}", self.prefix),
        )
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
}

/// The contents of one in-memory file.
#[derive(Debug, Default)]
struct MemFileData {
    /// What reads see: everything written.
    current: Vec<u8>,
    /// What a crash keeps for sure: the contents at the last `sync_data`.
    durable: Vec<u8>,
}

/// One in-memory file, shared by every handle on it.
#[derive(Debug, Default)]
struct MemFile {
    data: Mutex<MemFileData>,
    /// The backend's fault switch, checked on every write and sync.
    faults: Arc<Mutex<Faults>>,
}

/// Faults to inject, shared by a backend and its files.
#[derive(Debug, Default)]
struct Faults {
    /// Writes and syncs fail with "no space left" (a write may land partly first).
    disk_full: bool,
    /// File syncs fail with EIO (a failing device): writes land, but never become durable.
    sync_eio: bool,
    /// Every file sync sleeps this long first, as a real disk takes time to flush.
    sync_delay: std::time::Duration,
    /// File syncs that succeeded, over all files.
    syncs: u64,
}

fn disk_full_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "injected: no space left on device",
    )
}

impl FileHandle for MemFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.data.lock().current.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.data.lock();
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let source = data
            .current
            .get(start..end)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(source);
        Ok(())
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let full = self.faults.lock().disk_full;
        // A full disk still takes the first part of a write, as a real one may.
        let data = if full { &data[..data.len() / 2] } else { data };
        let mut file = self.data.lock();
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start + data.len();
        if file.current.len() < end {
            file.current.resize(end, 0);
        }
        file.current[start..end].copy_from_slice(data);
        if full {
            return Err(disk_full_error());
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        self.data.lock().current.resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let delay = self.faults.lock().sync_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        {
            let mut faults = self.faults.lock();
            if faults.disk_full {
                return Err(disk_full_error());
            }
            if faults.sync_eio {
                // EIO, as Linux reports a device error at fsync.
                return Err(io::Error::from_raw_os_error(5));
            }
            faults.syncs += 1;
        }
        let mut file = self.data.lock();
        file.durable = file.current.clone();
        Ok(())
    }
}

/// The directory of a [`MemBackend`].
#[derive(Debug, Default)]
struct MemDir {
    /// Names as the running process sees them.
    current: HashMap<String, Arc<MemFile>>,
    /// Names as a crash would leave them: the state at the last `sync_dir`.
    durable: HashMap<String, Arc<MemFile>>,
}

/// An in-memory directory that can simulate a crash. Cloning shares the same directory.
#[derive(Debug, Clone, Default)]
pub struct MemBackend {
    dir: Arc<Mutex<MemDir>>,
    faults: Arc<Mutex<Faults>>,
}

/// How much of what was not synced survives a [`MemBackend::crash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Everything written survives (the process died; the kernel kept its page cache): kill -9.
    KeepWrites,
    /// Only synced data and synced directory changes survive: power loss, worst case.
    LoseUnsynced,
    /// Synced data survives, plus a prefix of each file's unsynced bytes of a length drawn from
    /// `seed`, whose last bytes may be garbage: power loss in the middle of writeback.
    Torn {
        /// Drives which lengths survive and which bytes are garbled.
        seed: u64,
    },
}

/// A tiny deterministic generator (splitmix64), so crashes are reproducible from a seed.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl MemBackend {
    /// An empty directory.
    pub fn new() -> MemBackend {
        MemBackend::default()
    }

    /// Makes every write and sync fail as on a full disk (`true`), or work again (`false`).
    pub fn set_disk_full(&self, full: bool) {
        self.faults.lock().disk_full = full;
    }

    /// Makes every file sync fail with an I/O error (EIO), as a failing device does (`true`),
    /// or work again (`false`). Writes still succeed: only durability is refused.
    pub fn set_sync_fails(&self, fails: bool) {
        self.faults.lock().sync_eio = fails;
    }

    /// Makes every file sync take `delay` (a slow disk), so that concurrent callers overlap.
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        self.faults.lock().sync_delay = delay;
    }

    /// How many file syncs succeeded so far, over all files.
    pub fn sync_count(&self) -> u64 {
        self.faults.lock().syncs
    }

    /// Simulates a crash: afterwards the directory holds what survived by `mode`. Handles opened
    /// before the crash keep working but no longer affect the directory, like a dead process's.
    pub fn crash(&self, mode: CrashMode) {
        let mut dir = self.dir.lock();
        let names = match mode {
            CrashMode::KeepWrites => dir.current.clone(),
            _ => dir.durable.clone(),
        };
        let mut rng = match mode {
            CrashMode::Torn { seed } => seed,
            _ => 0,
        };
        let mut survivors = HashMap::new();
        let mut sorted: Vec<_> = names.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, file) in sorted {
            let data = file.data.lock();
            let contents = match mode {
                CrashMode::KeepWrites => data.current.clone(),
                CrashMode::LoseUnsynced => data.durable.clone(),
                CrashMode::Torn { .. } => torn_contents(&data, &mut rng),
            };
            let survivor = MemFile {
                data: Mutex::new(MemFileData {
                    current: contents.clone(),
                    durable: contents,
                }),
                faults: Arc::clone(&self.faults),
            };
            survivors.insert(name, Arc::new(survivor));
        }
        dir.durable = survivors.clone();
        dir.current = survivors;
    }

    /// The contents of a file as the running process sees them (for tests that corrupt bytes).
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        let dir = self.dir.lock();
        dir.current
            .get(name)
            .map(|file| file.data.lock().current.clone())
    }

    /// Replaces a file's contents, as durable (for tests that corrupt bytes or plant files).
    pub fn write_file(&self, name: &str, contents: Vec<u8>) {
        let mut dir = self.dir.lock();
        let file = Arc::new(MemFile {
            data: Mutex::new(MemFileData {
                current: contents.clone(),
                durable: contents,
            }),
            faults: Arc::clone(&self.faults),
        });
        dir.current.insert(name.to_owned(), Arc::clone(&file));
        dir.durable.insert(name.to_owned(), file);
    }

    /// Total bytes in all files.
    pub fn total_bytes(&self) -> u64 {
        let dir = self.dir.lock();
        dir.current
            .values()
            .map(|file| file.data.lock().current.len() as u64)
            .sum()
    }
}

/// What a torn writeback leaves of a file: its synced bytes, plus some of the rest.
fn torn_contents(data: &MemFileData, rng: &mut u64) -> Vec<u8> {
    // Writes since the sync may have overwritten synced bytes only by appending, in this store,
    // so the current contents extend the durable ones.
    let durable_len = data.durable.len().min(data.current.len());
    let unsynced = data.current.len() - durable_len;
    let mut contents = data.durable.clone();
    if unsynced == 0 {
        return contents;
    }
    let keep = (splitmix(rng) % (unsynced as u64 + 1)) as usize;
    contents.truncate(durable_len);
    contents.extend_from_slice(&data.current[durable_len..durable_len + keep]);
    // Half the time, garble a few of the last bytes that survived.
    if keep > 0 && splitmix(rng).is_multiple_of(2) {
        let garbled = keep.min(1 + (splitmix(rng) % 16) as usize);
        let len = contents.len();
        for byte in &mut contents[len - garbled..] {
            *byte = splitmix(rng) as u8;
        }
    }
    contents
}

impl Backend for MemBackend {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.dir.lock().current.keys().cloned().collect())
    }

    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn FileHandle>> {
        let mut dir = self.dir.lock();
        if let Some(file) = dir.current.get(name) {
            return Ok(Arc::clone(file) as Arc<dyn FileHandle>);
        }
        if !create {
            return Err(io::ErrorKind::NotFound.into());
        }
        if self.faults.lock().disk_full {
            return Err(disk_full_error());
        }
        let file = Arc::new(MemFile {
            data: Mutex::default(),
            faults: Arc::clone(&self.faults),
        });
        dir.current.insert(name.to_owned(), Arc::clone(&file));
        Ok(file)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        match self.dir.lock().current.remove(name) {
            Some(_) => Ok(()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut dir = self.dir.lock();
        let file = dir.current.remove(from).ok_or(io::ErrorKind::NotFound)?;
        dir.current.insert(to.to_owned(), file);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut dir = self.dir.lock();
        dir.durable = dir.current.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_writes_and_names_are_lost_on_power_loss() {
        let backend = MemBackend::new();
        let kept = backend.open("kept", true).unwrap();
        kept.write_all_at(b"synced", 0).unwrap();
        kept.sync_data().unwrap();
        backend.sync_dir().unwrap();
        kept.write_all_at(b" and not", 6).unwrap();
        let lost = backend.open("lost", true).unwrap();
        lost.write_all_at(b"x", 0).unwrap();
        lost.sync_data().unwrap();

        backend.crash(CrashMode::LoseUnsynced);
        assert_eq!(backend.read_file("kept").unwrap(), b"synced");
        assert!(backend.read_file("lost").is_none(), "never dir-synced");
    }

    #[test]
    fn kill_keeps_everything_written() {
        let backend = MemBackend::new();
        let file = backend.open("f", true).unwrap();
        file.write_all_at(b"abc", 0).unwrap();
        backend.crash(CrashMode::KeepWrites);
        assert_eq!(backend.read_file("f").unwrap(), b"abc");
        // The old handle is detached from the directory.
        file.write_all_at(b"zzz", 0).unwrap();
        assert_eq!(backend.read_file("f").unwrap(), b"abc");
    }

    #[test]
    fn torn_crash_keeps_synced_prefix() {
        for seed in 0..50 {
            let backend = MemBackend::new();
            let file = backend.open("f", true).unwrap();
            file.write_all_at(b"0123456789", 0).unwrap();
            file.sync_data().unwrap();
            backend.sync_dir().unwrap();
            file.write_all_at(b"abcdefghij", 10).unwrap();
            backend.crash(CrashMode::Torn { seed });
            let contents = backend.read_file("f").unwrap();
            assert!(contents.len() >= 10 && contents.len() <= 20);
            assert_eq!(&contents[..10], b"0123456789");
        }
    }

    #[test]
    fn disk_full_fails_writes_and_syncs_and_eio_fails_syncs() {
        let backend = MemBackend::new();
        let file = backend.open("f", true).unwrap();
        backend.sync_dir().unwrap();
        backend.set_disk_full(true);
        assert!(file.write_all_at(b"abcd", 0).is_err());
        assert!(file.sync_data().is_err());
        backend.set_disk_full(false);
        file.write_all_at(b"abcd", 0).unwrap();
        file.sync_data().unwrap();
        backend.set_sync_fails(true);
        file.write_all_at(b"efgh", 4).unwrap();
        let eio = file.sync_data().unwrap_err();
        assert_eq!(eio.raw_os_error(), Some(5));
        backend.crash(CrashMode::LoseUnsynced);
        assert_eq!(backend.read_file("f").unwrap(), b"abcd");
    }

    #[test]
    fn a_locked_data_folder_is_refused_until_its_holder_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = FileBackend::new(dir.path()).unwrap();
        let clone = first.clone();
        let refused = FileBackend::new(dir.path()).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock);
        assert!(
            refused.to_string().contains("another Warren process"),
            "{refused}"
        );
        drop(first);
        // A clone keeps the lock.
        assert!(FileBackend::new(dir.path()).is_err());
        drop(clone);
        let again = FileBackend::new(dir.path()).unwrap();
        // The lock file is not one of the store's files.
        assert!(again.list().unwrap().is_empty());
    }

    #[test]
    fn file_backend_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FileBackend::new(dir.path()).unwrap();
        let file = backend.open("a", true).unwrap();
        file.write_all_at(b"hello", 0).unwrap();
        file.sync_data().unwrap();
        backend.rename("a", "b").unwrap();
        backend.sync_dir().unwrap();
        assert_eq!(backend.list().unwrap(), vec!["b".to_owned()]);
        let file = backend.open("b", false).unwrap();
        let mut buf = [0u8; 5];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello");
        file.set_len(2).unwrap();
        assert_eq!(file.size().unwrap(), 2);
        backend.remove("b").unwrap();
        assert!(backend.open("b", false).is_err());
    }
}
