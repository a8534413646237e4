//! Training-run figures: files, formats, sizes, text, and errors naming the file and line.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ept::train::plots::{FIGURE_SIZE, plot_series, write_plots};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ept-test-plots-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A synthetic run: decaying noisy loss, linear warm-up then cosine decay of
/// both learning rates, validation every 50 steps with two metrics.
fn synthetic_metrics(steps: u64, lr_from_zero: bool, with_validation: bool) -> String {
    let mut out = String::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    };
    let warmup = 20.0;
    for step in 1..=steps {
        let t = step as f64;
        let loss = 3.0 * (-t / 60.0).exp() + 0.4 + 0.25 * noise();
        let shift = if lr_from_zero { 1.0 } else { 0.0 };
        let factor = if t - shift < warmup {
            (t - shift) / warmup
        } else {
            let p = (t - warmup) / (steps as f64 - warmup);
            0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        };
        write!(
            out,
            r#"{{"step":{step},"loss":{loss},"lr_prompt":{},"lr_low_rank":{},"grad_norm":1.5,"tokens_per_s":1234.5"#,
            0.3 * factor,
            1e-4 * factor
        )
        .unwrap();
        if with_validation && step % 50 == 0 {
            let acc = 0.5 + 0.4 * (1.0 - (-t / 100.0).exp());
            let f1 = acc - 0.05;
            write!(
                out,
                r#","validation":{{"loss":{},"metrics":{{"accuracy":{acc},"f1":{f1}}},"selection":{}}}"#,
                3.0 * (-t / 60.0).exp() + 0.5,
                (acc + f1) / 2.0
            )
            .unwrap();
        }
        out.push_str("}\n");
    }
    out
}

/// Checks the PNG signature and IHDR size, then decodes the whole image.
fn check_png(path: &Path, (w, h): (u32, u32)) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{}: PNG signature",
        path.display()
    );
    assert_eq!(
        &bytes[12..16],
        b"IHDR",
        "{}: IHDR chunk first",
        path.display()
    );
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (w, h), "{}: size", path.display());

    let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (w, h));
    let pixels = &buf[..info.buffer_size()];
    let dark = pixels
        .chunks(3)
        .filter(|p| p.iter().all(|&c| c < 100))
        .count();
    assert!(
        dark > 300,
        "{}: only {dark} dark pixels: no axes or text drawn?",
        path.display()
    );
}

/// The contents of the SVG's `<text>` elements, trimmed.
fn svg_texts(path: &Path) -> Vec<String> {
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(svg.contains("<svg"), "{}: not an SVG", path.display());
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

fn assert_texts(path: &Path, wanted: &[&str]) {
    let texts = svg_texts(path);
    for w in wanted {
        assert!(
            texts.iter().any(|t| t == w),
            "{} lacks text {w:?}; has {texts:?}",
            path.display()
        );
    }
}

#[test]
fn writes_six_figures_with_text() {
    let dir = temp_dir("run");
    std::fs::write(
        dir.join("metrics.jsonl"),
        synthetic_metrics(300, false, true),
    )
    .unwrap();
    let written = write_plots(&dir).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "loss.png",
            "loss.svg",
            "lr.png",
            "lr.svg",
            "validation.png",
            "validation.svg"
        ]
    );
    for p in &written {
        assert!(p.is_file(), "{} missing", p.display());
        assert_eq!(p.parent().unwrap(), dir);
        if p.extension().unwrap() == "png" {
            check_png(p, FIGURE_SIZE);
        }
    }
    // Axis labels, titles and legends are real text.
    assert_texts(
        &dir.join("loss.svg"),
        &["Loss", "step", "loss", "train loss", "validation loss"],
    );
    assert_texts(
        &dir.join("lr.svg"),
        &[
            "Learning rates",
            "step",
            "learning rate",
            "prompt",
            "low-rank",
            "1e-4",
        ],
    );
    assert_texts(
        &dir.join("validation.svg"),
        &["step", "score", "accuracy", "f1", "selection"],
    );
    // No temporary files are left behind.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    // Rewriting replaces the files in place.
    assert_eq!(write_plots(&dir).unwrap(), written);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zero_learning_rate_gives_two_panels_and_no_validation_a_note() {
    let dir = temp_dir("zero-lr");
    let mut text = synthetic_metrics(40, true, false);
    // A diverged step: serde_json writes NaN as null.
    text.push_str(
        r#"{"step":41,"loss":null,"lr_prompt":0.0,"lr_low_rank":0.0,"grad_norm":null,"tokens_per_s":1.0}"#,
    );
    text.push('\n');
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    let written = write_plots(&dir).unwrap();
    assert_eq!(written.len(), 6);
    // Two linear panels, each with its own caption and axis labels.
    let lr = svg_texts(&dir.join("lr.svg"));
    assert_eq!(
        lr.iter().filter(|t| *t == "learning rate").count(),
        2,
        "{lr:?}"
    );
    assert_texts(&dir.join("lr.svg"), &["prompt", "low-rank", "0"]);
    assert_texts(
        &dir.join("validation.svg"),
        &["no validation step logged yet"],
    );
    check_png(&dir.join("validation.png"), FIGURE_SIZE);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_name_the_file_and_line() {
    let dir = temp_dir("errors");
    let err = write_plots(&dir).unwrap_err().to_string();
    assert!(
        err.contains("metrics.jsonl") && err.contains("not found"),
        "{err}"
    );

    let mut text = synthetic_metrics(2, false, false);
    text.push_str("{\"step\": 3, \"loss\": \n");
    std::fs::write(dir.join("metrics.jsonl"), &text).unwrap();
    let err = write_plots(&dir).unwrap_err().to_string();
    assert!(err.contains("metrics.jsonl:3"), "{err}");

    std::fs::write(
        dir.join("metrics.jsonl"),
        "{\"step\": 1, \"lr_prompt\": 0.1, \"lr_low_rank\": 0.1}\n",
    )
    .unwrap();
    let err = write_plots(&dir).unwrap_err().to_string();
    assert!(
        err.contains("metrics.jsonl:1") && err.contains("loss"),
        "{err}"
    );

    std::fs::write(dir.join("metrics.jsonl"), "\n").unwrap();
    let err = write_plots(&dir).unwrap_err().to_string();
    assert!(
        err.contains("metrics.jsonl") && err.contains("no training step"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plot_series_for_sweeps() {
    let dir = temp_dir("sweep");
    let stem = dir.join("sweep.lr");
    let series = vec![
        (
            "EPT".to_string(),
            vec![(1e-3, 0.71), (1e-2, 0.78), (1e-1, 0.83), (3e-1, 0.81)],
        ),
        (
            "DePT".to_string(),
            vec![(1e-3, 0.69), (1e-2, 0.75), (1e-1, f64::NAN), (3e-1, 0.8)],
        ),
    ];
    plot_series(
        &stem,
        "Learning-rate sweep",
        "learning rate",
        "accuracy",
        &series,
        false,
    )
    .unwrap();
    check_png(&dir.join("sweep.lr.png"), FIGURE_SIZE);
    assert_texts(
        &dir.join("sweep.lr.svg"),
        &[
            "Learning-rate sweep",
            "learning rate",
            "accuracy",
            "EPT",
            "DePT",
        ],
    );

    plot_series(&dir.join("log"), "log", "x", "y", &series, true).unwrap();
    assert!(dir.join("log.svg").is_file());
    let bad = vec![("zero".to_string(), vec![(1.0, 0.0)])];
    let err = plot_series(&dir.join("bad"), "t", "x", "y", &bad, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("zero") && err.contains("positive"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
