//! The JuiceFS test volume: a real FUSE mount on Redis metadata and local object storage,
//! gone without a trace after drop, also when the test panics with files open on it.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use disgrafs_testsupport::{JuiceFs, Unmounted, mount_type};

fn alive(pid: u32) -> bool {
    // A zombie would still have /proc/PID; the mount process is reaped by `unmount`.
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Everything under `dir`, recursively (files only).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn volume_stores_data_as_objects_and_unmounts_even_when_busy() {
    let mut volume = JuiceFs::start().unwrap();
    let mnt = volume.mountpoint().to_owned();
    assert_eq!(mount_type(&mnt).unwrap().as_deref(), Some("fuse.juicefs"));
    let pid = volume.mount_pid().unwrap();

    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let path = mnt.join("data.bin");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&content).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let mut read = Vec::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_end(&mut read)
        .unwrap();
    assert!(read == content, "read back differs");
    // The bytes live as chunk objects in the bucket, not as a plain file.
    let objects = files_under(&volume.bucket());
    let stored: u64 = objects
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        stored >= content.len() as u64,
        "{stored} bytes in {} objects",
        objects.len()
    );

    // Busy: an open file and nothing closed before unmounting.
    let _open = std::fs::File::open(&path).unwrap();
    assert_eq!(volume.unmount().unwrap(), Unmounted::Forced);
    assert_eq!(mount_type(&mnt).unwrap(), None);
    assert!(!alive(pid), "juicefs mount {pid} still runs");
    assert_eq!(volume.mount_pid(), None);
    assert_eq!(volume.unmount().unwrap(), Unmounted::Cleanly, "idempotent");
}

#[test]
fn a_panicking_test_leaves_no_mount_and_no_process() {
    let seen = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let volume = JuiceFs::start().unwrap();
        std::fs::write(volume.mountpoint().join("x"), b"x").unwrap();
        let _cwd_like = std::fs::File::open(volume.mountpoint()).unwrap();
        *seen.lock().unwrap() = Some((volume.mountpoint().to_owned(), volume.mount_pid().unwrap()));
        panic!("the test fails with the volume in use");
    });
    assert!(result.is_err());
    let (mnt, pid) = seen.lock().unwrap().take().unwrap();
    assert_eq!(mount_type(&mnt).unwrap(), None);
    assert!(!alive(pid), "juicefs mount {pid} still runs");
    assert!(!mnt.exists(), "the volume's directory was not removed");
}
