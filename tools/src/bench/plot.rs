//! `bench plot [FILES]`: two hand-written SVG files (no dependency).
//!
//! - `comparison.svg`: per entry, one bar per result file with the median time relative to the
//!   first file, and its noise (min..max thin, q1..q3 thick). Without FILES: the newest result
//!   in the results directory by the date inside the file, and the newest older result of the
//!   same device that shares entries with it; never two devices, and never one file alone.
//! - `history.svg`: every result in the results directory, one panel per device, suite and
//!   model (machines never share a line), one line per entry normalized to its first run, with
//!   axis ticks, run labels (date, commit), a legend and a marker on every point.

use super::result::{read_json, write_text};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Width of one character of the 10 px monospace font, for layout.
const CW: f64 = 6.1;
/// tab10
const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];
/// Line styles after the colors run out.
const DASHES: [&str; 3] = ["", "6 3", "2 2"];

/// A result file and what the plots need of it.
struct ResultFile {
    /// File stem: `<device>_<stamp>_<commit>` for the bench's own files.
    label: String,
    device: String,
    date: String,
    doc: Value,
}

impl ResultFile {
    fn load(path: &Path) -> Result<ResultFile, String> {
        let doc = read_json(path)?;
        Ok(ResultFile {
            label: path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default(),
            device: doc["device"].as_str().unwrap_or("unknown").to_string(),
            date: doc["date"].as_str().unwrap_or("").to_string(),
            doc,
        })
    }

    /// "11-23 09:25 c6279c9": the run on an axis.
    fn short(&self) -> String {
        let d = self.date.replace('T', " ");
        let d = d.get(5..16).unwrap_or(&d);
        format!("{d} {}", self.doc["commit"].as_str().unwrap_or("?"))
    }

    /// "2026-11-23 09:25, commit c6279c9, tiny 4x64".
    fn describe(&self) -> String {
        let d = &self.doc;
        format!(
            "{}, commit {}, {} {}x{}",
            self.date.replace('T', " ").get(..16).unwrap_or(&self.date),
            d["commit"].as_str().unwrap_or("?"),
            d["model"].as_str().unwrap_or("?"),
            d["batch"],
            d["seq"]
        )
    }

    /// The measured entries.
    fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        self.doc["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Entry::of)
    }
}

/// One measured entry: `key` is "name [shape]", so that runs of other models or sizes never
/// share a bar or a line.
struct Entry<'a> {
    suite: &'a str,
    key: String,
    median: f64,
    min: f64,
    max: f64,
    q1: f64,
    q3: f64,
}

impl<'a> Entry<'a> {
    fn of(e: &'a Value) -> Option<Entry<'a>> {
        let s = &e["stats"];
        let median = s["median_ms"]
            .as_f64()
            .filter(|m| *m > 0.0 && m.is_finite())?;
        let get = |k: &str| s[k].as_f64().unwrap_or(median);
        Some(Entry {
            suite: e["suite"].as_str().unwrap_or("?"),
            key: format!(
                "{} [{}]",
                e["name"].as_str()?,
                e["shape"].as_str().unwrap_or("")
            ),
            median,
            min: get("min_ms"),
            max: get("max_ms"),
            q1: get("q1_ms"),
            q3: get("q3_ms"),
        })
    }
}

/// `bench plot`: comparison.svg of FILES (or the default pair) and history.svg of every result
/// in `results_dir`, into `plots_dir`.
pub fn plot(files: &[String], results_dir: &Path, plots_dir: &Path) -> Result<i32, String> {
    let mut all = Vec::new();
    let listing = std::fs::read_dir(results_dir)
        .map_err(|e| format!("cannot list {}: {e}", results_dir.display()))?;
    let mut paths: Vec<PathBuf> = listing
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for p in &paths {
        all.push(ResultFile::load(p)?);
    }
    // by the date inside the file (name order puts the device first), then by name
    all.sort_by(|a, b| (&a.date, &a.label).cmp(&(&b.date, &b.label)));

    let explicit: Vec<ResultFile>;
    let chosen: Option<Vec<&ResultFile>> = if files.is_empty() {
        if all.is_empty() {
            return Err(format!(
                "no result files to plot in {}",
                results_dir.display()
            ));
        }
        match default_pair(&all, results_dir) {
            Ok(pair) => Some(pair),
            Err(note) => {
                eprintln!("bench plot: {note}");
                None
            }
        }
    } else {
        explicit = files
            .iter()
            .map(|f| ResultFile::load(Path::new(f)))
            .collect::<Result<_, _>>()?;
        if explicit.len() < 2 {
            return Err(format!(
                "plot {}: a comparison needs two or more result files (the first is the \
                 reference); without FILES it takes the two newest of one device in {}",
                files[0],
                results_dir.display()
            ));
        }
        Some(explicit.iter().collect())
    };

    std::fs::create_dir_all(plots_dir)
        .map_err(|e| format!("cannot create {}: {e}", plots_dir.display()))?;
    if let Some(docs) = chosen {
        let cmp = plots_dir.join("comparison.svg");
        write_text(&cmp, &comparison_svg(&docs))?;
        let names: Vec<&str> = docs.iter().map(|d| d.label.as_str()).collect();
        eprintln!("wrote {} ({})", cmp.display(), names.join(" vs "));
    }
    if !all.is_empty() {
        let hist = plots_dir.join("history.svg");
        write_text(&hist, &history_svg(&all, results_dir))?;
        eprintln!("wrote {}", hist.display());
    }
    Ok(0)
}

/// The newest result (by date) and the newest older result of the same device that shares an
/// entry with it, oldest first; or why there is no such pair.
fn default_pair<'a>(all: &'a [ResultFile], dir: &Path) -> Result<Vec<&'a ResultFile>, String> {
    let newest = all.last().expect("not empty");
    let older: Vec<&ResultFile> = all[..all.len() - 1]
        .iter()
        .filter(|f| f.device == newest.device)
        .collect();
    if older.is_empty() {
        return Err(format!(
            "only one result of {} in {} ({}): nothing to compare, comparison.svg not written \
             (name two files: bench plot OLD.json NEW.json)",
            newest.device,
            dir.display(),
            newest.label
        ));
    }
    let keys: BTreeSet<String> = newest.entries().map(|e| e.key).collect();
    match older
        .iter()
        .rev()
        .find(|f| f.entries().any(|e| keys.contains(&e.key)))
    {
        Some(prev) => Ok(vec![prev, newest]),
        None => Err(format!(
            "the newest result of {} in {} ({}) has no entry in common with the {} older one(s) \
             of that device (another model or shape): comparison.svg not written",
            newest.device,
            dir.display(),
            newest.label,
            older.len()
        )),
    }
}

/// Milliseconds with at least 3 significant digits: "1234.5", "12.35", "0.0295".
fn fmt_ms(v: f64) -> String {
    let decimals = if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else if v >= 1.0 || v <= 0.0 {
        3
    } else {
        (2 - v.log10().floor() as i32).clamp(3, 9) as usize
    };
    format!("{v:.decimals$}")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// About `target` round ticks covering [lo, hi]: (first, last, step).
fn nice_axis(lo: f64, hi: f64, target: usize) -> (f64, f64, f64) {
    let span = (hi - lo).max(1e-9);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = mag
        * match raw / mag {
            n if n < 1.5 => 1.0,
            n if n < 3.0 => 2.0,
            n if n < 7.0 => 5.0,
            _ => 10.0,
        };
    let first = (lo / step + 1e-9).floor() * step;
    let last = (hi / step - 1e-9).ceil() * step;
    (first, last, step)
}

fn ticks(first: f64, last: f64, step: f64) -> Vec<f64> {
    let n = ((last - first) / step).round() as usize;
    (0..=n).map(|i| first + step * i as f64).collect()
}

/// "1.5", "0.25": a tick value without trailing zeros.
fn tick_label(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Horizontal bars: per entry of the first file, one bar per file, length = median relative to
/// the first file's median, with the min..max range (thin) and q1..q3 (thick) over it.
fn comparison_svg(docs: &[&ResultFile]) -> String {
    let reference: Vec<Entry> = docs[0].entries().collect();
    let per: Vec<BTreeMap<String, Entry>> = docs
        .iter()
        .map(|d| d.entries().map(|e| (e.key.clone(), e)).collect())
        .collect();
    let devices: BTreeSet<&str> = docs.iter().map(|d| d.device.as_str()).collect();

    let bar_h = 11.0;
    let group_h = (bar_h + 2.0) * docs.len() as f64 + 10.0;
    let label_w = reference
        .iter()
        .map(|e| e.key.len())
        .max()
        .unwrap_or(10)
        .max(12) as f64
        * CW;
    let (left, w) = (14.0 + label_w, 460.0);
    let legend_w = docs
        .iter()
        .map(|d| d.label.len() + d.describe().len() + 6)
        .max()
        .unwrap_or(0) as f64
        * CW
        + 40.0;
    let width = (left + w + 150.0).max(legend_w).max(120.0 * CW + 16.0);
    // the axis covers every median and upper quartile; a max beyond it ends in an arrow
    let rel_max = reference
        .iter()
        .flat_map(|r| {
            per.iter()
                .filter_map(|m| m.get(&r.key))
                .map(|e| e.median.max(e.q3) / r.median)
        })
        .fold(1.0f64, f64::max);
    let (_, axis_max, step) = nice_axis(0.0, rel_max * 1.05, 6);
    let x = |rel: f64| left + w * (rel / axis_max).min(1.0);

    let legend_top = 58.0;
    let axis_y = legend_top + 16.0 * docs.len() as f64 + 30.0;
    let top = axis_y + 8.0;
    let height = top + group_h * reference.len().max(1) as f64 + 16.0;

    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"monospace\" font-size=\"10\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    s += "<text x=\"8\" y=\"18\" font-size=\"13\" font-weight=\"bold\">Median time per entry, relative to the first file (shorter is faster)</text>\n";
    if devices.len() > 1 {
        let list: Vec<&str> = devices.iter().copied().collect();
        let _ = writeln!(
            s,
            "<text x=\"8\" y=\"34\" font-size=\"11\" fill=\"#c00\" font-weight=\"bold\">DIFFERENT DEVICES: {}: these timings do not compare</text>",
            esc(&list.join(", "))
        );
    } else {
        let _ = writeln!(
            s,
            "<text x=\"8\" y=\"34\" font-size=\"11\">device {}</text>",
            esc(docs[0].device.as_str())
        );
    }
    s += "<text x=\"8\" y=\"48\" fill=\"#444\">bar: median; thin line: min..max; thick line: q1..q3 (the noise the regression rule allows); an arrow: beyond the axis</text>\n";
    for (i, d) in docs.iter().enumerate() {
        let y = legend_top + 16.0 * i as f64;
        let _ = writeln!(
            s,
            "<rect x=\"8\" y=\"{:.1}\" width=\"12\" height=\"11\" fill=\"{}\"/><text x=\"26\" y=\"{:.1}\">{}{}  ({})</text>",
            y,
            COLORS[i % COLORS.len()],
            y + 9.5,
            esc(&d.label),
            if i == 0 { " = 1.0 (reference)" } else { "" },
            esc(&d.describe())
        );
    }
    // axis: ticks above, grid lines through the groups
    let grid_bottom = height - 12.0;
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{axis_y}\" x2=\"{}\" y2=\"{axis_y}\" stroke=\"#000\"/>",
        left + w
    );
    for t in ticks(0.0, axis_max, step) {
        let tx = x(t);
        let dash = if (t - 1.0).abs() < 1e-9 {
            " stroke-dasharray=\"4 3\" stroke=\"#555\""
        } else {
            " stroke=\"#e4e4e4\""
        };
        let _ = writeln!(
            s,
            "<line class=\"tick\" x1=\"{tx:.1}\" y1=\"{:.1}\" x2=\"{tx:.1}\" y2=\"{grid_bottom:.1}\"{dash}/>\
             <line x1=\"{tx:.1}\" y1=\"{:.1}\" x2=\"{tx:.1}\" y2=\"{axis_y}\" stroke=\"#000\"/>\
             <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}x</text>",
            axis_y + 1.0,
            axis_y - 4.0,
            axis_y - 7.0,
            tick_label(t)
        );
    }
    for (g, r) in reference.iter().enumerate() {
        let y0 = top + group_h * g as f64;
        if g % 2 == 1 {
            let _ = writeln!(
                s,
                "<rect x=\"4\" y=\"{:.1}\" width=\"{:.0}\" height=\"{:.1}\" fill=\"#000\" fill-opacity=\"0.03\"/>",
                y0 - 4.0,
                width - 8.0,
                group_h
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"8\" y=\"{:.1}\">{}</text>",
            y0 + bar_h,
            esc(&r.key)
        );
        for (i, m) in per.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let by = y0 + (bar_h + 2.0) * i as f64;
            let Some(e) = m.get(&r.key) else {
                let _ = writeln!(
                    s,
                    "<text x=\"{}\" y=\"{:.1}\" fill=\"{color}\">not in this file</text>",
                    left + 4.0,
                    by + bar_h - 2.0
                );
                continue;
            };
            let rel = |v: f64| v / r.median;
            let bw = x(rel(e.median)) - left;
            let mid = by + bar_h / 2.0;
            let _ = writeln!(
                s,
                "<rect class=\"bar\" x=\"{left}\" y=\"{by:.1}\" width=\"{bw:.2}\" height=\"{bar_h}\" fill=\"{color}\" fill-opacity=\"0.75\"><title>{}: median {:.4} ms, min {:.4}, q1 {:.4}, q3 {:.4}, max {:.4}</title></rect>",
                esc(&docs[i].label),
                e.median,
                e.min,
                e.q1,
                e.q3,
                e.max
            );
            let _ = writeln!(
                s,
                "<line class=\"range\" x1=\"{:.2}\" y1=\"{mid:.1}\" x2=\"{:.2}\" y2=\"{mid:.1}\" stroke=\"#222\" stroke-width=\"1\"/>\
                 <line class=\"iqr\" x1=\"{:.2}\" y1=\"{mid:.1}\" x2=\"{:.2}\" y2=\"{mid:.1}\" stroke=\"#222\" stroke-width=\"3.5\"/>",
                x(rel(e.min)),
                x(rel(e.max)),
                x(rel(e.q1)),
                x(rel(e.q3))
            );
            if rel(e.max) > axis_max {
                let ax = left + w;
                let _ = writeln!(
                    s,
                    "<path d=\"M{:.1},{:.1} L{:.1},{mid:.1} L{:.1},{:.1} Z\" fill=\"#222\"/>",
                    ax - 5.0,
                    mid - 3.5,
                    ax + 1.0,
                    ax - 5.0,
                    mid + 3.5
                );
            }
            let ratio = if i == 0 {
                String::new()
            } else {
                format!("  {:.2}x", rel(e.median))
            };
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{} ms{ratio}</text>",
                left + w + 8.0,
                by + bar_h - 2.0,
                fmt_ms(e.median)
            );
        }
    }
    s + "</svg>\n"
}

/// One series of a history panel: (run index, median ms, median / first median).
struct Series {
    key: String,
    points: Vec<(usize, f64, f64)>,
}

/// A history panel: one suite and model of one device, the runs that measured it (date
/// order) and a series per entry.
struct Panel<'a> {
    suite: String,
    model: String,
    runs: Vec<&'a ResultFile>,
    series: Vec<Series>,
}

/// The panels of one device's runs (in date order), sorted by suite and model.
fn panels<'a>(runs: &[&'a ResultFile]) -> Vec<Panel<'a>> {
    let mut out: Vec<Panel> = Vec::new();
    for f in runs {
        let model = f.doc["model"].as_str().unwrap_or("?");
        for e in f.entries() {
            let p = match out
                .iter()
                .position(|p| p.suite == e.suite && p.model == model)
            {
                Some(p) => p,
                None => {
                    out.push(Panel {
                        suite: e.suite.to_string(),
                        model: model.to_string(),
                        runs: Vec::new(),
                        series: Vec::new(),
                    });
                    out.len() - 1
                }
            };
            let panel = &mut out[p];
            if !panel.runs.last().is_some_and(|r| std::ptr::eq(*r, *f)) {
                panel.runs.push(f);
            }
            let run = panel.runs.len() - 1;
            match panel.series.iter_mut().find(|s| s.key == e.key) {
                Some(s) => {
                    let first = s.points[0].1;
                    s.points.push((run, e.median, e.median / first));
                }
                None => panel.series.push(Series {
                    key: e.key,
                    points: vec![(run, e.median, 1.0)],
                }),
            }
        }
    }
    out.sort_by(|a, b| (&a.suite, &a.model).cmp(&(&b.suite, &b.model)));
    out
}

/// Per device (in name order) a heading and its panels; per panel a line per entry over the
/// runs in date order, normalized to the entry's first run, a marker on every point (hover:
/// value, date, commit), ticks on both axes, run labels and a legend with each entry's latest
/// relative time.
fn history_svg(all: &[ResultFile], dir: &Path) -> String {
    let mut devices: BTreeMap<&str, Vec<&ResultFile>> = BTreeMap::new();
    for f in all {
        devices.entry(f.device.as_str()).or_default().push(f);
    }
    let (x0, pw, ph, top) = (100.0, 520.0, 220.0, 34.0);
    let mut body = String::new();
    let mut y = 58.0;
    let mut width = 760.0f64;
    for (device, runs) in &devices {
        let last = runs.last().unwrap();
        let mut about = Vec::new();
        if let Some(n) = last.doc["device_name"].as_str() {
            about.push(n.to_string());
        }
        if let (Some(t), false) = (last.doc["threads"].as_u64(), last.doc["backend"] == "cuda") {
            about.push(format!("{t} threads"));
        }
        let about = if about.is_empty() {
            String::new()
        } else {
            format!(" ({})", about.join(", "))
        };
        let _ = writeln!(
            body,
            "<text class=\"device\" x=\"8\" y=\"{:.1}\" font-size=\"14\" font-weight=\"bold\">{}{}: {} run(s)</text>",
            y + 14.0,
            esc(device),
            esc(&about),
            runs.len()
        );
        let _ = writeln!(
            body,
            "<line x1=\"8\" y1=\"{:.1}\" x2=\"{{WIDTH}}\" y2=\"{:.1}\" stroke=\"#888\"/>",
            y + 20.0,
            y + 20.0
        );
        y += 28.0;
        for Panel {
            suite,
            model,
            runs: prs,
            series,
        } in panels(runs)
        {
            let n = prs.len();
            let xs = |i: usize| {
                if n == 1 {
                    x0 + pw / 2.0
                } else {
                    x0 + 20.0 + (pw - 40.0) * i as f64 / (n - 1) as f64
                }
            };
            let (lo, hi) = series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.2))
                .fold((1.0f64, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
            let (lo, hi) = if hi - lo < 0.1 {
                let mid = (hi + lo) / 2.0;
                (mid - 0.05, mid + 0.05)
            } else {
                (lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo))
            };
            let (first, last, step) = nice_axis(lo.max(0.0), hi, 5);
            let ys = |v: f64| top + ph - ph * (v - first) / (last - first);
            let label_w = series.iter().map(|s| s.key.len()).max().unwrap_or(10) as f64 * CW;
            let legend_x = x0 + pw + 24.0;
            width = width.max(legend_x + label_w + 90.0);
            let panel_h = (top + ph + 96.0).max(top + 14.0 * series.len() as f64 + 24.0);
            let _ = writeln!(
                body,
                "<g class=\"panel\" data-device=\"{}\" data-suite=\"{}\" data-model=\"{}\" transform=\"translate(0,{y:.1})\">",
                esc(device),
                esc(&suite),
                esc(&model)
            );
            let _ = writeln!(
                body,
                "<text x=\"8\" y=\"14\" font-size=\"12\" font-weight=\"bold\">{} suite, model {}: {} run(s), {} entr{}</text>",
                esc(&suite),
                esc(&model),
                n,
                series.len(),
                if series.len() == 1 { "y" } else { "ies" }
            );
            // plot frame, y ticks with grid, the 1.0 line
            let _ = writeln!(
                body,
                "<rect x=\"{x0}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#000\"/>"
            );
            for t in ticks(first, last, step) {
                let ty = ys(t);
                let style = if (t - 1.0).abs() < 1e-9 {
                    "stroke=\"#555\" stroke-dasharray=\"4 3\""
                } else {
                    "stroke=\"#e4e4e4\""
                };
                let _ = writeln!(
                    body,
                    "<line class=\"ytick\" x1=\"{:.1}\" y1=\"{ty:.1}\" x2=\"{:.1}\" y2=\"{ty:.1}\" {style}/>\
                     <line x1=\"{:.1}\" y1=\"{ty:.1}\" x2=\"{x0}\" y2=\"{ty:.1}\" stroke=\"#000\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}x</text>",
                    x0 + 1.0,
                    x0 + pw - 1.0,
                    x0 - 4.0,
                    x0 - 6.0,
                    ty + 3.5,
                    tick_label(t)
                );
            }
            let _ = writeln!(
                body,
                "<text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">median / first run</text>",
                top + ph / 2.0,
                top + ph / 2.0
            );
            // x ticks: every run, a label on every k-th
            let every = n.div_ceil(24).max(1);
            for (i, r) in prs.iter().enumerate() {
                let tx = xs(i);
                let _ = writeln!(
                    body,
                    "<line class=\"xtick\" x1=\"{tx:.1}\" y1=\"{:.1}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"#000\"/>",
                    top + ph,
                    top + ph + 4.0
                );
                if i % every == 0 || i == n - 1 {
                    let ly = top + ph + 12.0;
                    let _ = writeln!(
                        body,
                        "<text x=\"{tx:.1}\" y=\"{ly:.1}\" text-anchor=\"end\" transform=\"rotate(-35 {tx:.1} {ly:.1})\"><title>{}</title>{}</text>",
                        esc(&r.label),
                        esc(&r.short())
                    );
                }
            }
            // series, then the legend
            for (k, sr) in series.iter().enumerate() {
                let color = COLORS[k % COLORS.len()];
                let dash = DASHES[(k / COLORS.len()) % DASHES.len()];
                let dash = if dash.is_empty() {
                    String::new()
                } else {
                    format!(" stroke-dasharray=\"{dash}\"")
                };
                if sr.points.len() > 1 {
                    let pts: Vec<String> = sr
                        .points
                        .iter()
                        .map(|&(i, _, v)| format!("{:.1},{:.1}", xs(i), ys(v)))
                        .collect();
                    let _ = writeln!(
                        body,
                        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"{dash} points=\"{}\"><title>{}</title></polyline>",
                        pts.join(" "),
                        esc(&sr.key)
                    );
                }
                for &(i, ms, v) in &sr.points {
                    let _ = writeln!(
                        body,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\" stroke=\"white\" stroke-width=\"0.6\"><title>{}: {v:.3}x ({ms:.4} ms), {}</title></circle>",
                        xs(i),
                        ys(v),
                        esc(&sr.key),
                        esc(&prs[i].short())
                    );
                }
                let ly = top + 6.0 + 14.0 * k as f64;
                let latest = sr.points.last().unwrap().2;
                let _ = writeln!(
                    body,
                    "<line x1=\"{legend_x:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\
                     <rect x=\"{:.1}\" y=\"{:.1}\" width=\"5\" height=\"5\" fill=\"{color}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#444\">{latest:.2}x</text>",
                    legend_x + 22.0,
                    legend_x + 8.5,
                    ly - 2.5,
                    legend_x + 28.0,
                    ly + 3.5,
                    esc(&sr.key),
                    legend_x + 34.0 + label_w,
                    ly + 3.5
                );
            }
            let _ = writeln!(
                body,
                "<text x=\"{legend_x:.1}\" y=\"{:.1}\" fill=\"#444\">entry [shape], latest run / first run</text>",
                top - 8.0
            );
            body += "</g><!-- panel -->\n";
            y += panel_h;
        }
        y += 10.0;
    }
    let subtitle = format!(
        "every result in {}, by date; a panel per device, suite and model (machines never share \
         a line); hover a point for its value",
        dir.display()
    );
    let width = width.max(subtitle.len() as f64 * CW + 16.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{y:.0}\" \
         font-family=\"monospace\" font-size=\"10\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    s += "<text x=\"8\" y=\"18\" font-size=\"13\" font-weight=\"bold\">Median time per entry relative to its first run (lower is faster)</text>\n";
    let _ = writeln!(
        s,
        "<text x=\"8\" y=\"36\" fill=\"#444\">{}</text>",
        esc(&subtitle)
    );
    s + &body.replace("{WIDTH}", &format!("{:.0}", width - 8.0)) + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axes() {
        let near = |(a, b, s): (f64, f64, f64), (x, y, t): (f64, f64, f64)| {
            (a - x).abs() < 1e-9 && (b - y).abs() < 1e-9 && (s - t).abs() < 1e-12
        };
        assert!(near(nice_axis(0.0, 1.26, 6), (0.0, 1.4, 0.2)));
        assert!(near(nice_axis(0.95, 1.05, 5), (0.94, 1.06, 0.02)));
        assert!(near(nice_axis(0.0, 2.0, 4), (0.0, 2.0, 0.5)));
        assert_eq!(ticks(0.0, 1.0, 0.5), vec![0.0, 0.5, 1.0]);
        assert_eq!(tick_label(1.5), "1.5");
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(2.0), "2");
        assert_eq!(fmt_ms(1334.4234), "1334.4");
        assert_eq!(fmt_ms(30.928), "30.93");
        assert_eq!(fmt_ms(0.571), "0.571");
        assert_eq!(fmt_ms(0.00295), "0.00295");
    }
}
