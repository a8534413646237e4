//! Parquet files as the Hugging Face hub serves them (`{config}/{split}-0000x-of-0000y.parquet`,
//! or `refs/convert/parquet`'s `{config}/{split}/0000.parquet`). Decoded through Arrow record
//! batches into the same JSON rows as every other reader. Snappy (pyarrow's and the hub's
//! default) and uncompressed files are supported.

use std::fs::File;
use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaData;

use crate::data::format::Row;
use crate::data::readers::arrow::batch_rows;
use crate::error::{Error, Result};

/// Reads every row of a parquet file.
pub fn read(path: &Path) -> Result<Vec<Row>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Err(Error::data(path, "empty file: expected a parquet file"));
    }
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::data(path, format!("not a readable parquet file: {e}")))?;
    check_chunks(builder.metadata(), len).map_err(|e| Error::data(path, e))?;
    super::guarded(path, "parquet", || {
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
    })
}

/// Checks that every column chunk lies inside the file (`len` bytes) before
/// the reader seeks to it and reads it whole: the footer may claim any
/// offset and size (the parquet crate asserts they are not negative, and
/// would allocate the size claimed).
fn check_chunks(meta: &ParquetMetaData, len: u64) -> std::result::Result<(), String> {
    for (g, group) in meta.row_groups().iter().enumerate() {
        for column in group.columns() {
            let start = column
                .dictionary_page_offset()
                .unwrap_or(column.data_page_offset());
            let size = column.compressed_size();
            let inside = u64::try_from(start)
                .ok()
                .zip(u64::try_from(size).ok())
                .and_then(|(s, n)| s.checked_add(n))
                .is_some_and(|end| end <= len);
            if !inside {
                return Err(format!(
                    "row group {g}: column `{}` claims bytes {start}..+{size} of a {len}-byte file",
                    column.column_path()
                ));
            }
        }
    }
    Ok(())
}
