//! A FUSE filesystem for crash tests that loses what was not fsynced, as a power cut does.
//!
//! It passes through to a backing folder, but every write, truncation and extension of a
//! file stays in memory (reads see it) until that file is fsynced (`fsync` or
//! `fdatasync`), which writes it to the backing file. [`Mount::crash`] drops whatever is
//! still unsynced and fails every later request with `EIO`, so from that instant the
//! backing folder holds exactly the synced data. Mounting it again shows what survived:
//! the kernel's page cache goes with the old mount, as it would with the machine.
//! `kill -9` alone cannot test this: the page cache outlives a killed process. This is
//! the idea of Jepsen's LazyFS, reduced to what the tests need.
//!
//! Not modelled: names and torn writes. Creating, renaming and removing files and folders
//! reach the backing folder at once, as if each directory were fsynced right after, and a
//! synced range is all there or all gone.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Unsynced data is kept in blocks of this size.
const BLOCK: u64 = 4096;
/// How long the kernel may cache names and attributes: nothing but this filesystem
/// changes the backing folder while it is mounted.
const TTL: Duration = Duration::from_secs(1);
/// How long an fsync takes before its data is safe, as on a disk: a crash meanwhile loses
/// it. Without it a cut would seldom find a commit in flight.
const FSYNC_TIME: Duration = Duration::from_millis(2);
// Linux's open(2) flags (as FUSE passes them on).
const O_EXCL: i32 = 0o200;
const O_TRUNC: i32 = 0o1000;

/// A file's changes since its last fsync.
struct Pending {
    /// Whole blocks written since, by index; their bytes past `size` are zero.
    blocks: BTreeMap<u64, Vec<u8>>,
    /// The size readers see.
    size: u64,
    /// The backing file's bytes from here on were cut off by a truncation (they read as zeros).
    base: u64,
    /// The backing file's length (it does not change until the next fsync).
    backing_len: u64,
}

impl Pending {
    fn new(backing_len: u64) -> Pending {
        Pending { blocks: BTreeMap::new(), size: backing_len, base: backing_len, backing_len }
    }

    /// Block `index` as readers see it.
    fn block(&self, file: &File, index: u64) -> io::Result<Vec<u8>> {
        if let Some(b) = self.blocks.get(&index) {
            return Ok(b.clone());
        }
        let mut b = vec![0; BLOCK as usize];
        let start = index * BLOCK;
        let valid = self.base.saturating_sub(start).min(BLOCK) as usize;
        read_full(file, &mut b[..valid], start)?;
        Ok(b)
    }

    fn read(&self, file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = (offset + len).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let (index, within) = (pos / BLOCK, (pos % BLOCK) as usize);
            let take = ((BLOCK - within as u64).min(end - pos)) as usize;
            match self.blocks.get(&index) {
                Some(b) => out.extend_from_slice(&b[within..within + take]),
                None => out.extend_from_slice(&self.block(file, index)?[within..within + take]),
            }
            pos += take as u64;
        }
        Ok(out)
    }

    fn write(&mut self, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let (index, within) = (pos / BLOCK, (pos % BLOCK) as usize);
            let take = (BLOCK as usize - within).min(rest.len());
            if !self.blocks.contains_key(&index) {
                let b = self.block(file, index)?;
                self.blocks.insert(index, b);
            }
            let b = self.blocks.get_mut(&index).expect("inserted above");
            b[within..within + take].copy_from_slice(&rest[..take]);
            rest = &rest[take..];
            pos += take as u64;
        }
        self.size = self.size.max(offset + data.len() as u64);
        Ok(())
    }

    fn set_size(&mut self, size: u64) {
        if size < self.size {
            self.blocks.retain(|index, _| index * BLOCK < size);
            if let Some(b) = self.blocks.get_mut(&(size / BLOCK)) {
                b[(size % BLOCK) as usize..].fill(0);
            }
            self.base = self.base.min(size);
        }
        self.size = size;
    }

    /// Writes the changes to the backing file: after this it holds what readers saw.
    fn sync(self, file: &File) -> io::Result<()> {
        if self.base < self.backing_len {
            file.set_len(self.base)?;
        }
        for (index, b) in &self.blocks {
            let start = index * BLOCK;
            let len = (self.size - start).min(BLOCK) as usize;
            file.write_all_at(&b[..len], start)?;
        }
        file.set_len(self.size)
    }
}

fn read_full(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset)? {
            0 => break, // past the end: zeros
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

struct Node {
    /// Relative to the backing folder.
    path: PathBuf,
    pending: Option<Pending>,
}

struct State {
    root: PathBuf,
    nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    handles: HashMap<u64, File>,
    next_ino: u64,
    next_fh: u64,
    crashed: bool,
    /// Every fsync fails with `EIO` (a failing disk) and keeps its file's changes unsynced.
    failing_syncs: bool,
}

impl State {
    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.nodes.get(&ino.0).map(|n| n.path.clone()).ok_or(Errno::ENOENT)
    }

    fn backing(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        Ok(self.root.join(self.path(ino)?))
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn file(&self, fh: FileHandle) -> Result<&File, Errno> {
        self.handles.get(&fh.0).ok_or(Errno::EBADF)
    }

    /// The inode number of `path`, made on first sight; a name removed and made again gets a new one.
    fn ino(&mut self, path: PathBuf) -> u64 {
        if let Some(ino) = self.by_path.get(&path) {
            return *ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_path.insert(path.clone(), ino);
        self.nodes.insert(ino, Node { path, pending: None });
        ino
    }

    fn attr(&self, ino: u64, md: &Metadata) -> FileAttr {
        let time = |secs: i64, nanos: i64| UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos as u32);
        let size = self.nodes.get(&ino).and_then(|n| n.pending.as_ref()).map_or(md.len(), |p| p.size);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: BLOCK as u32,
            flags: 0,
        }
    }

    /// The attributes of the node behind `path`, seen through unsynced changes.
    fn entry(&mut self, path: PathBuf) -> Result<FileAttr, Errno> {
        let md = std::fs::symlink_metadata(self.root.join(&path))?;
        let ino = self.ino(path);
        Ok(self.attr(ino, &md))
    }

    fn pending(&mut self, ino: INodeNo, backing_len: impl FnOnce() -> io::Result<u64>) -> Result<&mut Pending, Errno> {
        let node = self.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
        if node.pending.is_none() {
            node.pending = Some(Pending::new(backing_len()?));
        }
        Ok(node.pending.as_mut().expect("set above"))
    }

    fn open(&mut self, path: &Path, options: &OpenOptions) -> Result<(u64, Metadata), Errno> {
        let file = options.open(self.root.join(path))?;
        let md = file.metadata()?;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, file);
        Ok((fh, md))
    }
}

/// The filesystem as fuser calls it; the state is shared with [`Mount`].
struct LazyFs {
    state: Arc<Mutex<State>>,
}

impl LazyFs {
    /// The state, or `EIO` once crashed: the disk is gone.
    fn live(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.crashed { Err(Errno::EIO) } else { Ok(st) }
    }
}

/// Runs `$f` (a block in which `?` stops with an errno), then answers `$reply` with `$ok`
/// given its value, or with its error.
macro_rules! answer {
    ($reply:ident, $f:expr, |$v:pat_param| $ok:expr) => {
        match (|| -> Result<_, Errno> { $f })() {
            Ok($v) => $ok,
            Err(e) => $reply.error(e),
        }
    };
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        answer!(reply, {
            let mut st = self.live()?;
            let path = st.child(parent, name)?;
            st.entry(path)
        }, |attr| reply.entry(&TTL, &attr, Generation(0)))
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        answer!(reply, {
            let st = self.live()?;
            let md = match fh.and_then(|fh| st.handles.get(&fh.0)) {
                Some(f) => f.metadata()?,
                None => std::fs::symlink_metadata(st.backing(ino)?)?,
            };
            Ok(st.attr(ino.0, &md))
        }, |attr| reply.attr(&TTL, &attr))
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        answer!(reply, {
            let mut st = self.live()?;
            let path = st.backing(ino)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid)?;
            }
            if let Some(size) = size {
                let len = || std::fs::metadata(&path).map(|m| m.len());
                st.pending(ino, len)?.set_size(size);
            }
            let md = match fh.and_then(|fh| st.handles.get(&fh.0)) {
                Some(f) => f.metadata()?,
                None => std::fs::symlink_metadata(&path)?,
            };
            Ok(st.attr(ino.0, &md))
        }, |attr| reply.attr(&TTL, &attr))
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        answer!(reply, {
            let mut st = self.live()?;
            let path = st.child(parent, name)?;
            std::fs::DirBuilder::new().mode(mode & !umask & 0o7777).create(st.root.join(&path))?;
            st.entry(path)
        }, |attr| reply.entry(&TTL, &attr, Generation(0)))
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer!(reply, {
            let mut st = self.live()?;
            let path = st.child(parent, name)?;
            std::fs::remove_file(st.root.join(&path))?;
            st.by_path.remove(&path);
            Ok(())
        }, |()| reply.ok())
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer!(reply, {
            let mut st = self.live()?;
            let path = st.child(parent, name)?;
            std::fs::remove_dir(st.root.join(&path))?;
            st.by_path.remove(&path);
            Ok(())
        }, |()| reply.ok())
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        answer!(reply, {
            let mut st = self.live()?;
            if flags != RenameFlags::empty() {
                return Err(Errno::EINVAL);
            }
            let (from, to) = (st.child(parent, name)?, st.child(newparent, newname)?);
            std::fs::rename(st.root.join(&from), st.root.join(&to))?;
            st.by_path.remove(&to);
            // The node moves, and so does everything under it if it is a folder.
            let moved: Vec<_> = st.by_path.keys().filter(|p| p.starts_with(&from)).cloned().collect();
            for old in moved {
                let new = to.join(old.strip_prefix(&from).expect("filtered on the prefix"));
                let ino = st.by_path.remove(&old).expect("listed above");
                st.by_path.insert(new.clone(), ino);
                if let Some(n) = st.nodes.get_mut(&ino) {
                    n.path = new;
                }
            }
            Ok(())
        }, |()| reply.ok())
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Always read-write: an fsync may come through a read-only descriptor. FUSE leaves
        // O_TRUNC out of `open` and sends it as a `setattr`.
        answer!(reply, {
            let mut st = self.live()?;
            let path = st.path(ino)?;
            Ok(st.open(&path, OpenOptions::new().read(true).write(true))?.0)
        }, |fh| reply.opened(FileHandle(fh), FopenFlags::empty()))
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        answer!(reply, {
            let st = self.live()?;
            let file = st.file(fh)?;
            match st.nodes.get(&ino.0).and_then(|n| n.pending.as_ref()) {
                Some(p) => Ok(p.read(file, offset, size.into())?),
                None => {
                    let mut buf = vec![0; size as usize];
                    let len = file.metadata()?.len();
                    let n = len.saturating_sub(offset).min(size.into()) as usize;
                    read_full(file, &mut buf[..n], offset)?;
                    buf.truncate(n);
                    Ok(buf)
                }
            }
        }, |data| reply.data(&data))
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        answer!(reply, {
            let mut st = self.live()?;
            let file = st.file(fh)?.try_clone()?;
            st.pending(ino, || file.metadata().map(|m| m.len()))?.write(&file, offset, data)?;
            Ok(data.len() as u32)
        }, |n| reply.written(n))
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close(2) syncs nothing.
        match self.live() {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The unsynced data stays with the inode, as in a page cache.
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        std::thread::sleep(FSYNC_TIME);
        answer!(reply, {
            let mut st = self.live()?;
            if st.failing_syncs {
                return Err(Errno::EIO);
            }
            let file = st.file(fh)?.try_clone()?;
            if let Some(p) = st.nodes.get_mut(&ino.0).and_then(|n| n.pending.take()) {
                p.sync(&file)?;
            }
            Ok(())
        }, |()| reply.ok())
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        answer!(reply, {
            let st = self.live()?;
            let mut entries = vec![(FileType::Directory, ".".into()), (FileType::Directory, "..".into())];
            for e in std::fs::read_dir(st.backing(ino)?)? {
                let e = e?;
                entries.push((FileType::from_std(e.file_type()?).unwrap_or(FileType::RegularFile), e.file_name()));
            }
            Ok(entries)
        }, |entries| {
            // Numbers in a listing are only shown (d_ino); lookups give the real ones.
            for (i, (kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(u64::MAX), i as u64 + 1, kind, name) {
                    break;
                }
            }
            reply.ok()
        })
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Names already reached the backing folder.
        match self.live() {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        answer!(reply, {
            let mut st = self.live()?;
            let path = st.child(parent, name)?;
            let mut options = OpenOptions::new();
            options.read(true).write(true).mode(mode & !umask & 0o7777);
            if flags & O_EXCL != 0 {
                options.create_new(true);
            } else {
                options.create(true);
            }
            let (fh, md) = st.open(&path, &options)?;
            let ino = st.ino(path);
            if flags & O_TRUNC != 0 {
                st.pending(INodeNo(ino), || Ok(md.len()))?.set_size(0);
            }
            Ok((st.attr(ino, &md), fh))
        }, |(attr, fh)| reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty()))
    }
}

/// A mounted [`LazyFs`]; dropping it unmounts (lazily if it has to).
pub struct Mount {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    at: PathBuf,
}

impl Mount {
    /// Mounts a filesystem at `at` over the backing folder `backing`.
    pub fn new(backing: &Path, at: &Path) -> anyhow::Result<Mount> {
        let at = at.canonicalize().with_context(|| format!("no mount point {}", at.display()))?;
        let root = backing.canonicalize().with_context(|| format!("no backing folder {}", backing.display()))?;
        let mut state = State {
            root,
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            handles: HashMap::new(),
            next_ino: INodeNo::ROOT.0 + 1,
            next_fh: 1,
            crashed: false,
            failing_syncs: false,
        };
        state.by_path.insert(PathBuf::new(), INodeNo::ROOT.0);
        state.nodes.insert(INodeNo::ROOT.0, Node { path: PathBuf::new(), pending: None });
        let state = Arc::new(Mutex::new(state));
        let mut config = Config::default();
        // Other requests go on while an fsync takes its time.
        config.n_threads = Some(4);
        config.mount_options = vec![MountOption::FSName("stead-lazyfs".into()), MountOption::Subtype("lazyfs".into())];
        let session = fuser::spawn_mount(LazyFs { state: state.clone() }, &at, &config).with_context(|| {
            format!(
                "cannot mount the crash test's FUSE filesystem at {}: it needs /dev/fuse and root (or fusermount3 from the fuse3 package)",
                at.display()
            )
        })?;
        let mount = Mount { state, session: Some(session), at };
        // The mount is usable once the kernel has our answer to its first request.
        std::fs::metadata(&mount.at).context("the mounted filesystem does not answer")?;
        anyhow::ensure!(mount.mounted(), "{} is not in the mount table after mounting", mount.at.display());
        Ok(mount)
    }

    /// The power cut: every unsynced change is dropped and every later request fails.
    /// Returns the files that had unsynced changes, with the bytes of their unsynced blocks.
    pub fn crash(&self) -> BTreeMap<PathBuf, u64> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.crashed = true;
        let mut lost = BTreeMap::new();
        for node in st.nodes.values_mut() {
            if let Some(p) = node.pending.take() {
                *lost.entry(node.path.clone()).or_default() += p.blocks.len() as u64 * BLOCK;
            }
        }
        lost
    }

    /// From now on every fsync fails with `EIO` (`true`), or works again (`false`).
    pub fn fail_syncs(&self, failing: bool) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).failing_syncs = failing;
    }

    /// Whether the mount point is in this process's mount table.
    fn mounted(&self) -> bool {
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let at = self.at.to_string_lossy().replace(' ', "\\040");
        table.lines().any(|l| l.split(' ').nth(4) == Some(at.as_str()))
    }

    /// Unmounts, and fails if the mount point is still mounted after.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.release();
        anyhow::ensure!(!self.mounted(), "{} is still mounted", self.at.display());
        Ok(())
    }

    fn release(&mut self) {
        if let Some(session) = self.session.take() {
            // Busy (a process still holds a file) leaves it mounted: detach it then.
            let _ = session.umount_and_join();
        }
        if self.mounted() {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
        if self.mounted() {
            let _ = Command::new("fusermount3").args(["-u", "-z"]).arg(&self.at).status();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stead_core::env::SeededRandom;

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        SetLen(u64),
        Sync,
    }

    /// Applies `ops` to one file through the mount, checking every read against a model,
    /// then crashes: the backing file, and the file seen through a new mount, must hold
    /// exactly what the last sync had.
    fn check(initial: &[u8], ops: &[Op]) -> anyhow::Result<()> {
        let (backing, at) = (tempfile::tempdir()?, tempfile::tempdir()?);
        std::fs::write(backing.path().join("f"), initial)?;
        let mount = Mount::new(backing.path(), at.path())?;
        let path = at.path().join("f");
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let (mut now, mut synced) = (initial.to_vec(), initial.to_vec());
        for op in ops {
            match op {
                Op::Write(offset, data) => {
                    file.write_all_at(data, *offset)?;
                    let end = *offset as usize + data.len();
                    if now.len() < end {
                        now.resize(end, 0);
                    }
                    now[*offset as usize..end].copy_from_slice(data);
                }
                Op::SetLen(len) => {
                    file.set_len(*len)?;
                    now.resize(*len as usize, 0);
                }
                Op::Sync => {
                    file.sync_data()?;
                    synced = now.clone();
                }
            }
            anyhow::ensure!(std::fs::read(&path)? == now, "after {op:?}: reads through the mount differ from the writes");
            anyhow::ensure!(file.metadata()?.len() == now.len() as u64, "after {op:?}: wrong size");
        }
        // A file made and never synced is there after the crash (names are not modelled), empty.
        std::fs::write(at.path().join("new"), b"never synced")?;
        mount.crash();
        anyhow::ensure!(std::fs::read(&path).is_err(), "reads after the crash must fail");
        drop(file);
        mount.unmount()?;
        anyhow::ensure!(std::fs::read(backing.path().join("f"))? == synced, "the backing file is not what was synced");
        anyhow::ensure!(std::fs::read(backing.path().join("new"))?.is_empty(), "unsynced data of a new file survived");
        let again = Mount::new(backing.path(), at.path())?;
        anyhow::ensure!(std::fs::read(&path)? == synced, "remounted, the file is not what was synced");
        again.unmount()
    }

    #[test]
    fn keeps_exactly_what_was_synced() -> anyhow::Result<()> {
        use Op::*;
        let text = |s: &str| s.as_bytes().to_vec();
        // Nothing synced: nothing changes.
        check(b"old", &[Write(0, text("new")), Write(3, text(" and more"))])?;
        // Part synced: that part only.
        check(b"", &[Write(0, text("hello")), Sync, Write(5, text(" world")), Write(0, text("J"))])?;
        // A truncation is lost too, and so is what was written past it.
        check(&[7; 10_000], &[SetLen(10), Write(9000, text("x"))])?;
        // Synced truncations and extensions read as zeros, never as the old bytes.
        check(&[7; 10_000], &[SetLen(10), SetLen(9000), Sync, Write(20_000, text("tail")), Sync, SetLen(3)])?;
        // Seeded random ops over several blocks.
        for seed in 0..8 {
            let mut rng = SeededRandom::new(seed);
            let mut ops = Vec::new();
            for _ in 0..60 {
                ops.push(match rng.below(10) {
                    0 => Sync,
                    1 => SetLen(rng.below(3 * BLOCK)),
                    _ => {
                        let data: Vec<u8> = (0..1 + rng.below(2 * BLOCK)).map(|_| rng.below(256) as u8).collect();
                        Write(rng.below(3 * BLOCK), data)
                    }
                });
            }
            check(&[1; 5000], &ops).with_context(|| format!("seed {seed}"))?;
        }
        Ok(())
    }
}
