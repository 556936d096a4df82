//! The probe's picture (hand-written SVG, no plotting dependency): one row per probed
//! checkpoint; left, for the transformer blocks' weight gradients, each mode's bias (dark bar),
//! the floor a zero bias is measured at (tick) and the standard deviation of one draw (light
//! bar), on a log axis, against the minibatch noise (dashed line); right, each mode's slope
//! (regression of quantized on exact gradient; 1 is unbiased in scale).

use serde_json::Value;
use std::fmt::Write;

const ROW_H: f64 = 300.0;
const LEFT_W: f64 = 620.0;
const RIGHT_W: f64 = 360.0;
const COLORS: [&str; 7] = [
    "#222222", "#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b",
];

fn group<'a>(probe: &'a Value, name: &str) -> Option<&'a Value> {
    probe["tensors"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// `rows`: (title, probe JSON) per checkpoint.
pub fn render(rows: &[(String, Value)]) -> String {
    let width = LEFT_W + RIGHT_W;
    let height = 40.0 + ROW_H * rows.len() as f64;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    let _ = writeln!(s, "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">Gradient probe: transformer-block weight gradients, each mode against the exact gradient</text>", width / 2.0);
    for (i, (title, probe)) in rows.iter().enumerate() {
        let top = 40.0 + ROW_H * i as f64;
        row(&mut s, top, title, probe);
    }
    s.push_str("</svg>\n");
    s
}

fn row(s: &mut String, top: f64, title: &str, probe: &Value) {
    let Some(g) = group(probe, "block weights") else {
        let _ = writeln!(
            s,
            "<text x=\"20\" y=\"{}\">{title}: no block weights</text>",
            top + 20.0
        );
        return;
    };
    let modes: Vec<String> = probe["modes"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    // Left panel: log10 axis from 1e-4 to 10 (relative to |exact gradient|).
    let (l, r, t, b) = (60.0, LEFT_W - 10.0, top + 25.0, top + ROW_H - 55.0);
    let (lo, hi) = (-4.0f64, 1.0f64);
    let py = |v: f64| {
        let lv = v.max(1e-12).log10().clamp(lo, hi);
        b - (lv - lo) / (hi - lo) * (b - t)
    };
    let _ = writeln!(
        s,
        "<text x=\"{l}\" y=\"{}\" font-size=\"12\" font-weight=\"bold\">{title}</text>",
        top + 14.0
    );
    for e in (lo as i32)..=(hi as i32) {
        let y = py(10f64.powi(e));
        let _ = writeln!(s, "<line x1=\"{l}\" x2=\"{r}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">1e{e}</text>", l - 5.0, y + 4.0);
    }
    let _ = writeln!(s, "<text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">relative to |exact|</text>", (t + b) / 2.0, (t + b) / 2.0);
    let noise = f(&g["minibatch_variance"]).sqrt();
    let ny = py(noise);
    let _ = writeln!(s, "<line x1=\"{l}\" x2=\"{r}\" y1=\"{ny:.1}\" y2=\"{ny:.1}\" stroke=\"#444\" stroke-dasharray=\"6 4\"/><text x=\"{r}\" y=\"{:.1}\" text-anchor=\"end\">minibatch noise (std) {noise:.2}</text>", ny - 4.0);
    let slot = (r - l) / modes.len().max(1) as f64;
    for (k, m) in modes.iter().enumerate() {
        let st = &g["modes"][m];
        let color = COLORS[k % COLORS.len()];
        let x = l + slot * k as f64 + slot * 0.2;
        let bw = slot * 0.28;
        let (bias, floor, std) = (
            f(&st["bias"]),
            f(&st["bias_floor"]),
            f(&st["variance"]).sqrt(),
        );
        let _ = writeln!(s, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{m}: bias {bias:.3e}</title></rect>", py(bias), b - py(bias));
        if floor > 0.0 {
            let fy = py(floor);
            let _ = writeln!(s, "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{fy:.1}\" y2=\"{fy:.1}\" stroke=\"#000\" stroke-width=\"2\"><title>{m}: floor {floor:.3e}</title></line>", x - 2.0, x + bw + 2.0);
        }
        if std > 0.0 {
            let _ = writeln!(s, "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{color}\" fill-opacity=\"0.35\"><title>{m}: std of one draw {std:.3e}</title></rect>", x + bw + 1.0, py(std), b - py(std));
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{m}</text>",
            x + bw,
            b + 16.0
        );
    }
    let _ = writeln!(s, "<text x=\"{l}\" y=\"{:.1}\" fill=\"#555\">dark: bias |E[q]-g|/|g| (black tick: the floor it is measured at); light: std of one draw</text>", top + ROW_H - 8.0);
    // Right panel: slope, linear axis 0.7 .. 1.1.
    let (l2, r2) = (LEFT_W + 50.0, LEFT_W + RIGHT_W - 20.0);
    let (s0, s1) = (0.7f64, 1.1f64);
    let sy = |v: f64| b - (v.clamp(s0, s1) - s0) / (s1 - s0) * (b - t);
    let _ = writeln!(
        s,
        "<text x=\"{l2}\" y=\"{}\" font-size=\"12\">slope of quantized on exact</text>",
        top + 14.0
    );
    for i in 0..=4 {
        let v = s0 + (s1 - s0) * i as f64 / 4.0;
        let y = sy(v);
        let stroke = if (v - 1.0).abs() < 1e-9 {
            "#444"
        } else {
            "#e4e4e4"
        };
        let _ = writeln!(s, "<line x1=\"{l2}\" x2=\"{r2}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{stroke}\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>", l2 - 5.0, y + 4.0);
    }
    let slot2 = (r2 - l2) / modes.len().max(1) as f64;
    for (k, m) in modes.iter().enumerate() {
        let slope = f(&g["modes"][m]["slope"]);
        let x = l2 + slot2 * (k as f64 + 0.5);
        let _ = writeln!(s, "<circle cx=\"{x:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"{}\"><title>{m}: slope {slope:.4}</title></circle><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"9\">{slope:.3}</text>", sy(slope), COLORS[k % COLORS.len()], sy(slope) - 8.0);
    }
}
