//! Server-rendered SVG charts (plotters), sized by a viewBox so they scale
//! to the page, with a role and a label for screen readers.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::aggregate::{Day, ModelDestination, Quantile};

/// Destinations shown on a model's chart.
pub const MAX_CHART_DESTINATIONS: usize = 30;

const AXIS: &str = "seconds after boot (log scale)";
const BAR: RGBColor = RGBColor(0x9e, 0xc5, 0xe8);
const MARK: RGBColor = RGBColor(0x08, 0x45, 0x94);

/// A chart that could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing a chart: {0}")]
pub struct ChartError(#[from] DrawingAreaErrorKind<std::io::Error>);

type Drawn = std::result::Result<(), ChartError>;

fn err(e: DrawingAreaErrorKind<std::io::Error>) -> ChartError {
    ChartError(e)
}

/// Makes plotters' SVG scale with its container and names it for
/// assistive technology.
fn accessible(svg: String, label: &str) -> String {
    let label = maud::html! { (label) }.into_string();
    let svg = svg.replacen(
        "<svg ",
        &format!("<svg role=\"img\" aria-label=\"{label}\" class=\"chart\" preserveAspectRatio=\"xMinYMin meet\" "),
        1,
    );
    match svg.find('>') {
        Some(end) => format!("{}<title>{label}</title>{}", &svg[..=end], &svg[end + 1..]),
        None => svg,
    }
}

/// Draws a chart of `size` pixels on a white SVG and labels it.
fn render(
    size: (u32, u32),
    label: &str,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Drawn,
) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    Ok(accessible(svg, label))
}

fn seconds_label(s: &f64) -> String {
    if *s >= 10.0 { format!("{s:.0}") } else { format!("{s:.1}") }
}

fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let max = values.filter(|v| v.is_finite()).fold(1.0_f64, f64::max);
    0.1..(max * 1.5).max(10.0)
}

/// Each destination of a model as a bar from the lower to the upper
/// quartile of seconds from boot to first contact, a dot at the median.
pub fn model_timeline(vendor: &str, model: &str, destinations: &[ModelDestination]) -> Result<String, ChartError> {
    let shown = &destinations[..destinations.len().min(MAX_CHART_DESTINATIONS)];
    let n = shown.len().max(1);
    let height = 70 + 26 * n as u32;
    let label = format!(
        "When {vendor} {model} devices first contact each destination after boot: bars span the middle half of boots, dots mark the median"
    );
    render((760, height), &label, |root| {
        let x = log_range(shown.iter().map(|d| d.p75_s));
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(230)
            .build_cartesian_2d(x.log_scale(), (0..n as i32).into_segmented())
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    shown.get(*i as usize).map(|d| d.destination.clone()).unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .x_desc(AXIS)
            .x_label_formatter(&seconds_label)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(shown.iter().enumerate().map(|(i, d)| {
                let i = i as i32;
                let mut bar = Rectangle::new(
                    [(d.p25_s.max(0.1), SegmentValue::Exact(i)), (d.p75_s.max(0.1), SegmentValue::Exact(i + 1))],
                    BAR.filled(),
                );
                bar.set_margin(6, 6, 0, 0);
                bar
            }))
            .map_err(err)?;
        chart
            .draw_series(
                shown.iter().enumerate().map(|(i, d)| {
                    Circle::new((d.median_s.max(0.1), SegmentValue::CenterOf(i as i32)), 4, MARK.filled())
                }),
            )
            .map_err(err)?;
        Ok(())
    })
}

/// Devices contacting a destination per day.
pub fn trend(destination: &str, days: &[Day]) -> Result<String, ChartError> {
    let label = format!("Devices contacting {destination} per day");
    let points: Vec<(i32, f64)> = days
        .iter()
        .filter_map(|d| {
            let date = chrono::NaiveDate::parse_from_str(&d.day, "%Y-%m-%d").ok()?;
            Some(((date - chrono::NaiveDate::MIN).num_days() as i32, d.devices as f64))
        })
        .collect();
    let (lo, hi) = match (points.first(), points.last()) {
        (Some(a), Some(b)) => (a.0 - 1, b.0 + 1),
        _ => (0, 2),
    };
    let top = points.iter().map(|p| p.1).fold(1.0_f64, f64::max) * 1.15;
    let day_label = |x: &i32| {
        chrono::NaiveDate::MIN
            .checked_add_days(chrono::Days::new(u64::try_from(*x).unwrap_or(0)))
            .map_or_else(String::new, |d| d.format("%Y-%m-%d").to_string())
    };
    render((760, 320), &label, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(lo..hi, 0.0..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&day_label)
            .y_desc("devices")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        chart.draw_series(LineSeries::new(points.iter().copied(), MARK.stroke_width(2))).map_err(err)?;
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, MARK.filled()))).map_err(err)?;
        Ok(())
    })
}

/// Share of boots that had contacted the destination by each number of
/// seconds after boot.
pub fn first_contact(domain: &str, quantiles: &[Quantile]) -> Result<String, ChartError> {
    let label = format!("Share of boots that had contacted {domain} by each number of seconds after boot");
    let x = log_range(quantiles.iter().map(|q| q.seconds));
    render((760, 320), &label, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x.log_scale(), 0.0..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(AXIS)
            .y_desc("share of boots")
            .x_label_formatter(&seconds_label)
            .y_label_formatter(&|y| format!("{:.0} %", y * 100.0))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        let pts: Vec<(f64, f64)> = quantiles.iter().map(|q| (q.seconds.max(0.1), q.share)).collect();
        chart.draw_series(LineSeries::new(pts.iter().copied(), MARK.stroke_width(2))).map_err(err)?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, MARK.filled()))).map_err(err)?;
        Ok(())
    })
}

/// Models shown on the boot matrix, those with most devices.
pub const MATRIX_MODELS: usize = 20;
/// Destinations shown on it, those most models contact at boot.
pub const MATRIX_DESTINATIONS: usize = 12;
/// What counts as contact at boot: a median first contact this many
/// seconds after boot or sooner (the `boot_phone_home` window).
pub const AT_BOOT_S: f64 = 60.0;

/// Which models contact which destinations at boot: a grid of models
/// (rows) by destinations (columns), each cell shaded by the median
/// seconds from boot to the first contact (darker is sooner) and linking
/// to the model's page. Hand-written SVG: a cell is a link without
/// JavaScript, and the viewBox lets it shrink to a phone's width.
pub fn boot_matrix(snapshot: &crate::Snapshot) -> Option<maud::Markup> {
    use std::collections::BTreeMap;
    let mut models: Vec<&crate::aggregate::ModelSummary> = snapshot.models.iter().collect();
    models.sort_by(|a, b| b.devices.cmp(&a.devices).then(a.vendor.cmp(&b.vendor)).then(a.model.cmp(&b.model)));
    models.truncate(MATRIX_MODELS);
    // Destination → models contacting it at boot.
    let mut columns: BTreeMap<&str, usize> = BTreeMap::new();
    let mut cells: BTreeMap<(usize, &str), f64> = BTreeMap::new();
    for (row, m) in models.iter().enumerate() {
        let Some(page) = snapshot.model(&m.vendor, &m.model) else { continue };
        for d in page.destinations.iter().filter(|d| d.median_s.is_finite() && d.median_s <= AT_BOOT_S) {
            *columns.entry(&d.destination).or_default() += 1;
            cells.insert((row, &d.destination), d.median_s);
        }
    }
    let mut columns: Vec<(&str, usize)> = columns.into_iter().collect();
    columns.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    columns.truncate(MATRIX_DESTINATIONS);
    if columns.is_empty() {
        return None;
    }
    let rows: Vec<usize> =
        (0..models.len()).filter(|r| columns.iter().any(|(d, _)| cells.contains_key(&(*r, *d)))).collect();
    // Room above and to the right for the slanted destination names.
    let (left, top, cell) = (190.0, 200.0, 34.0);
    let width = left + cell * columns.len() as f64 + 150.0;
    let height = top + cell * rows.len() as f64 + 40.0;
    let shade = |s: f64| {
        // 0.5 s darkest, 60 s lightest, on a log scale.
        let t = ((s.max(0.5) / 0.5).ln() / (AT_BOOT_S / 0.5).ln()).clamp(0.0, 1.0);
        let (dark, light) = ((0x08, 0x45, 0x94), (0xc6, 0xdb, 0xef));
        let mix = |a: i32, b: i32| (a as f64 + (b - a) as f64 * t).round() as i32;
        format!("#{:02x}{:02x}{:02x}", mix(dark.0, light.0), mix(dark.1, light.1), mix(dark.2, light.2))
    };
    let label = "Which device models contact which destinations within a minute of booting; darker cells mark a sooner median first contact";
    Some(maud::html! {
        svg role="img" aria-label=(label) class="chart matrix" viewBox=(format!("0 0 {width} {height}"))
            width=(width) height=(height) preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg" {
            title { (label) }
            @for (i, (d, _)) in columns.iter().enumerate() {
                @let x = left + cell * i as f64 + cell / 2.0;
                text x=(x) y=(top - 8.0) font-size="13" transform=(format!("rotate(-50 {x} {})", top - 8.0)) { (d) }
            }
            @for (j, &r) in rows.iter().enumerate() {
                @let m = models[r];
                @let y = top + cell * j as f64;
                a href=(crate::pages::model_href(&m.vendor, &m.model)) {
                    text x=(left - 8.0) y=(y + cell / 2.0 + 4.0) font-size="13" text-anchor="end" { (m.vendor) " " (m.model) }
                    @for (i, (d, _)) in columns.iter().enumerate() {
                        @if let Some(&s) = cells.get(&(r, *d)) {
                            rect x=(left + cell * i as f64 + 1.0) y=(y + 1.0) width=(cell - 2.0) height=(cell - 2.0) fill=(shade(s)) {
                                title { (m.vendor) " " (m.model) " → " (d) ": median " (format!("{s:.1}")) " s after boot" }
                            }
                        }
                    }
                }
            }
            @let ly = top + cell * rows.len() as f64 + 24.0;
            text x="0" y=(ly) font-size="13" { "median seconds after boot:" }
            @for (i, s) in [1.0, 5.0, 20.0, 60.0].into_iter().enumerate() {
                @let x = left + 70.0 * i as f64;
                rect x=(x) y=(ly - 12.0) width="14" height="14" fill=(shade(s)) {}
                text x=(x + 18.0) y=(ly) font-size="13" { (s) " s" }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(name: &str, p25: f64, median: f64, p75: f64) -> ModelDestination {
        ModelDestination {
            destination: name.into(),
            hosts: vec![],
            devices: 9,
            volunteers: 4,
            share: 0.9,
            p25_s: p25,
            median_s: median,
            p75_s: p75,
            bytes_out: Some(1),
            bytes_in: Some(1),
        }
    }

    #[test]
    fn charts_are_labelled_svg_with_their_marks() {
        let svg =
            model_timeline("Acme", "Cam <1>", &[dest("acme.com", 0.0, 2.0, 5.0), dest("ntp.org", 1.0, 30.0, 90.0)])
                .expect("model chart");
        assert!(svg.starts_with("<svg role=\"img\" aria-label=\"When Acme Cam &lt;1&gt; devices"), "{}", &svg[..200]);
        assert!(svg.contains("<title>") && svg.contains("acme.com") && svg.contains("ntp.org"));
        assert!(svg.contains("<circle"), "median dots drawn");
        let days = [Day { day: "2026-01-01".into(), devices: 5 }, Day { day: "2026-01-03".into(), devices: 8 }];
        let svg = trend("acme.com", &days).expect("trend");
        assert!(svg.contains("2026-01-0") && svg.contains("<polyline"), "{svg}");
        let q = [Quantile { share: 0.05, seconds: 1.0 }, Quantile { share: 0.95, seconds: 20.0 }];
        assert!(first_contact("acme.com", &q).expect("cdf").contains("<polyline"));
        // Empty input still renders an empty, labelled chart.
        assert!(model_timeline("A", "B", &[]).expect("empty").contains("<svg"));
        assert!(trend("x", &[]).expect("empty").contains("<svg"));
    }
}
