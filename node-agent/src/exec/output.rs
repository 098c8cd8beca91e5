//! Capture of one output stream (stdout or stderr) of a real process.
//!
//! Owns the size cap of the output file (rotate once, keep at most twice the
//! cap on disk) and the in-memory tail reported to the region. Must never
//! block the process: the pipe is always drained, even past the cap.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use meridian_proto::limits::MAX_OUTPUT_TAIL_BYTES;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::Tail;

/// The user (uid, gid) given the output files, so the task's user can read
/// them; `None`: they stay the agent's.
pub type Owner = Option<(u32, u32)>;

/// Drains `reader` into `path` (rotated to `path.1` whenever it reaches
/// `file_cap` bytes) and returns the last bytes seen. Disk errors stop the
/// file copy but never the draining.
pub async fn capture<R: AsyncRead + Unpin>(
    mut reader: R,
    path: PathBuf,
    file_cap: u64,
    owner: Owner,
) -> Tail {
    let mut file = open(&path, owner).await;
    let mut written: u64 = 0;
    let mut total: u64 = 0;
    let mut tail: VecDeque<u8> = VecDeque::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        total += n as u64;
        tail.extend(chunk);
        let excess = tail.len().saturating_sub(MAX_OUTPUT_TAIL_BYTES);
        tail.drain(..excess);
        if file_cap > 0 && written + n as u64 > file_cap {
            if let Some(mut f) = file.take() {
                let _ = f.flush().await;
            }
            let _ = tokio::fs::rename(&path, rotated(&path)).await;
            file = open(&path, owner).await;
            written = 0;
        }
        if let Some(f) = file.as_mut() {
            if f.write_all(chunk).await.is_err() {
                file = None;
            } else {
                written += n as u64;
            }
        }
    }
    if let Some(mut f) = file {
        let _ = f.flush().await;
    }
    let bytes: Vec<u8> = tail.into_iter().collect();
    Tail {
        truncated: total > bytes.len() as u64,
        bytes,
    }
}

/// Name of the rotated file of `path`.
pub fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

async fn open(path: &Path, owner: Owner) -> Option<tokio::fs::File> {
    match tokio::fs::File::create(path).await {
        Ok(f) => {
            if let Some((uid, gid)) = owner
                && let Err(e) = std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot give the output file to the task's user");
            }
            Some(f)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot create output file; output is only kept in memory");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_past_the_cap_rotates_the_file_and_keeps_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let tail = capture(&data[..], path.clone(), 30_000, None).await;
        assert!(tail.truncated);
        assert_eq!(tail.bytes.len(), MAX_OUTPUT_TAIL_BYTES);
        assert_eq!(&tail.bytes[..], &data[data.len() - MAX_OUTPUT_TAIL_BYTES..]);
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(rotated(&path)).unwrap().len();
        assert!(cur <= 30_000 && old <= 30_000, "cur {cur} old {old}");
    }

    #[tokio::test]
    async fn short_output_is_kept_whole_and_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let tail = capture(&b"hello\n"[..], dir.path().join("o"), 1024, None).await;
        assert_eq!(tail.bytes, b"hello\n");
        assert!(!tail.truncated);
    }
}
