//! Decoding the IDX format used by MNIST and Fashion-MNIST (already gunzipped).
//!
//! An IDX file is a big-endian header (two zero bytes, a type byte, a dimension count, then
//! one `u32` size per dimension) followed by the raw values. Only the two unsigned-byte forms
//! used for images (3 dimensions) and labels (1 dimension) are supported. Sizes in the header
//! are checked against the actual number of bytes before anything is allocated, so a corrupt
//! or hostile header cannot trigger a huge allocation.

use crate::error::{DatasetError, Result};

/// Magic number of an unsigned-byte, 3-dimensional IDX file (images).
const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte, 1-dimensional IDX file (labels).
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Decodes an IDX3 image file into `(count, rows, cols, pixels)`, pixels scaled to `[0, 1]`
/// by dividing by 255 and stored image after image, row-major.
pub fn read_idx_images(bytes: &[u8]) -> Result<(usize, usize, usize, Vec<f32>)> {
    let what = "idx image file";
    let header = read_header(bytes, IMAGES_MAGIC, 3, what)?;
    let (count, rows, cols) = (header[0], header[1], header[2]);
    if rows == 0 || cols == 0 {
        return Err(format_err(
            what,
            format!("image size {rows}x{cols} is empty"),
        ));
    }
    let body = &bytes[16..];
    // Checked separately so callers can compute `rows * cols` freely even when count is 0
    // (only reachable where usize is 32 bits).
    if rows.checked_mul(cols).is_none() {
        return Err(format_err(
            what,
            format!("image size {rows}x{cols} overflows"),
        ));
    }
    let expected = count.checked_mul(rows).and_then(|n| n.checked_mul(cols));
    if expected != Some(body.len()) {
        return Err(format_err(
            what,
            format!(
                "header announces {count} images of {rows}x{cols} pixels but {} pixel bytes follow",
                body.len()
            ),
        ));
    }
    let pixels = body.iter().map(|&b| f32::from(b) / 255.0).collect();
    Ok((count, rows, cols, pixels))
}

/// Decodes an IDX1 label file into one label per example.
pub fn read_idx_labels(bytes: &[u8]) -> Result<Vec<u32>> {
    let what = "idx label file";
    let header = read_header(bytes, LABELS_MAGIC, 1, what)?;
    let count = header[0];
    let body = &bytes[8..];
    if body.len() != count {
        return Err(format_err(
            what,
            format!(
                "header announces {count} labels but {} bytes follow",
                body.len()
            ),
        ));
    }
    Ok(body.iter().map(|&b| u32::from(b)).collect())
}

/// Checks the magic number and returns the `dims` sizes that follow it.
fn read_header(bytes: &[u8], magic: u32, dims: usize, what: &str) -> Result<Vec<usize>> {
    let header_len = 4 * (dims + 1);
    if bytes.len() < header_len {
        return Err(format_err(
            what,
            format!(
                "{} bytes is shorter than the {header_len}-byte header",
                bytes.len()
            ),
        ));
    }
    let word = |i: usize| {
        let start = 4 * i;
        u32::from_be_bytes([
            bytes[start],
            bytes[start + 1],
            bytes[start + 2],
            bytes[start + 3],
        ])
    };
    let found = word(0);
    if found != magic {
        return Err(format_err(
            what,
            format!("magic number {found:#010x}, expected {magic:#010x}"),
        ));
    }
    // u32 always fits usize on the 32- and 64-bit targets Rust's std supports for us.
    Ok((1..=dims).map(|i| word(i) as usize).collect())
}

fn format_err(what: &str, message: String) -> DatasetError {
    DatasetError::Format {
        what: what.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_file(count: u32, rows: u32, cols: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [IMAGES_MAGIC, count, rows, cols] {
            bytes.extend_from_slice(&word.to_be_bytes());
        }
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn decodes_images_and_labels() {
        let bytes = image_file(2, 1, 2, &[0, 255, 51, 102]);
        let (n, rows, cols, pixels) = read_idx_images(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((n, rows, cols), (2, 1, 2));
        assert_eq!(pixels, vec![0.0, 1.0, 0.2, 0.4]);

        let mut labels = LABELS_MAGIC.to_be_bytes().to_vec();
        labels.extend_from_slice(&3u32.to_be_bytes());
        labels.extend_from_slice(&[9, 0, 4]);
        assert_eq!(read_idx_labels(&labels).ok(), Some(vec![9, 0, 4]));
    }

    #[test]
    fn rejects_bad_magic_truncation_and_absurd_sizes() {
        let good = image_file(2, 1, 2, &[0, 1, 2, 3]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..10].to_vec(), "shorter than"),
            (good[..19].to_vec(), "3 pixel bytes"),
            ([good.clone(), vec![7]].concat(), "5 pixel bytes"),
            (
                image_file(u32::MAX, u32::MAX, u32::MAX, &[]),
                "header announces",
            ),
            (image_file(1, 0, 5, &[]), "empty"),
            (
                {
                    let mut bad = good.clone();
                    bad[2] = 0x09;
                    bad
                },
                "magic number 0x00000903",
            ),
        ];
        for (bytes, needle) in cases {
            let message = read_idx_images(&bytes)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
        // An image file is not a label file.
        assert!(read_idx_labels(&good).is_err());
        assert!(read_idx_labels(&[0, 0, 8, 1, 0, 0, 0, 5, 1]).is_err());
        assert!(read_idx_labels(&[]).is_err());
    }
}
