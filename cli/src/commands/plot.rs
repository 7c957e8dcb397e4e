//! `shoal plot RUN.csv [RUN.csv ...] --out FILE.svg`: accuracy and loss per round of one or
//! more runs side by side, from the CSV files `--metrics-out` writes, so comparing two
//! strategies is one command.

use anyhow::{Context, Result, bail};
use clap::Args;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Options of `shoal plot`.
#[derive(Debug, Args)]
pub struct PlotCmd {
    /// Metrics CSV files written by --metrics-out; each is one line, labelled by its file
    /// name.
    #[arg(required = true, value_name = "METRICS.csv")]
    runs: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(long, value_name = "FILE.svg")]
    out: PathBuf,
}

/// One run's curve: a label and (round, value) points for each panel.
#[derive(Debug)]
struct Series {
    label: String,
    accuracy: Vec<(f64, f64)>,
    loss: Vec<(f64, f64)>,
}

impl PlotCmd {
    /// Reads the runs and writes the picture.
    pub async fn execute(self) -> Result<()> {
        if self.out.extension().and_then(|e| e.to_str()) != Some("svg") {
            bail!(
                "--out {}: shoal plot writes SVG; name the file *.svg",
                self.out.display()
            );
        }
        let series = self
            .runs
            .iter()
            .map(|path| read_series(path))
            .collect::<Result<Vec<_>>>()?;
        draw(&series, &self.out)?;
        println!("{} run(s) -> {}", series.len(), self.out.display());
        Ok(())
    }
}

/// The accuracy and loss columns of a metrics CSV, by round; cells left empty (a round not
/// evaluated) are skipped.
fn read_series(path: &Path) -> Result<Series> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let headers = reader
        .headers()
        .with_context(|| format!("reading {}", path.display()))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let round = column("round").with_context(|| {
        format!(
            "{} has no round column: not a --metrics-out file",
            path.display()
        )
    })?;
    let (accuracy, loss) = (column("accuracy"), column("loss"));
    let mut series = Series {
        label: path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        ),
        accuracy: Vec::new(),
        loss: Vec::new(),
    };
    for (line, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("{} line {}", path.display(), line + 2))?;
        let number = |i: Option<usize>| -> Result<Option<f64>> {
            match i.and_then(|i| row.get(i)).filter(|c| !c.is_empty()) {
                None => Ok(None),
                Some(cell) => match cell.parse::<f64>() {
                    Ok(v) if v.is_finite() => Ok(Some(v)),
                    _ => bail!(
                        "{} line {}: {cell:?} is not a number",
                        path.display(),
                        line + 2
                    ),
                },
            }
        };
        let Some(r) = number(Some(round))? else {
            bail!("{} line {}: no round", path.display(), line + 2);
        };
        if let Some(a) = number(accuracy)? {
            series.accuracy.push((r, a));
        }
        if let Some(l) = number(loss)? {
            series.loss.push((r, l));
        }
    }
    if series.accuracy.is_empty() && series.loss.is_empty() {
        bail!(
            "{} has no accuracy or loss values to plot (a k-means run, or an empty file)",
            path.display()
        );
    }
    Ok(series)
}

/// Two panels, accuracy and loss against the round, one coloured line per run.
fn draw(series: &[Series], out: &Path) -> Result<()> {
    let root = SVGBackend::new(out, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((1, 2));
    let rounds = series
        .iter()
        .flat_map(|s| s.accuracy.iter().chain(&s.loss))
        .map(|p| p.0)
        .fold(1.0_f64, f64::max);
    for (area, (title, pick)) in panels.iter().zip([
        (
            "accuracy",
            (|s: &Series| &s.accuracy) as fn(&Series) -> &Vec<(f64, f64)>,
        ),
        ("loss", |s: &Series| &s.loss),
    ]) {
        let values: Vec<f64> = series
            .iter()
            .flat_map(|s| pick(s).iter().map(|p| p.1))
            .collect();
        let (low, high) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let (low, high) = if values.is_empty() {
            (0.0, 1.0)
        } else if high - low < 1e-9 {
            (low - 0.5, high + 0.5)
        } else {
            (low - 0.05 * (high - low), high + 0.05 * (high - low))
        };
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..rounds, low..high)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc(title)
            .draw()
            .map_err(plot_error)?;
        for (i, s) in series.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    pick(s).iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}
