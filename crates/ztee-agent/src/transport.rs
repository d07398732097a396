//! The byte stream to the host: a virtio-serial port named [`ztee_wire::VIRTIO_PORT_NAME`].

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PORTS_DIR: &str = "/sys/class/virtio-ports";
const PORT_WAIT: Duration = Duration::from_secs(10);
/// How often to look again while the host end is not connected (reads return 0 then).
const DISCONNECTED_POLL: Duration = Duration::from_millis(5);

/// Finds and opens the agent's port, waiting briefly for the device to be probed.
pub fn open_virtio_port() -> Result<File, String> {
    let started = Instant::now();
    loop {
        if let Some(path) = find_port()? {
            return OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("open {}: {e}", path.display()));
        }
        if started.elapsed() > PORT_WAIT {
            return Err(format!(
                "no virtio-serial port named {} after {PORT_WAIT:?}",
                ztee_wire::VIRTIO_PORT_NAME
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn find_port() -> Result<Option<PathBuf>, String> {
    let entries = match fs::read_dir(PORTS_DIR) {
        Ok(entries) => entries,
        Err(_) => return Ok(None),
    };
    for entry in entries.flatten() {
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == ztee_wire::VIRTIO_PORT_NAME {
            return Ok(Some(PathBuf::from("/dev").join(entry.file_name())));
        }
    }
    Ok(None)
}

/// Reads what is available; returns 0 while the host end is disconnected (after pausing a
/// little, so the caller can reset its session and try again).
pub fn read_some(port: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    match port.read(buf) {
        Ok(0) => {
            std::thread::sleep(DISCONNECTED_POLL);
            Ok(0)
        }
        other => other,
    }
}
