//! Parquet files as the Hugging Face hub serves them (`{config}/{split}-0000x-of-0000y.parquet`,
//! or `refs/convert/parquet`'s `{config}/{split}/0000.parquet`). Decoded through Arrow record
//! batches into the same JSON rows as every other reader. Snappy (pyarrow's and the hub's
//! default) and uncompressed files are supported.

use std::fs::File;
use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::data::format::Row;
use crate::data::readers::arrow::batch_rows;
use crate::error::{Error, Result};

/// Reads every row of a parquet file.
pub fn read(path: &Path) -> Result<Vec<Row>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(Error::data(path, "empty file: expected a parquet file"));
    }
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::data(path, format!("not a readable parquet file: {e}")))?;
    let reader = builder
        .build()
        .map_err(|e| Error::data(path, format!("not a readable parquet file: {e}")))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch =
            batch.map_err(|e| Error::data(path, format!("cannot decode parquet data: {e}")))?;
        batch_rows(&batch, path, &mut rows)?;
    }
    Ok(rows)
}
