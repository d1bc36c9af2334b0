//! The peer benchmark's report: one markdown table per workload (rate, MB/s,
//! p50/p99 latency, ratio to local disk and to the best peer in the same phase),
//! written into `benches/RESULTS.md` between markers, and one PNG bar chart per
//! workload drawn with plotters.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::workload::Sample;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Every cache empty, the kernel's page cache dropped.
    Cold,
    /// The second pass over the same data.
    Warm,
    /// shoal's tiers filled by a prewarm job, the page cache dropped.
    Prewarmed,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Cold => "cold",
            Phase::Warm => "warm",
            Phase::Prewarmed => "prewarmed",
        }
    }
    /// The phase a row is compared in: a prewarmed first pass against the others'
    /// first pass.
    fn compared_as(self) -> Phase {
        if self == Phase::Prewarmed {
            Phase::Cold
        } else {
            self
        }
    }
}

/// Which number a workload is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Operations per second (files, entries, reads), in `unit`.
    Ops,
    /// MB/s.
    Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The limit: the local copy itself.
    Local,
    /// A peer a user would pick instead of shoal (rclone, s3fs, direct GETs).
    Peer,
    /// Neither (shoal itself, bindfs).
    Other,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub system: String,
    pub role: Role,
    pub phase: Phase,
    pub sample: Sample,
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub title: String,
    /// File name stem of the chart.
    pub slug: String,
    pub metric: Metric,
    /// What an op is, e.g. "files/s".
    pub unit: &'static str,
    pub rows: Vec<Row>,
}

impl Workload {
    pub fn new(title: &str, slug: &str, metric: Metric, unit: &'static str) -> Workload {
        Workload { title: title.into(), slug: slug.into(), metric, unit, rows: Vec::new() }
    }

    fn value(&self, s: &Sample) -> f64 {
        match self.metric {
            Metric::Ops => s.ops_per_sec(),
            Metric::Bytes => s.mb_per_sec(),
        }
    }

    fn best(&self, role: Role, phase: Phase) -> Option<f64> {
        self.rows
            .iter()
            .filter(|r| r.role == role && r.phase == phase)
            .map(|r| self.value(&r.sample))
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
    }

    /// `system`'s value in `phase` divided by local disk's and by the best peer's.
    /// A prewarmed row is compared with the peers' prewarmed rows when a peer
    /// was prewarmed too (JuiceFS's `warmup`), else with their first pass.
    pub fn ratios(&self, system: &str, phase: Phase) -> Option<(Option<f64>, Option<f64>)> {
        let v = self.rate(system, phase)?;
        let cmp = phase.compared_as();
        let peers = self.best(Role::Peer, phase).or_else(|| self.best(Role::Peer, cmp));
        Some((self.best(Role::Local, cmp).map(|l| v / l), peers.map(|p| v / p)))
    }

    /// `system`'s number in `phase` (the workload's metric), if it ran.
    pub fn rate(&self, system: &str, phase: Phase) -> Option<f64> {
        self.rows.iter().find(|r| r.system == system && r.phase == phase).map(|r| self.value(&r.sample))
    }

    /// The unit of [`Workload::rate`].
    pub fn rate_unit(&self) -> &'static str {
        match self.metric {
            Metric::Ops => self.unit,
            Metric::Bytes => "MB/s",
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("#### {}\n\n", self.title);
        let rate = match self.metric {
            Metric::Ops => format!("**{}**", self.unit),
            Metric::Bytes => self.unit.to_string(),
        };
        let mbs = if self.metric == Metric::Bytes { "**MB/s**" } else { "MB/s" };
        let _ = writeln!(s, "| system | phase | {rate} | {mbs} | p50 ms | p99 ms | × local disk | × best peer |");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.rows {
            let (l, p) = self.ratios(&r.system, r.phase).unwrap_or((None, None));
            let x = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}x"));
            let partial = if r.sample.complete { "" } else { " (time cap)" };
            let _ = writeln!(
                s,
                "| {}{partial} | {} | {} | {:.0} | {} | {} | {} | {} |",
                r.system,
                r.phase.name(),
                thousands(r.sample.ops_per_sec()),
                r.sample.mb_per_sec(),
                ms(r.sample.quantile_ms(0.5)),
                ms(r.sample.quantile_ms(0.99)),
                x(l),
                x(p)
            );
        }
        s
    }

    /// A horizontal bar per row on a log scale, coloured by phase.
    pub fn chart(&self, path: &Path) -> Result<()> {
        use plotters::prelude::*;
        use plotters::style::text_anchor::{HPos, Pos, VPos};
        let n = self.rows.len();
        let label = |i: usize| format!("{} ({})", self.rows[i].system, self.rows[i].phase.name());
        let values: Vec<f64> = self.rows.iter().map(|r| self.value(&r.sample).max(1e-3)).collect();
        let max = values.iter().copied().fold(1e-3, f64::max);
        let low = values.iter().copied().fold(max, f64::min) / 2.0;
        let unit = if self.metric == Metric::Bytes { "MB/s" } else { self.unit };
        let root = BitMapBackend::new(path, (1000, 120 + 34 * n as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(260)
            .build_cartesian_2d((low..max * 4.0).log_scale(), (0..n.saturating_sub(1)).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc(format!("{unit} (log scale)"))
            .x_label_formatter(&|v| thousands(*v))
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if *i < n => label(n - 1 - i),
                _ => String::new(),
            })
            .draw()?;
        let colour = |p: Phase| match p {
            Phase::Cold => RGBColor(66, 133, 244),
            Phase::Warm => RGBColor(234, 67, 53),
            Phase::Prewarmed => RGBColor(52, 168, 83),
        };
        chart.draw_series(self.rows.iter().enumerate().map(|(i, r)| {
            let y = n - 1 - i;
            let mut bar = Rectangle::new(
                [(low, SegmentValue::Exact(y)), (values[i], SegmentValue::Exact(y + 1))],
                colour(r.phase).filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))?;
        chart.draw_series(values.iter().enumerate().map(|(i, &v)| {
            Text::new(
                format!(" {}", thousands(v)),
                (v, SegmentValue::CenterOf(n - 1 - i)),
                TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
            )
        }))?;
        root.present().with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// Make plotters' "sans-serif" the system's DejaVu Sans; false when it is missing.
pub fn load_font() -> bool {
    let Ok(bytes) = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf") else { return false };
    plotters::style::register_font(
        "sans-serif",
        plotters::style::FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .is_ok()
}

fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "–".into()
    }
}

/// `12345.6` → `12,346`; small values keep two decimals.
pub fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v < 100.0 {
        return format!("{v:.2}");
    }
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Put `body` between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `file`,
/// appending the section when the markers are not there yet.
pub fn replace_section(file: &Path, name: &str, body: &str) -> Result<()> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let (begin, end) = (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"));
    let section = format!("{begin}\n{body}\n{end}");
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{section}{}", &text[..a], &text[b + end.len()..]),
        _ => format!("{}\n{section}\n", text.trim_end()),
    };
    std::fs::write(file, new).with_context(|| format!("writing {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(ops: u64, secs: f64) -> Sample {
        Sample { ops, bytes: ops * 1_000_000, secs, lat: vec![Duration::from_millis(2)], complete: true }
    }

    #[test]
    fn ratios_compare_within_a_phase_and_prewarmed_with_cold() {
        let mut w = Workload::new("epoch", "epoch", Metric::Ops, "files/s");
        for (system, role, phase, ops) in [
            ("local", Role::Local, Phase::Cold, 1000),
            ("local", Role::Local, Phase::Warm, 8000),
            ("rclone", Role::Peer, Phase::Cold, 100),
            ("s3fs", Role::Peer, Phase::Cold, 50),
            ("rclone", Role::Peer, Phase::Warm, 2000),
            ("shoal", Role::Other, Phase::Cold, 300),
            ("shoal", Role::Other, Phase::Warm, 7000),
            ("shoal", Role::Other, Phase::Prewarmed, 2000),
        ] {
            w.rows.push(Row { system: system.into(), role, phase, sample: sample(ops, 1.0) });
        }
        assert_eq!(w.ratios("shoal", Phase::Cold), Some((Some(0.3), Some(3.0))));
        assert_eq!(w.ratios("shoal", Phase::Warm), Some((Some(0.875), Some(3.5))));
        assert_eq!(w.ratios("shoal", Phase::Prewarmed), Some((Some(2.0), Some(20.0))));
        let md = w.markdown();
        assert!(md.contains("| shoal | warm | 7,000 | 7000 | 2.00 | 2.00 | 0.88x | 3.50x |"), "{md}");
    }

    #[test]
    fn sections_are_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("R.md");
        std::fs::write(&f, "# R\n\nintro\n").unwrap();
        replace_section(&f, "peers", "one").unwrap();
        replace_section(&f, "peers", "two").unwrap();
        replace_section(&f, "other", "x").unwrap();
        let t = std::fs::read_to_string(&f).unwrap();
        assert_eq!(t, "# R\n\nintro\n<!-- peers:begin -->\ntwo\n<!-- peers:end -->\n<!-- other:begin -->\nx\n<!-- other:end -->\n");
    }

    #[test]
    fn numbers() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1.234), "1.23");
    }

    #[test]
    fn chart_is_a_png() {
        if !load_font() {
            return; // no DejaVu on this machine: charts are skipped by the harness too
        }
        let mut w = Workload::new("seq", "seq", Metric::Bytes, "reads/s");
        w.rows.push(Row { system: "local".into(), role: Role::Local, phase: Phase::Cold, sample: sample(10, 1.0) });
        w.rows.push(Row { system: "shoal".into(), role: Role::Other, phase: Phase::Warm, sample: sample(20, 1.0) });
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.png");
        w.chart(&p).unwrap();
        assert_eq!(&std::fs::read(&p).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    }
}
