//! Reading a labelled dataset from CSV.
//!
//! Format: one example per row, feature columns first and an integer class label last. A
//! header row is optional and detected automatically: if any field of the first row is not a
//! number, that row is a header. `num_classes` is the largest label plus one. Surrounding
//! whitespace in fields is ignored.
//!
//! The parser must never panic, whatever the input (it is a fuzzing target), and every
//! rejection names the line and column so the user can fix the file.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::dataset::Dataset;
use crate::error::{DatasetError, Result};

/// Largest accepted label. A model allocates one output per class, so a stray huge label
/// (a typo, or a regression target by mistake) must fail here rather than as an absurd
/// allocation later.
pub const MAX_LABEL: u32 = 65_535;

/// Reads a dataset from the CSV file at `path` (see the module docs for the format).
pub fn read_csv(path: &Path) -> Result<Dataset> {
    let file = File::open(path).map_err(|e| DatasetError::io(path, e))?;
    parse_csv_named(BufReader::new(file), &path.display().to_string())
}

/// Parses a dataset from CSV text (see the module docs for the format).
pub fn parse_csv(reader: impl Read) -> Result<Dataset> {
    parse_csv_named(reader, "csv input")
}

/// Parses CSV text; `origin` names the input in error messages.
pub(crate) fn parse_csv_named(reader: impl Read, origin: &str) -> Result<Dataset> {
    let mut rows = csv::ReaderBuilder::new()
        .has_headers(false)
        // Column counts are checked here so the error can say which line and what was expected.
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let parse_err = |line: u64, message: String| DatasetError::Parse {
        origin: origin.to_owned(),
        line,
        message,
    };

    let mut record = csv::StringRecord::new();
    if !read_record(&mut rows, &mut record, origin)? {
        return Err(parse_err(
            1,
            "empty file: expected rows of features then a label".into(),
        ));
    }
    let width = record.len();
    if width < 2 {
        return Err(parse_err(
            line_of(&record),
            format!("found {width} column; need at least one feature column and a label column"),
        ));
    }
    let has_header = record.iter().any(|field| field.parse::<f64>().is_err());
    let header_line = has_header.then(|| line_of(&record));

    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut pending = !has_header;
    loop {
        if !pending && !read_record(&mut rows, &mut record, origin)? {
            break;
        }
        pending = false;
        let line = line_of(&record);
        if record.len() != width {
            return Err(parse_err(
                line,
                format!("expected {width} columns, found {}", record.len()),
            ));
        }
        for (col, field) in record.iter().take(width - 1).enumerate() {
            features.push(
                parse_feature(field)
                    .map_err(|m| parse_err(line, format!("column {}: {m}", col + 1)))?,
            );
        }
        let label_field = record.get(width - 1).unwrap_or_default();
        labels.push(
            parse_label(label_field)
                .map_err(|m| parse_err(line, format!("label column {width}: {m}")))?,
        );
    }

    if labels.is_empty() {
        return Err(parse_err(
            header_line.unwrap_or(1),
            "no data rows after the header".into(),
        ));
    }
    let num_classes = labels.iter().max().map_or(1, |&max| max as usize + 1);
    Dataset::new(features, labels, width - 1, num_classes, None)
}

/// Reads the next record, turning CSV-level failures (bad UTF-8, I/O) into parse errors.
fn read_record<R: Read>(
    rows: &mut csv::Reader<R>,
    record: &mut csv::StringRecord,
    origin: &str,
) -> Result<bool> {
    loop {
        let more = rows.read_record(record).map_err(|e| DatasetError::Parse {
            origin: origin.to_owned(),
            line: e.position().map_or(0, csv::Position::line),
            message: e.to_string(),
        })?;
        // The csv crate skips empty lines but not whitespace-only ones, which trimming turns
        // into a single empty field; treat those as blank lines too.
        let blank = record.len() == 1 && record.get(0).is_some_and(str::is_empty);
        if !more || !blank {
            return Ok(more);
        }
    }
}

fn line_of(record: &csv::StringRecord) -> u64 {
    record.position().map_or(0, csv::Position::line)
}

fn parse_feature(field: &str) -> std::result::Result<f32, String> {
    let value: f32 = field
        .parse()
        .map_err(|_| format!("{field:?} is not a number"))?;
    if value.is_finite() {
        Ok(value)
    } else {
        // Also catches finite decimals beyond f32 range, which parse to infinity.
        Err(format!("{field:?} is not a finite 32-bit number"))
    }
}

fn parse_label(field: &str) -> std::result::Result<u32, String> {
    let value = match field.parse::<u64>() {
        Ok(value) => value,
        Err(_) => {
            // Accept integral floats such as "3.0", which spreadsheet exports produce.
            let value: f64 = field
                .parse()
                .map_err(|_| format!("{field:?} is not an integer class label"))?;
            if !value.is_finite() {
                return Err(format!("{field:?} is not a finite class label"));
            }
            if value < 0.0 {
                return Err(format!("{field:?} is negative; labels start at 0"));
            }
            if value.fract() != 0.0 {
                return Err(format!("{field:?} is not an integer class label"));
            }
            if value > f64::from(MAX_LABEL) {
                return Err(format!(
                    "{field:?} is larger than the maximum label {MAX_LABEL}"
                ));
            }
            // Integral and within 0..=MAX_LABEL, so the conversion is exact.
            value as u64
        }
    };
    u32::try_from(value)
        .ok()
        .filter(|&label| label <= MAX_LABEL)
        .ok_or_else(|| format!("{field:?} is larger than the maximum label {MAX_LABEL}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn parse(text: &str) -> Result<Dataset> {
        parse_csv(text.as_bytes())
    }

    fn error_of(text: &str) -> String {
        match parse(text) {
            Ok(data) => panic!("accepted {text:?} as {data:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn good_file_with_and_without_header() {
        let with = parse("a,b,label\n0.5,1,2\n-1e3, 2 ,0\n").unwrap_or_else(|e| panic!("{e}"));
        let without = parse("0.5,1,2\n-1e3,2,0\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(with, without);
        assert_eq!(with.features, vec![0.5, 1.0, -1000.0, 2.0]);
        assert_eq!(with.labels, vec![2, 0]);
        assert_eq!((with.num_features, with.num_classes), (2, 3));
        assert_eq!(with.image_shape, None);
    }

    #[test]
    fn integral_float_labels_are_accepted() {
        let data = parse("1,3.0\n2,0\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(data.labels, vec![3, 0]);
    }

    #[test]
    fn read_csv_reads_a_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("d.csv");
        let mut file = File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        write!(file, "x,y\n1,0\n2,1\n3,x\n").unwrap_or_else(|e| panic!("{e}"));
        let err = read_csv(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("d.csv:4:"), "{err}");
        let missing = read_csv(&dir.path().join("nope.csv"));
        assert!(matches!(missing, Err(DatasetError::Io { .. })));
    }

    #[test]
    fn bad_inputs_give_located_errors() {
        let cases: &[(&str, &[&str])] = &[
            ("", &["empty"]),
            ("   \n\n", &["empty"]),
            ("a,b,label\n", &["no data rows"]),
            ("1,2,0\n3,0\n", &[":2:", "expected 3 columns, found 2"]),
            ("1,2,0\n3,4,5,0\n", &[":2:", "found 4"]),
            ("1,2,0\n1,NaN,0\n", &[":2:", "column 2", "finite"]),
            ("1,2,0\ninf,2,0\n", &[":2:", "column 1", "finite"]),
            ("1,1e300,0\n", &[":1:", "finite"]),
            ("h1,h2\n1,-1\n", &[":2:", "negative"]),
            ("1,2.5\n", &[":1:", "not an integer"]),
            ("h,l\n1,cat\n", &[":2:", "not an integer"]),
            ("1,cat\n", &["no data rows"]),
            ("1,nan\n", &[":1:", "not a finite"]),
            ("1,99999999999\n", &[":1:", "maximum label"]),
            ("1,1e9\n", &[":1:", "maximum label"]),
            ("x,1\n1,abc,0\n", &[":2:", "expected 2 columns"]),
            ("5\n", &["at least one feature"]),
            ("f,label\n1,0\n2,\n", &[":3:", "label"]),
        ];
        for (text, needles) in cases {
            let message = error_of(text);
            for needle in *needles {
                assert!(
                    message.contains(needle),
                    "{text:?}: {message:?} lacks {needle:?}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "[0-9a-z.,+\\- \n\"]{0,80}") {
            // Either outcome is fine; a panic fails the test.
            if let Ok(data) = parse(&text) {
                proptest::prop_assert_eq!(data.features.len(), data.len() * data.num_features);
            }
        }
    }

    #[test]
    fn invalid_utf8_is_an_error_not_a_panic() {
        assert!(parse_csv(&b"1,0\n\xff\xfe,1\n"[..]).is_err());
    }
}
