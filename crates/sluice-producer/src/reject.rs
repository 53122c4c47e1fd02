//! The reject file: where a log the queue refuses for good is kept, fsynced, with the reason.

use sluice_common::catalog;
use sluice_common::time::epoch_ms;

use crate::send::Refused;

/// Where logs the queue refuses for good are kept.
pub(crate) struct RejectFile {
    pub(crate) path: Option<std::path::PathBuf>,
}

impl RejectFile {
    /// Keeps a refused log (fsynced, with the directory entry of a new file) and says so at
    /// ERROR; never loses it silently. Returns where it is, for the answer to the sender.
    pub(crate) fn keep(&self, r: &Refused, group: Option<&str>) -> String {
        metrics::counter!(catalog::PRODUCER_LOGS_TOTAL, "outcome" => "rejected").increment(1);
        let Some(path) = &self.path else {
            tracing::error!(reason = %r.reason, log = %r.text, "the queue refused a log for good; set producer.reject_file (or a spool) to keep such logs in a file");
            return "it is written only to sluice's ERROR log (set producer.reject_file to keep such logs in a file)".into();
        };
        let mut line = serde_json::json!({
            "at_ms": epoch_ms(),
            "reason": r.reason,
            "group": group,
            "log": r.text,
        })
        .to_string();
        line.push('\n');
        let written = (|| -> std::io::Result<()> {
            use std::io::Write as _;
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir {
                std::fs::create_dir_all(dir)?;
            }
            let new = !path.exists();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            let before = f.metadata()?.len();
            // One write of the whole line; on failure (a full disk) the file is cut back, so
            // a half line never glues itself to the next record.
            if let Err(e) = f.write_all(line.as_bytes()).and_then(|()| f.sync_data()) {
                let _ = f.set_len(before);
                return Err(e);
            }
            if new && let Some(dir) = dir {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        match written {
            Ok(()) => {
                tracing::error!(reason = %r.reason, bytes = r.text.len(), file = %path.display(), "the queue refused a log for good; it is kept in the reject file");
                format!("it is kept in the reject file {}", path.display())
            }
            Err(e) => {
                tracing::error!(reason = %r.reason, error = %e, file = %path.display(), log = %r.text, "the queue refused a log for good and the reject file cannot be written");
                format!(
                    "the reject file {} could not be written ({e}): the log is only in sluice's ERROR log",
                    path.display()
                )
            }
        }
    }
}
