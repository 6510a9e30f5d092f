//! Reading an upload as rows, streamed: CSV with a header row, or a JSON
//! array of objects; a file that cannot be read at all is a [`FileError`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::de::{self, SeqAccess, Visitor};
use serde_json::Value;
use sitesync_model::import::{Columns, Field, HeaderError, Mapping, RowError, RowInput, field_of};

use crate::jobs::Failure;

use super::*;

/// A file that cannot be imported at all.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file is empty (0 bytes)")]
    Empty,
    #[error("{0}")]
    Header(#[from] HeaderError),
    #[error("header column {column} is not valid UTF-8 text; save the sheet as \"CSV UTF-8\"")]
    HeaderEncoding { column: usize },
    #[error("the CSV cannot be read: {0}")]
    Csv(String),
    #[error("the JSON cannot be read at line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("cannot read the uploaded file: {0}")]
    Io(#[from] std::io::Error),
}

impl From<FileError> for Failure {
    fn from(e: FileError) -> Self {
        Failure::new(e.to_string())
    }
}

/// Calls `each` with every data row in order — its row number, its cells as
/// typed input, and how many bytes of the file are read — and returns how
/// many rows there were. Blank CSV rows are skipped.
pub fn read_rows(
    path: &Path,
    format: Format,
    mapping: &Mapping,
    mut each: impl FnMut(u64, RowInput, u64) -> Result<(), Failure>,
) -> Result<u64, Failure> {
    let file = File::open(path).map_err(FileError::Io)?;
    if file.metadata().map_err(FileError::Io)?.len() == 0 {
        return Err(FileError::Empty.into());
    }
    match format {
        Format::Csv => read_csv(file, mapping, &mut each),
        Format::Json => read_json(file, mapping, &mut each),
    }
}

pub(super) fn read_csv(
    file: File,
    mapping: &Mapping,
    each: &mut dyn FnMut(u64, RowInput, u64) -> Result<(), Failure>,
) -> Result<u64, Failure> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 16, file));
    let mut record = csv::ByteRecord::new();
    let csv_err = |e: csv::Error| FileError::Csv(e.to_string());
    if !rdr.read_byte_record(&mut record).map_err(csv_err)? {
        return Err(FileError::Header(HeaderError::NoHeader).into());
    }
    let mut headers = Vec::with_capacity(record.len());
    for (i, cell) in record.iter().enumerate() {
        let text = std::str::from_utf8(cell).map_err(|_| FileError::HeaderEncoding { column: i + 1 })?;
        // Excel's "CSV UTF-8" starts with a byte-order mark.
        headers.push(crate::export::unescape_formula(text.trim_start_matches('\u{feff}')).to_owned());
    }
    let columns = Columns::new(headers, mapping).map_err(FileError::Header)?;
    let mut row = 1;
    let mut rows = 0;
    while rdr.read_byte_record(&mut record).map_err(csv_err)? {
        row += 1;
        if record.iter().all(|c| c.iter().all(u8::is_ascii_whitespace)) {
            continue;
        }
        rows += 1;
        let cells: Vec<std::borrow::Cow<'_, str>> = record.iter().map(String::from_utf8_lossy).collect();
        // An exported file's formula-looking text came out quoted.
        let mut input = columns.row(cells.iter().map(|c| crate::export::unescape_formula(c)));
        for (i, cell) in record.iter().enumerate().take(columns.len()) {
            if std::str::from_utf8(cell).is_err() {
                input.errors.push(RowError::new(
                    Some(columns.header(i)),
                    "bad_encoding",
                    "not valid UTF-8 text; save the sheet as \"CSV UTF-8\"",
                ));
            }
        }
        if record.len() != columns.len() {
            input.errors.push(RowError::new(
                None,
                "ragged_row",
                format!(
                    "the row has {} cells but the header has {}",
                    record.len(),
                    columns.len()
                ),
            ));
        }
        each(row, input, rdr.position().byte())?;
    }
    Ok(rows)
}

/// Counts the bytes the JSON parser has consumed.
pub(super) struct Counting<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// Visits the top-level array one element at a time, so the array is never
/// held whole.
pub(super) struct Elements<'a> {
    mapping: &'a Mapping,
    each: &'a mut dyn FnMut(u64, RowInput, u64) -> Result<(), Failure>,
    read: std::rc::Rc<std::cell::Cell<u64>>,
    /// Why `each` stopped the walk, if it did.
    stopped: &'a mut Option<Failure>,
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of objects, one per component")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut fields: HashMap<String, Field> = HashMap::new();
        let mut n = 0;
        while let Some(value) = seq.next_element::<Value>()? {
            n += 1;
            let input = json_row(value, self.mapping, &mut fields);
            if let Err(f) = (self.each)(n, input, self.read.get()) {
                *self.stopped = Some(f);
                return Err(de::Error::custom("stopped"));
            }
        }
        Ok(n)
    }
}

pub(super) fn read_json(
    file: File,
    mapping: &Mapping,
    each: &mut dyn FnMut(u64, RowInput, u64) -> Result<(), Failure>,
) -> Result<u64, Failure> {
    let read = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut reader = BufReader::with_capacity(
        1 << 16,
        Counting {
            inner: file,
            read: read.clone(),
        },
    );
    // A byte-order mark (editors on Windows write one) is not JSON.
    if reader
        .fill_buf()
        .map_err(FileError::Io)?
        .starts_with("\u{feff}".as_bytes())
    {
        reader.consume(3);
    }
    let mut de = serde_json::Deserializer::from_reader(reader);
    let mut stopped = None;
    let visitor = Elements {
        mapping,
        each,
        read,
        stopped: &mut stopped,
    };
    let result = de::Deserializer::deserialize_seq(&mut de, visitor).and_then(|n| de.end().map(|()| n));
    match (result, stopped) {
        (_, Some(failure)) => Err(failure),
        (Ok(n), None) => Ok(n),
        (Err(e), None) => Err(FileError::Json {
            line: e.line(),
            column: e.column(),
            message: e
                .to_string()
                .split(" at line")
                .next()
                .unwrap_or_default()
                .to_owned(),
        }
        .into()),
    }
}

/// One JSON element as a row: keys are headers (mapping and synonyms
/// apply); an `attributes` object contributes its entries as attributes.
pub(super) fn json_row(value: Value, mapping: &Mapping, fields: &mut HashMap<String, Field>) -> RowInput {
    let mut input = RowInput::default();
    let Value::Object(object) = value else {
        input.errors.push(RowError::new(
            None,
            "not_an_object",
            format!("expected an object (one component), found {}", kind_of(&value)),
        ));
        return input;
    };
    for (key, value) in object {
        if key == "attributes"
            && let Value::Object(attrs) = &value
        {
            for (name, v) in attrs {
                let text = cell_text(&format!("attributes.{name}"), v, &mut input);
                if let Some(text) = text {
                    input.set(
                        &Field::Attribute(name.clone()),
                        &format!("attributes.{name}"),
                        &text,
                    );
                }
            }
            continue;
        }
        let field = fields
            .entry(key.clone())
            .or_insert_with(|| field_of(&key, mapping))
            .clone();
        if field == Field::Ignored {
            continue;
        }
        if let Some(text) = cell_text(&key, &value, &mut input) {
            input.set(&field, &key, &text);
        }
    }
    input
}

pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON value as cell text; null is an empty cell.
pub(super) fn cell_text(key: &str, v: &Value, input: &mut RowInput) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(_) | Value::Object(_) => {
            input.errors.push(RowError::new(
                Some(key),
                "invalid_value",
                format!("expected text or a number, found {}", kind_of(v)),
            ));
            None
        }
    }
}
