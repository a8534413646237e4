//! Arrow IPC files of the `datasets` library: its cache (`{name}-{split}.arrow`) and
//! `save_to_disk` folders (`data-00000-of-00001.arrow`) are IPC *streams*; the IPC *file* format
//! (magic `ARROW1`) is accepted too. Record batches become JSON rows (structs as objects, lists as
//! arrays), the same shape the JSONL reader gives, so one formatter serves every format.

use std::fs::File;
use std::io::{BufReader, Read};
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
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 6];
    let is_file_format = file.read_exact(&mut magic).is_ok() && &magic == b"ARROW1";
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Err(Error::data(
            path,
            "empty file: expected an Arrow IPC stream",
        ));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: arrow_schema::ArrowError| {
        Error::data(
            path,
            format!("not a readable Arrow IPC stream or file: {e}"),
        )
    };
    let mut rows = Vec::new();
    if is_file_format {
        let reader =
            arrow_ipc::reader::FileReader::try_new(BufReader::new(file), None).map_err(bad)?;
        for batch in reader {
            batch_rows(&batch.map_err(bad)?, path, &mut rows)?;
        }
    } else {
        let reader =
            arrow_ipc::reader::StreamReader::try_new(BufReader::new(file), None).map_err(bad)?;
        for batch in reader {
            batch_rows(&batch.map_err(bad)?, path, &mut rows)?;
        }
    }
    Ok(rows)
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
