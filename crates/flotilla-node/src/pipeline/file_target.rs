//! Delivery as newline-delimited JSON, one line per change, to a file or stdout. A file is its
//! own cursor: each batch is written and flushed (fsync) before the changelog is trimmed, and
//! at start the last complete line says where delivery stopped; a torn last line (a crash in
//! the middle of a write) is cut off. Stdout cannot be read back: delivery there starts from
//! the oldest change still in the changelog (at least once).

use super::target::{Change, Delivery, TargetError};
use flotilla_store::changelog::ChangeOp;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

pub struct FileTarget {
    file: Option<(PathBuf, File)>,
}

fn io(path: &std::path::Path, what: &str) -> impl Fn(std::io::Error) -> TargetError {
    let p = path.display().to_string();
    let what = what.to_string();
    move |e| TargetError::Failed(format!("{what} {p}: {e}"))
}

/// Where the file's last complete line ends, and that line.
fn last_line(file: &mut File, len: u64) -> std::io::Result<(u64, Option<String>)> {
    let mut end = len;
    let mut tail: Vec<u8> = Vec::new();
    // Read backwards in chunks until a complete last line is found.
    while end > 0 {
        let start = end.saturating_sub(64 << 10);
        let mut chunk = vec![0u8; (end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        end = start;
        // The complete part ends at the last newline.
        if let Some(nl) = tail.iter().rposition(|&b| b == b'\n') {
            let complete_end = end + nl as u64 + 1;
            let body = &tail[..nl];
            if let Some(prev) = body.iter().rposition(|&b| b == b'\n') {
                return Ok((
                    complete_end,
                    Some(String::from_utf8_lossy(&body[prev + 1..]).into_owned()),
                ));
            }
            if end == 0 {
                return Ok((
                    complete_end,
                    Some(String::from_utf8_lossy(body).into_owned()),
                ));
            }
            // The line starts in an earlier chunk: keep reading.
        }
    }
    Ok((0, None))
}

impl FileTarget {
    pub fn open(path: Option<PathBuf>, d: &Delivery) -> Result<(FileTarget, i64), TargetError> {
        let Some(path) = path else {
            return Ok((FileTarget { file: None }, -1));
        };
        // The allow-list checked the directory; a symbolic link in its place of the file could
        // point anywhere, so the file itself is never a link.
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    TargetError::Refused(format!(
                        "{} is a symbolic link: pipelines write only to regular files, never \
                         through links",
                        path.display()
                    ))
                } else {
                    io(&path, "cannot open")(e)
                }
            })?;
        let len = file.metadata().map_err(io(&path, "cannot read"))?.len();
        let (complete, line) = last_line(&mut file, len).map_err(io(&path, "cannot read"))?;
        if complete < len {
            tracing::warn!(
                "cutting a torn last line ({} bytes) off {}",
                len - complete,
                path.display()
            );
            file.set_len(complete).map_err(io(&path, "cannot cut"))?;
        }
        let cursor = match line {
            None => 0,
            Some(l) => {
                let v: serde_json::Value = serde_json::from_str(&l).map_err(|e| {
                    TargetError::Refused(format!(
                        "{}: its last line is not a pipeline change ({e}); deliver to a new file",
                        path.display()
                    ))
                })?;
                if v["pipeline"] != d.pipeline.as_str() || v["cluster"] != d.cluster_id.as_str() {
                    return Err(TargetError::Refused(format!(
                        "{} holds changes of pipeline {} of cluster {}, not of pipeline {} of \
                         this cluster: deliver to another file",
                        path.display(),
                        v["pipeline"],
                        v["cluster"],
                        d.pipeline
                    )));
                }
                super::target::check_incarnation(
                    d,
                    v["incarnation"].as_str(),
                    &path.display().to_string(),
                )?;
                v["seq"].as_i64().unwrap_or(0)
            }
        };
        Ok((
            FileTarget {
                file: Some((path, file)),
            },
            cursor,
        ))
    }

    pub fn deliver(&mut self, d: &Delivery, changes: &[Change]) -> Result<(), TargetError> {
        let mut out = String::with_capacity(changes.len() * 128);
        for c in changes {
            let row = if c.raw.contains("\"$hex\"") {
                serde_json::Value::Object(c.row.clone()).to_string()
            } else {
                c.raw.clone()
            };
            out.push_str(&format!(
                "{{\"pipeline\":{},\"cluster\":{},\"incarnation\":{},\"seq\":{},\"lsn\":{},\"table\":{},\"op\":\"{}\",\"row\":{}}}\n",
                serde_json::Value::from(d.pipeline.as_str()),
                serde_json::Value::from(d.cluster_id.as_str()),
                serde_json::Value::from(d.incarnation.as_str()),
                c.seq,
                c.lsn,
                serde_json::Value::from(d.table.as_str()),
                match c.op {
                    ChangeOp::Upsert => "upsert",
                    ChangeOp::Delete => "delete",
                },
                row
            ));
        }
        match &mut self.file {
            None => {
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(out.as_bytes())
                    .and_then(|_| stdout.flush())
                    .map_err(|e| TargetError::Failed(format!("stdout: {e}")))
            }
            Some((path, file)) => {
                file.write_all(out.as_bytes())
                    .map_err(io(path, "cannot write"))?;
                file.sync_data().map_err(io(path, "cannot flush"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery() -> Delivery {
        Delivery {
            pipeline: "p".into(),
            cluster_id: "c".into(),
            incarnation: "i".into(),
            table: "t".into(),
            columns: vec!["id".into()],
            key: vec!["id".into()],
            apply_sql: None,
        }
    }

    /// A link put where the file goes (found by an outside probe) is refused, and what it
    /// points to is neither created nor written.
    #[test]
    fn a_symbolic_link_in_place_of_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.txt");
        let link = dir.path().join("out.ndjson");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let err = FileTarget::open(Some(link.clone()), &delivery())
            .err()
            .expect("refused");
        assert!(
            matches!(&err, TargetError::Refused(m) if m.contains("symbolic link")),
            "{err:?}"
        );
        assert!(!elsewhere.exists());
        // A regular file there is opened as before.
        std::fs::remove_file(&link).unwrap();
        let (_, cursor) = FileTarget::open(Some(link), &delivery()).unwrap();
        assert_eq!(cursor, 0);
    }
}
