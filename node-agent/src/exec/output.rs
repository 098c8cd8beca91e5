//! Capture of one output stream (stdout or stderr) of a real process.
//!
//! Owns the size cap of the output file (rotate once, keep at most twice the
//! cap on disk) and the in-memory tail reported to the region, which is also
//! what live followers read ([`super::live`]). Must never block the process:
//! the pipe is always drained, even past the cap, and never waits for a
//! follower.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use meridian_proto::v1::LogStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::Tail;
use super::live::{AttemptOutput, Ring};

/// Where the bytes read also go: the attempt's live output (followers read
/// it) or, with nobody to follow, a private ring for the tail.
pub enum Sink {
    Live(Arc<AttemptOutput>, LogStream),
    Private(Ring),
}

impl Sink {
    fn push(&mut self, data: &[u8]) {
        match self {
            Sink::Live(out, stream) => out.write(*stream, data),
            Sink::Private(ring) => ring.push(data),
        }
    }

    fn tail(&self) -> Tail {
        match self {
            Sink::Live(out, stream) => out.tail(*stream),
            Sink::Private(ring) => ring.tail(),
        }
    }
}

/// The user (uid, gid) given the output files, so the task's user can read
/// them; `None`: they stay the agent's.
pub type Owner = Option<(u32, u32)>;

/// Drains `reader` into `path` (rotated to `path.1` whenever it reaches
/// `file_cap` bytes) and into `sink`, and returns the last bytes seen.
/// The file is created with the first byte: a task that prints nothing
/// (most tiny tasks) costs no inode. Disk errors stop the file copy but
/// never the draining.
pub async fn capture<R: AsyncRead + Unpin>(
    mut reader: R,
    path: PathBuf,
    file_cap: u64,
    owner: Owner,
    mut sink: Sink,
) -> Tail {
    let mut file = FileCopy::NotYet;
    let mut written: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        sink.push(chunk);
        if file_cap > 0 && written + n as u64 > file_cap && written > 0 {
            if let FileCopy::Open(f) = &mut file {
                let _ = f.flush().await;
            }
            let _ = tokio::fs::rename(&path, rotated(&path)).await;
            file = FileCopy::NotYet;
            written = 0;
        }
        if matches!(file, FileCopy::NotYet) {
            file = open(&path, owner)
                .await
                .map_or(FileCopy::Failed, FileCopy::Open);
        }
        if let FileCopy::Open(f) = &mut file {
            if f.write_all(chunk).await.is_err() {
                file = FileCopy::Failed;
            } else {
                written += n as u64;
            }
        }
    }
    if let FileCopy::Open(mut f) = file {
        let _ = f.flush().await;
    }
    sink.tail()
}

/// Where the copy to disk stands.
enum FileCopy {
    /// No byte yet since the start or the last rotation.
    NotYet,
    Open(tokio::fs::File),
    /// The disk refused: the stream is only kept in memory from here on.
    Failed,
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
    use meridian_proto::limits::MAX_OUTPUT_TAIL_BYTES;

    #[tokio::test]
    async fn output_past_the_cap_rotates_the_file_and_keeps_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sink = Sink::Private(Ring::default());
        let tail = capture(&data[..], path.clone(), 30_000, None, sink).await;
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
        let sink = Sink::Private(Ring::default());
        let tail = capture(&b"hello\n"[..], dir.path().join("o"), 1024, None, sink).await;
        assert_eq!(tail.bytes, b"hello\n");
        assert!(!tail.truncated);
        assert_eq!(std::fs::read(dir.path().join("o")).unwrap(), b"hello\n");
    }

    #[tokio::test]
    async fn a_stream_that_prints_nothing_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::Private(Ring::default());
        let tail = capture(&b""[..], dir.path().join("o"), 1024, None, sink).await;
        assert!(tail.bytes.is_empty());
        assert!(!dir.path().join("o").exists());
    }
}
