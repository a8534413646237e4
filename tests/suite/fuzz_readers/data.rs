//! Data files: JSONL, TSV, parquet, arrow.

use super::*;

#[test]
fn jsonl_files() {
    use ept::data::Task;
    let t = fixtures().join("tables");
    let seeds = [
        seed(fixtures(), &["data.jsonl"]),
        seed(t.join("user"), &["train.jsonl"]),
        seed(t.join("superglue/CB"), &["train.jsonl"]),
        seed(t.join("superglue/MultiRC"), &["val.jsonl"]),
        seed(t.join("superglue/WSC"), &["val.jsonl"]),
        seed(t.join("superglue/ReCoRD"), &["train.jsonl"]),
        seed(t.join("squad_json"), &["validation.json"]),
    ];
    let tasks = [
        None,
        None,
        Some(Task::Cb),
        Some(Task::MultiRc),
        Some(Task::Wsc),
        Some(Task::Record),
        Some(Task::Squad),
    ];
    fuzz("jsonl", &seeds, true, |dir, path| {
        let i: usize = dir.file_name().unwrap().to_string_lossy().parse().unwrap();
        let _ = ept::data::readers::read_file(path, None);
        match tasks[i] {
            Some(task) => format_rows(task, path, ept::data::readers::read_file(path, Some(task))),
            None => ept::data::load_user_file(path).into(),
        }
    });
}

/// Rows formatted as training examples, as `load_split` would.
fn format_rows(
    task: ept::data::Task,
    path: &Path,
    rows: ept::Result<Vec<ept::data::Row>>,
) -> Outcome {
    use ept::data::{Purpose, RowSource, format_row};
    let Ok(rows) = rows else {
        return Outcome::Refused;
    };
    for (row, r) in rows.iter().enumerate() {
        for purpose in [Purpose::Train, Purpose::Eval] {
            if format_row(task, r, purpose, RowSource { path, row }).is_err() {
                return Outcome::Refused;
            }
        }
    }
    Outcome::Valid
}

#[test]
fn tsv_files() {
    use ept::data::Task;
    let g = fixtures().join("tables/glue");
    let seeds = [
        seed(g.join("RTE"), &["dev.tsv"]),
        seed(g.join("CoLA"), &["train.tsv"]),
        seed(g.join("MRPC"), &["train.tsv"]),
    ];
    let tasks = [Task::Rte, Task::Cola, Task::Mrpc];
    fuzz("tsv", &seeds, true, |dir, path| {
        let i: usize = dir.file_name().unwrap().to_string_lossy().parse().unwrap();
        let task = tasks[i];
        format_rows(task, path, ept::data::readers::read_file(path, Some(task)))
    });
}

#[test]
fn parquet_files() {
    use ept::data::Task;
    let hub = fixtures().join("tables/hub");
    let glue = hub.join("datasets--nyu-mll--glue/snapshots/0123abcd");
    let sg = hub.join("datasets--aps--super_glue/snapshots/feed0001");
    let seeds = [
        seed(glue.join("rte"), &["validation-00000-of-00001.parquet"]),
        seed(glue.join("stsb"), &["validation-00000-of-00001.parquet"]),
        seed(sg.join("cb/train"), &["0000.parquet"]),
        seed(sg.join("record/train"), &["0000.parquet"]),
        seed(
            hub.join("datasets--rajpurkar--squad/snapshots/c0ffee/plain_text"),
            &["validation-00000-of-00001.parquet"],
        ),
    ];
    let tasks = [Task::Rte, Task::Stsb, Task::Cb, Task::Record, Task::Squad];
    fuzz("parquet", &seeds, true, |dir, path| {
        let i: usize = dir.file_name().unwrap().to_string_lossy().parse().unwrap();
        format_rows(tasks[i], path, ept::data::readers::read_file(path, None))
    });
}

/// An Arrow IPC *file* (magic `ARROW1`) with the batches of the stream `from`.
fn ipc_file_from_stream(from: &Path, to: &Path) {
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::fs::File::open(from).unwrap(), None).unwrap();
    let schema = reader.schema();
    let file = std::fs::File::create(to).unwrap();
    let mut writer = arrow_ipc::writer::FileWriter::try_new(file, &schema).unwrap();
    for batch in reader {
        writer.write(&batch.unwrap()).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn arrow_files() {
    use ept::data::Task;
    let t = fixtures().join("tables");
    let made = temp_dir("fuzz-arrow-made");
    let boolq = t.join("saved_boolq/train/data-00000-of-00001.arrow");
    ipc_file_from_stream(&boolq, &made.join("file-format.arrow"));
    let seeds = [
        seed(
            t.join("cache/super_glue/multirc/1.0.3/abcdef0123"),
            &["super_glue-validation.arrow"],
        ),
        seed(t.join("saved_boolq/train"), &["data-00000-of-00001.arrow"]),
        seed(&made, &["file-format.arrow"]),
    ];
    let tasks = [Task::MultiRc, Task::BoolQ, Task::BoolQ];
    fuzz("arrow", &seeds, true, |dir, path| {
        let i: usize = dir.file_name().unwrap().to_string_lossy().parse().unwrap();
        format_rows(tasks[i], path, ept::data::readers::read_file(path, None))
    });
    let _ = std::fs::remove_dir_all(&made);
}
