//! File naming: where the active file and the rotated files of one log live, and their chain
//! order.
//!
//! The active file is the configured path, e.g. `audit.jsonl`. Rotation renames it to
//! `<stem>-<seq of its first record, 20 digits>.<ext>`, e.g. `audit-00000000000000000001.jsonl`.
//! Twenty digits hold any `u64`, so names sort like their seq; and `-` sorts before `.`, so a
//! plain `ls` lists the rotated files in chain order with the active file last.

use std::{
    ffi::OsStr,
    io,
    path::{Path, PathBuf},
};

/// Name of the active file when [`log_files`] is given a directory.
pub const DEFAULT_FILE_NAME: &str = "audit.jsonl";

/// Digits of the seq in a rotated file's name.
const SEQ_DIGITS: usize = 20;

/// The directory holding `active`'s files (`.` for a bare file name).
pub(crate) fn parent_dir(active: &Path) -> PathBuf {
    match active.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Stem and extension of the active file (`audit`, `Some("jsonl")`).
fn stem_ext(active: &Path) -> Option<(&str, Option<&str>)> {
    let stem = active.file_stem().and_then(OsStr::to_str)?;
    let ext = match active.extension() {
        Some(e) => Some(e.to_str()?),
        None => None,
    };
    Some((stem, ext))
}

/// The name the active file gets when rotated, given the seq of its first record.
pub fn rotated_path(active: &Path, first_seq: u64) -> Option<PathBuf> {
    let (stem, ext) = stem_ext(active)?;
    let name = match ext {
        Some(ext) => format!("{stem}-{first_seq:0SEQ_DIGITS$}.{ext}"),
        None => format!("{stem}-{first_seq:0SEQ_DIGITS$}"),
    };
    Some(parent_dir(active).join(name))
}

/// The first seq encoded in a rotated file name of `active`'s log, if `name` is one.
fn rotated_seq(name: &str, stem: &str, ext: Option<&str>) -> Option<u64> {
    let rest = name.strip_prefix(stem)?.strip_prefix('-')?;
    let digits = match ext {
        Some(ext) => rest.strip_suffix(ext)?.strip_suffix('.')?,
        None => rest,
    };
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// All files of a log in chain order: rotated files by first seq, then the active file if it
/// exists. `dir_or_path` is the active file's path, or a directory holding
/// [`DEFAULT_FILE_NAME`]. Fails if the directory cannot be listed.
pub fn log_files(dir_or_path: impl AsRef<Path>) -> io::Result<Vec<PathBuf>> {
    let given = dir_or_path.as_ref();
    let active = if given.is_dir() {
        given.join(DEFAULT_FILE_NAME)
    } else {
        given.to_owned()
    };
    let (stem, ext) = stem_ext(&active).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "audit log path needs a UTF-8 file name",
        )
    })?;
    let mut rotated = Vec::new();
    for entry in std::fs::read_dir(parent_dir(&active))? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(|n| rotated_seq(n, stem, ext)) {
            rotated.push((seq, entry.path()));
        }
    }
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if active.exists() {
        files.push(active);
    }
    Ok(files)
}

/// The chains under `dir`: its own log if it holds one, else one per subdirectory holding a
/// log (a fleet's `audit.path = "…/{instance}/audit.jsonl"`), named by the subdirectory and
/// sorted by name. Empty when there is none.
pub fn chains(dir: &Path) -> io::Result<Vec<(String, Vec<PathBuf>)>> {
    let own = log_files(dir)?;
    if !own.is_empty() {
        return Ok(vec![(dir.display().to_string(), own)]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            let files = log_files(&path)?;
            if !files.is_empty() {
                out.push((path.display().to_string(), files));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_of_instances_holds_one_chain_each() {
        let d = tempfile::tempdir().unwrap();
        for name in ["gw-2", "gw-1", "empty"] {
            std::fs::create_dir(d.path().join(name)).unwrap();
        }
        std::fs::write(d.path().join("gw-1/audit.jsonl"), "").unwrap();
        std::fs::write(d.path().join("gw-2/audit-00000000000000000001.jsonl"), "").unwrap();
        std::fs::write(d.path().join("gw-2/audit.jsonl"), "").unwrap();
        let c = chains(d.path()).unwrap();
        let names: Vec<&str> = c
            .iter()
            .map(|(n, _)| n.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(names, ["gw-1", "gw-2"]);
        assert_eq!(c[1].1.len(), 2);
        // A directory holding a log is that one chain.
        assert_eq!(chains(&d.path().join("gw-1")).unwrap().len(), 1);
        assert!(chains(&d.path().join("empty")).unwrap().is_empty());
    }

    #[test]
    fn rotated_names_sort_in_chain_order() {
        let active = Path::new("/var/log/gw/audit.jsonl");
        let a = rotated_path(active, 9).unwrap();
        let b = rotated_path(active, 10).unwrap();
        assert_eq!(a, Path::new("/var/log/gw/audit-00000000000000000009.jsonl"));
        assert!(a < b);
        assert!(b.to_str().unwrap() < active.to_str().unwrap());
        assert_eq!(
            rotated_seq("audit-00000000000000000010.jsonl", "audit", Some("jsonl")),
            Some(10)
        );
        assert_eq!(rotated_seq("audit-10.jsonl", "audit", Some("jsonl")), None);
        assert_eq!(
            rotated_seq("other-00000000000000000010.jsonl", "audit", Some("jsonl")),
            None
        );
        assert_eq!(
            rotated_path(Path::new("audit"), 1).unwrap(),
            Path::new("./audit-00000000000000000001")
        );
    }
}
