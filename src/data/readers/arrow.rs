//! Arrow IPC files of the `datasets` library: its cache (`{name}-{split}.arrow`) and
//! `save_to_disk` folders (`data-00000-of-00001.arrow`) are IPC *streams*; the IPC *file* format
//! (magic `ARROW1`) is accepted too. Record batches become JSON rows (structs as objects, lists as
//! arrays), the same shape the JSONL reader gives, so one formatter serves every format.

use std::io::Cursor;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use serde_json::{Map, Number, Value};

use crate::data::format::Row;
use crate::error::{Error, Result};

/// Reads every row of an Arrow IPC stream or file.
pub fn read(path: &Path) -> Result<Vec<Row>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(Error::data(
            path,
            "empty file: expected an Arrow IPC stream",
        ));
    }
    let is_file_format = bytes.starts_with(b"ARROW1");
    let bad = |e: arrow_schema::ArrowError| {
        Error::data(
            path,
            format!("not a readable Arrow IPC stream or file: {e}"),
        )
    };
    check_framing(&bytes, is_file_format).map_err(|e| {
        Error::data(
            path,
            format!("not a readable Arrow IPC stream or file: {e}"),
        )
    })?;
    super::guarded(path, "Arrow IPC", || {
        let mut rows = Vec::new();
        let input = Cursor::new(bytes.as_slice());
        if is_file_format {
            let reader = arrow_ipc::reader::FileReader::try_new(input, None).map_err(bad)?;
            for batch in reader {
                batch_rows(&batch.map_err(bad)?, path, &mut rows)?;
            }
        } else {
            let reader = arrow_ipc::reader::StreamReader::try_new(input, None).map_err(bad)?;
            for batch in reader {
                batch_rows(&batch.map_err(bad)?, path, &mut rows)?;
            }
        }
        Ok(rows)
    })
}

/// Checks every length an IPC file gives against its size before arrow-rs
/// reads it: arrow-rs allocates a message's metadata and body at the lengths
/// claimed, slices buffers at the offsets claimed (asserting they fit), and
/// a batch claims its row count. A corrupt length must be an error, not a
/// multi-exabyte allocation or a panic. The stream format is a sequence of
/// messages; the file format adds a footer whose blocks point at them.
fn check_framing(bytes: &[u8], is_file_format: bool) -> std::result::Result<(), String> {
    let len = bytes.len();
    if !is_file_format {
        let mut at = 0;
        while at < len {
            let Some((meta_at, meta_len)) = message_prefix(bytes, at)? else {
                return Ok(()); // end-of-stream marker
            };
            let body = check_message(bytes, meta_at, meta_len)?;
            at = meta_at + meta_len + body;
        }
        return Ok(());
    }
    let footer_len = len
        .checked_sub(10)
        .and_then(|end| Some(i32::from_le_bytes(bytes[end..end + 4].try_into().ok()?)))
        .ok_or("file too short for its footer")?;
    let footer_at = usize::try_from(footer_len)
        .ok()
        .and_then(|n| (len - 10).checked_sub(n))
        .ok_or_else(|| format!("footer of {footer_len} bytes in a file of {len}"))?;
    let footer = arrow_ipc::root_as_footer(&bytes[footer_at..len - 10])
        .map_err(|e| format!("invalid footer: {e}"))?;
    let blocks = footer.recordBatches().into_iter().flatten();
    for block in blocks.chain(footer.dictionaries().into_iter().flatten()) {
        let (offset, meta, body) = (block.offset(), block.metaDataLength(), block.bodyLength());
        let fits = usize::try_from(offset).ok().and_then(|o| {
            let end = o
                .checked_add(usize::try_from(meta).ok()?)?
                .checked_add(usize::try_from(body).ok()?)?;
            (end <= len).then_some(o)
        });
        let Some(o) = fits else {
            return Err(format!(
                "a block at {offset} of {meta} + {body} bytes is outside the file ({len} bytes)"
            ));
        };
        if let Some((meta_at, meta_len)) = message_prefix(bytes, o)? {
            check_message(bytes, meta_at, meta_len)?;
        }
    }
    Ok(())
}

/// The metadata of the message at `at` (start, length), after its
/// continuation marker and length prefix; None at the end-of-stream marker.
fn message_prefix(bytes: &[u8], at: usize) -> std::result::Result<Option<(usize, usize)>, String> {
    let word = |i: usize| -> std::result::Result<i32, String> {
        bytes
            .get(i..i + 4)
            .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| format!("message prefix at byte {i} cut short"))
    };
    let (mut meta_at, mut meta_len) = (at + 4, word(at)?);
    if meta_len == -1 {
        // The continuation marker of the current format, then the length.
        meta_len = word(at + 4)?;
        meta_at += 4;
    }
    if meta_len == 0 {
        return Ok(None);
    }
    let meta_len = usize::try_from(meta_len)
        .ok()
        .filter(|&n| meta_at.saturating_add(n) <= bytes.len())
        .ok_or_else(|| format!("message at byte {at} claims {meta_len} bytes of metadata"))?;
    Ok(Some((meta_at, meta_len)))
}

/// Checks one message's body length and buffers; returns the body length.
fn check_message(
    bytes: &[u8],
    meta_at: usize,
    meta_len: usize,
) -> std::result::Result<usize, String> {
    let message = arrow_ipc::root_as_message(&bytes[meta_at..meta_at + meta_len])
        .map_err(|e| format!("invalid message at byte {meta_at}: {e}"))?;
    let body_at = meta_at + meta_len;
    let body = usize::try_from(message.bodyLength())
        .ok()
        .filter(|&n| body_at.saturating_add(n) <= bytes.len())
        .ok_or_else(|| {
            format!(
                "message at byte {meta_at} claims a body of {} bytes",
                message.bodyLength()
            )
        })?;
    let batch = message
        .header_as_record_batch()
        .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
    if let Some(batch) = batch {
        for b in batch.buffers().into_iter().flatten() {
            let end = b.offset().checked_add(b.length());
            if b.offset() < 0 || b.length() < 0 || end.is_none_or(|e| e as u64 > body as u64) {
                return Err(format!(
                    "a buffer at {} of {} bytes is outside its message body ({body} bytes)",
                    b.offset(),
                    b.length()
                ));
            }
        }
        // A row takes at least a bit of some buffer (Null columns aside):
        // more rows than bits in the file is a corrupt count.
        let rows = batch.length();
        if rows < 0 || rows as u64 > 8 * bytes.len() as u64 {
            return Err(format!(
                "a batch claims {rows} rows in a file of {} bytes",
                bytes.len()
            ));
        }
    }
    Ok(body)
}

/// Appends the rows of one record batch to `out`.
pub fn batch_rows(batch: &RecordBatch, path: &Path, out: &mut Vec<Row>) -> Result<()> {
    let schema = batch.schema();
    let columns = batch.columns();
    let start = out.len();
    out.extend((0..batch.num_rows()).map(|_| Map::new()));
    for (field, column) in schema.fields().iter().zip(columns) {
        for i in 0..batch.num_rows() {
            let v = value_at(column.as_ref(), i, path, field.name())?;
            out[start + i].insert(field.name().clone(), v);
        }
    }
    Ok(())
}

fn float(v: f64) -> Value {
    Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// Element `i` of `array` as JSON.
pub fn value_at(array: &dyn Array, i: usize, path: &Path, column: &str) -> Result<Value> {
    if array.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean().value(i)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float16 => float(array.as_primitive::<Float16Type>().value(i).to_f64()),
        DataType::Float32 => float(array.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => array.as_string::<i32>().value(i).into(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(i).into(),
        DataType::Utf8View => array.as_string_view().value(i).into(),
        DataType::List(_) => list(array.as_list::<i32>().value(i).as_ref(), path, column)?,
        DataType::LargeList(_) => list(array.as_list::<i64>().value(i).as_ref(), path, column)?,
        DataType::FixedSizeList(_, _) => {
            list(array.as_fixed_size_list().value(i).as_ref(), path, column)?
        }
        DataType::Struct(_) => {
            let s = array.as_struct();
            let mut obj = Map::new();
            for (name, child) in s.column_names().iter().zip(s.columns()) {
                obj.insert(
                    name.to_string(),
                    value_at(child.as_ref(), i, path, &format!("{column}.{name}"))?,
                );
            }
            Value::Object(obj)
        }
        DataType::Dictionary(_, _) => {
            let dict = array.as_any_dictionary();
            let key = dict.normalized_keys()[i];
            value_at(dict.values().as_ref(), key, path, column)?
        }
        other => {
            return Err(Error::field(
                path,
                column,
                format!(
                    "unsupported Arrow type {other}: expected strings, numbers, booleans, lists or structs"
                ),
            ));
        }
    })
}

fn list(values: &dyn Array, path: &Path, column: &str) -> Result<Value> {
    (0..values.len())
        .map(|j| value_at(values, j, path, column))
        .collect::<Result<Vec<_>>>()
        .map(Value::Array)
}
