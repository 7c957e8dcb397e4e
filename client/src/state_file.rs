//! What a client keeps on disk between runs of its process (`shoal client --state-dir`):
//! SCAFFOLD's control variate, top-k's left-out residual. One file per kind and client,
//! written whole and atomically (a temporary file beside it, synced, renamed over it), read
//! back only if it is intact: magic, SHA-256 of the body, the body in bincode.

use crate::error::{ClientError, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tracing::warn;

/// The file of kind `extension` (e.g. "scaffold") for client `id` in `dir`: the id with
/// anything but letters, digits, `-`, `_` and `.` replaced (each file names its client inside
/// too, so two ids mapped to one name cannot mix).
pub fn state_file(dir: &Path, id: &str, extension: &str) -> PathBuf {
    let safe: String = id
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || "-_.".contains(ch) {
                ch
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}.{extension}"))
}

/// Writes `value` to `path` behind `magic`, atomically.
pub(crate) fn save<T: Serialize>(path: &Path, magic: &[u8; 8], value: &T) -> Result<()> {
    let fail = |e: std::io::Error| {
        ClientError::State(format!("keeping client state in {}: {e}", path.display()))
    };
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| ClientError::State(format!("encoding client state: {e}")))?;
    let mut bytes = magic.to_vec();
    bytes.extend_from_slice(&Sha256::digest(&body));
    bytes.extend_from_slice(&body);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    std::io::Write::write_all(&mut file, &bytes).map_err(fail)?;
    file.as_file().sync_all().map_err(fail)?;
    file.persist(path).map_err(|e| fail(e.error))?;
    // The rename itself must survive a power cut.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)?;
    Ok(())
}

/// Reads what [`save`] wrote at `path`: `None` if there is no file. A file that cannot be
/// read back whole is set aside (renamed with `.corrupt` appended, never deleted) with a
/// warning, and the
/// state starts afresh.
pub(crate) fn load<T: DeserializeOwned>(path: &Path, magic: &[u8; 8]) -> Option<T> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read client state; starting afresh");
            return None;
        }
    };
    match parse(&bytes, magic) {
        Ok(value) => Some(value),
        Err(why) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".corrupt");
            let aside = PathBuf::from(aside);
            let moved = std::fs::rename(path, &aside);
            warn!(
                file = %path.display(),
                aside = %aside.display(),
                moved = moved.is_ok(),
                %why,
                "client state file is damaged; set aside, starting afresh"
            );
            None
        }
    }
}

/// The value behind `magic` in `bytes`, refusing anything [`save`] did not write.
pub(crate) fn parse<T: DeserializeOwned>(
    bytes: &[u8],
    magic: &[u8; 8],
) -> std::result::Result<T, String> {
    let rest = bytes
        .strip_prefix(magic.as_slice())
        .ok_or("not a client state file of this kind")?;
    if rest.len() < 32 {
        return Err("truncated".into());
    }
    let (digest, body) = rest.split_at(32);
    if Sha256::digest(body).as_slice() != digest {
        return Err("checksum mismatch".into());
    }
    let config = bincode::config::standard().with_limit::<{ 1 << 32 }>();
    let (value, used) =
        bincode::serde::decode_from_slice(body, config).map_err(|e| e.to_string())?;
    if used != body.len() {
        return Err("trailing bytes".into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_restart_and_damage_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_file(dir.path(), "edge/7", "test");
        assert_eq!(path.file_name().unwrap(), "edge_7.test");
        assert_eq!(load::<Vec<f32>>(&path, b"SHOALT01"), None);
        save(&path, b"SHOALT01", &vec![1.0f32, 2.0]).unwrap();
        assert_eq!(load(&path, b"SHOALT01"), Some(vec![1.0f32, 2.0]));

        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            parse::<Vec<f32>>(&bytes, b"SHOALT01")
                .unwrap_err()
                .contains("checksum")
        );
        assert_eq!(load::<Vec<f32>>(&path, b"SHOALT01"), None);
        assert!(!path.exists());
        let aside = dir.path().join("edge_7.test.corrupt");
        assert_eq!(std::fs::read(aside).unwrap(), bytes);
        assert!(parse::<Vec<f32>>(b"SHOALT01short", b"SHOALT01").is_err());
        let other_kind = [b"SHOALT02".as_slice(), &bytes[8..]].concat();
        assert!(parse::<Vec<f32>>(&other_kind, b"SHOALT01").is_err());
    }
}
